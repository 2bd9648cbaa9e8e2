"""`qbr run`: the stages of a run, each skipped when its manifest matches.

ingest -> structure -> shards -> encode -> fusion -> quantize (-> retokenize, giving the cold
items of a cold-item split their codes) (the tokenizer, unless run.tokenize = false) ->
popularity -> content-knn -> bert4rec -> qbert4rec -> report. Stages meet only at files in the
run directory.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qbr_dist import artifacts
from qbr_dist.config import Config
from qbr_dist.data.fetch import fetch, pinned_sha256
from qbr_dist.data.quarantine import DataError, Quarantine
from qbr_dist.data.readers import NOT_UTF8_TEXT, existing_file, read_catalog, read_interactions
from qbr_dist.data.split import (EVALUATIONS, MIN_SPLIT_LENGTH, SplitSummary, build_sequences, choose_cold_items,
                                 remove_cold)
from qbr_dist.data.tables import column_matrix
from qbr_dist.obs import metrics as obs_metrics
from qbr_dist.obs import serve as obs_serve
from qbr_dist.report import write_report
from qbr_dist.train import INTERRUPTED

log = logging.getLogger("qbr")

ITEMS, SEQUENCES, QUARANTINE, METRICS = "items.parquet", "sequences.parquet", "quarantine.jsonl", "metrics.json"
VECTOR_COUNTS = {"text_emb": "with_text", "image_emb": "with_image"}  # encoder vectors -> the encode stage's counts
COLD = "cold_items.npy"  # ingest, with data.cold_fraction > 0: (items + 1,) bool, the cold items
STRUCTURE, STRUCTURE_VOCAB = "structure.parquet", "structure_vocab.json"
# Without data.catalog, ingest makes a catalog of the interactions' items; in the ingest key in its place.
# Version 2: those items have no text (null); version 1 gave them empty text, which encode now quarantines.
MADE_CATALOG = "made from the interactions, version 2"


# Set by `report_only` alone: every stage then checks that it is current, computing its key as a run would,
# and nothing runs.
_REPORT_ONLY = contextvars.ContextVar("report_only", default=False)

# The stages of `qbr run`, as `--rerun` names them.
STAGES = ("ingest", "structure", "shards", "encode", "fusion", "quantize", "retokenize", "popularity", "content-knn",
          "bert4rec", "qbert4rec")


@dataclasses.dataclass
class _Rerun:
    """Set by `rerunning`: the stages to compute again though their manifest matches, and the stage folders the
    command has finished since (current again, and free to reuse)."""
    stages: frozenset
    done: set = dataclasses.field(default_factory=set)


_RERUN: contextvars.ContextVar[_Rerun | None] = contextvars.ContextVar("rerun", default=None)


@contextlib.contextmanager
def rerunning(stages: list[str]) -> Iterator[None]:
    """`qbr run --rerun`: each of `stages`, in every run the command makes, computed again from an empty folder
    (training from step 0), since a stage key holds settings and inputs, not the code that made the outputs. The
    stages after it run again as after any recompute of it (docs/architecture.md, "Manifests")."""
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"--rerun {unknown[0]}: no such stage (expected one of {', '.join(STAGES)})")
    token = _RERUN.set(_Rerun(frozenset(stages)))
    try:
        yield
    finally:
        _RERUN.reset(token)


class StageNotCurrent(RuntimeError):
    """`qbr report` of a run whose stages were computed with another config or other inputs."""


def run_dir(cfg: Config) -> Path:
    return Path(cfg.run.root) / cfg.run.name


def run_pipeline(cfg: Config) -> dict:
    """Every stage in order; returns the report."""
    with holding_run(cfg):
        return _run_stages(cfg)


@contextlib.contextmanager
def holding_run(cfg: Config) -> Iterator[None]:
    """For a command that writes the run's stages (`qbr run`, `qbr quantize`, ...): pins the code version its
    manifests name, holds the run directory, so a second command on the same run stops instead of writing
    into it, serves the run's job metrics, and marks the stages an exception cut short as failed."""
    artifacts.code_version()
    with artifacts.exclusive(run_dir(cfg)):
        serve_driver(cfg)
        try:
            yield
        except BaseException:
            for stage in obs_metrics.running_stages(cfg.run.name):
                obs_metrics.stage_ended(cfg.run.name, stage, failed=True)
            raise


def start_ray(cfg: Config, reads: dict[str, Path] | None = None) -> None:
    """Ray for a stage (`train.runtime.start_ray`), with `run.root` checked to be shared by every node, and the
    files in `reads` ({what: file}, read by the stage's tasks on any node) to be the same on every node."""
    from qbr_dist.train import runtime
    from qbr_dist.train.shared_folders import check_shared_folders

    runtime.start_ray(cfg.runtime)
    check_shared_folders({"run.root": Path(cfg.run.root)}, reads)


def serve_driver(cfg: Config) -> None:
    """This process serves the run's job metrics: stage times and status, tokenizer health."""
    spec = obs_serve.endpoint(cfg)
    obs_serve.serve(spec, process="driver")
    obs_serve.count_registrations(spec)


def _run_stages(cfg: Config) -> dict:
    root = run_dir(cfg)
    ingest_dir = ingest(cfg, root)
    check_batch_fits(cfg, ingest_dir)
    tokenizer = tokenize(cfg, root, ingest_dir) if cfg.run.tokenize else {}
    model_dirs = {"popularity": popularity(cfg, root, ingest_dir)}
    if tokenizer and artifacts.read_manifest(tokenizer["encode"])["rows"]["with_text"]:
        model_dirs["content-knn"] = content_knn(cfg, root, ingest_dir, tokenizer["encode"])
    elif tokenizer:
        log.info("content-knn: no item has text features, so there is no content k-NN row")
    model_dirs["bert4rec"] = bert4rec(cfg, root, ingest_dir)
    if tokenizer and cfg.model.tokens != "id":
        model_dirs["qbert4rec"] = qbert4rec(cfg, root, tokenizer)
    return _report(cfg, root, model_dirs, ingest_dir, tokenizer_dirs(tokenizer),
                   quarantines=quarantine_files({"ingest": ingest_dir} | tokenizer))


def run_seeds(cfg: Config, seeds: int) -> dict:
    """`run_pipeline` once per seed (run.seed, run.seed + 1, ...), each in <name>-seed<s>; then
    the mean and spread of every model's metrics, written to <name>/seeds.json and seeds.md."""
    from qbr_dist.report import seed_summary, seeds_markdown, write_summary

    reports = {}
    for seed in range(cfg.run.seed, cfg.run.seed + seeds):
        reports[seed] = run_pipeline(member_config(cfg, cfg.run.name, name=f"{cfg.run.name}-seed{seed}", seed=seed))
    summary = seed_summary(reports)
    write_summary(run_dir(cfg), "seeds", summary, seeds_markdown(summary))
    return summary


def member_config(cfg: Config, base_name: str, **run_changes) -> Config:
    """`cfg` for one seed or grid point of the runs named `base_name`: its own run directory, but the
    shards of `base_name` (unless shards.name is set), since a catalog's shards rarely change with a
    seed or a grid point; their manifest still has them rewritten when the shards settings differ."""
    shards = cfg.shards if cfg.shards.name else dataclasses.replace(cfg.shards, name=base_name)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run_changes), shards=shards)


def grid_points(grid: list[str]) -> list[list[str]]:
    """Every combination of `SECTION.KEY=V1,V2,...` values, as lists of `--set` overrides. Values are split
    at the commas outside brackets and quotes, so a list value is one value: `train.mask_weights=[1,0],[0,1]`."""
    import itertools

    axes, keys = [], set()
    for spec in grid:
        key, _, values = spec.partition("=")
        if not key or not values:
            raise ValueError(f"--grid {spec!r}: expected SECTION.KEY=VALUE1,VALUE2,...")
        if key.strip() in ("run.name", "run.root"):
            raise ValueError(f"--grid {spec!r}: every grid point has its own run folder already (<run.name>-<its "
                             f"settings>); set {key.strip()} with --set")
        if key.strip() in keys:
            raise ValueError(f"--grid {spec!r}: {key.strip()} is in an earlier --grid too; give its values in one: "
                             f"--grid {key.strip()}=V1,V2,...")
        keys.add(key.strip())
        axes.append([f"{key}={value}" for value in _top_level_items(values)])
    return [list(point) for point in itertools.product(*axes)]


def _top_level_items(text: str) -> list[str]:
    """`text` split at the commas that are not inside [...] or a quoted string (TOML values side by side;
    tomllib parses one value, not a comma-separated run of them)."""
    items, depth, quote, start = [], 0, "", 0
    for at, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:at])
            start = at + 1
    return items + [text[start:]]


def grid_point_name(base: str, overrides: list[str]) -> str:
    """The run name of one grid point: the base name and its settings, with every character a folder name
    could trip on (/, quotes, brackets, spaces) as '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{base}-" + "-".join(overrides)).replace("=", "_")


def run_grid(make_config, grid: list[str]) -> dict:
    """`run_pipeline` once per grid point (config from `make_config(overrides)`, in <name>-<point>);
    each model keeps the point of its best validation NDCG@10 and reports that point's test metrics.
    Every point's config is built and checked before the first one runs."""
    from qbr_dist.report import grid_markdown, grid_summary, write_summary

    base = make_config([])
    points = [(overrides, member_config(make_config(overrides), base.run.name,
                                        name=grid_point_name(base.run.name, overrides)))
              for overrides in grid_points(grid)]
    names = [cfg.run.name for _, cfg in points]
    if len(set(names)) < len(names):
        raise ValueError(f"--grid: two points would share a run directory ({names}); give values that differ "
                         "in letters or digits")
    runs = [(overrides, run_pipeline(cfg)) for overrides, cfg in points]
    summary = grid_summary(grid, runs)
    keep_earlier_grid(run_dir(base), grid)
    write_summary(run_dir(base), "grid", summary, grid_markdown(summary))
    return summary


def keep_earlier_grid(root: Path, grid: list[str]) -> None:
    """A grid over other values in the same base run keeps the summary of the grid before it as
    grid-<its time>.json and .md, rather than replacing it unseen; the same grid (its options in any order)
    run again replaces its own. A summary that does not name its grid, or cannot be read, is kept."""
    earlier = root / "grid.json"
    if not earlier.is_file() or sorted(_summary_grid(earlier)) == sorted(grid):
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(earlier.stat().st_mtime))
    for suffix in (".json", ".md"):
        if (root / f"grid{suffix}").is_file():
            os.replace(root / f"grid{suffix}", root / f"grid-{stamp}{suffix}")
    log.info("grid: the summary of the earlier grid in %s is kept as grid-%s.json and .md", root, stamp)


def _summary_grid(path: Path) -> list[str]:
    try:
        return json.loads(path.read_text()).get("grid") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return []


def report_only(cfg: Config) -> dict:
    """The report of a run whose stages have all finished with this config: the stages are walked as
    `qbr run` walks them, each checked against the key it would have now, so a report never labels
    results with a config that did not make them (StageNotCurrent names the first stage that differs)."""
    root = run_dir(cfg)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run; run `qbr run` first")
    token = _REPORT_ONLY.set(True)
    try:
        with artifacts.exclusive(root):  # it rewrites the report files a running `qbr run` writes last
            missing = [stage for stage in ("ingest", "popularity", "bert4rec")
                       if artifacts.read_manifest(root / stage) is None]
            if missing:
                raise FileNotFoundError(f"{root}: stage(s) {', '.join(missing)} not finished; run `qbr run` first")
            return _run_stages(cfg)
    finally:
        _REPORT_ONLY.reset(token)


def finished_model(cfg: Config, stage: str) -> Path:
    """A trained model stage (`bert4rec` or `qbert4rec`) of a run, with every stage it reads, checked to be
    current as `qbr report` checks them (StageNotCurrent names the first that is not): `qbr recommend` never
    answers with weights this config did not train."""
    root = run_dir(cfg)
    token = _REPORT_ONLY.set(True)
    try:
        if stage == "bert4rec":
            return bert4rec(cfg, root, ingest(cfg, root))
        if not cfg.run.tokenize or cfg.model.tokens == "id":
            raise StageNotCurrent(f"{root / stage}: this config trains no {stage} (run.tokenize = "
                                  f"{str(cfg.run.tokenize).lower()}, model.tokens = '{cfg.model.tokens}')")
        return qbert4rec(cfg, root, tokenize(cfg, root))
    finally:
        _REPORT_ONLY.reset(token)


def finished_tokenizer(cfg: Config) -> dict[str, Path]:
    """The tokenizer stages of a run, each checked to be current as `qbr report` checks them (StageNotCurrent names
    the first that is not): `qbr retokenize` codes items with the codebook the run's models were trained with,
    never with one it would fit again."""
    root = run_dir(cfg)
    if not (root / "quantize").is_dir():
        raise FileNotFoundError(f"{root}: no fitted codebook; run `qbr quantize` or `qbr run` with this config first")
    token = _REPORT_ONLY.set(True)
    try:
        return tokenize(cfg, root)
    finally:
        _REPORT_ONLY.reset(token)


def codes_stage(root: Path) -> str:
    """The stage whose codes.parquet holds the run's codes: `retokenize` (every item's) under a cold-item
    split, when it used the quantize stage's current codebook, else `quantize` (a retokenize/ left by an
    earlier config, or by `qbr retokenize` before it wrote folders of its own, holds other codes)."""
    quantize = artifacts.read_manifest(root / "quantize")
    if quantize is None:
        raise FileNotFoundError(f"{root}: no finished quantize stage; run `qbr quantize` or `qbr run` first")
    retokenize = artifacts.read_manifest(root / "retokenize")
    current = retokenize and retokenize["rows"].get("codebook_version") == quantize["rows"]["codebook_version"]
    return "retokenize" if current and (root / "ingest" / COLD).is_file() else "quantize"


def _report(cfg: Config, root: Path, model_dirs: dict[str, Path], ingest_dir: Path, tokenizer: dict, *,
            quarantines: dict[str, Path]) -> dict:
    """report.json, report.md and the plots, then report.html around them."""
    from qbr_dist.inspect.html_report import write_html

    report = write_report(cfg, root, model_dirs, ingest_dir, tokenizer, quarantines=quarantines)
    write_html(cfg, root, codes="quantize" in tokenizer, recommend="qbert4rec" in model_dirs)
    log.info("report: %s (report.json, report.md, the plots and report.html)", root)
    return report


def quarantine_files(dirs: dict[str, Path]) -> dict[str, Path]:
    """{stage: its quarantine file} for the stages whose manifest lists one (records they left out)."""
    return {name: folder / QUARANTINE for name, folder in dirs.items()
            if QUARANTINE in (artifacts.read_manifest(folder) or {}).get("outputs", [])}


def tokenizer_dirs(dirs: dict[str, Path]) -> dict[str, Path]:
    """The tokenizer stages the report shows."""
    return {name: dirs[name] for name in ("fusion", "quantize", "retokenize") if name in dirs}


def _stage(name: str, root: Path, key: dict) -> tuple[Path, bool]:
    return _open_stage(name, root / name, key, run=root.name, reuse=True)


def _open_stage(name: str, stage_dir: Path, key: dict, *, run: str, reuse: bool, hint: str = "") -> tuple[Path, bool]:
    """(stage_dir, whether it holds the stage's finished output for `key`): its own, or with `reuse` another run's
    under the same root, linked in; a stage that must run is begun. Under `report_only`: True, or StageNotCurrent."""
    if INTERRUPTED.is_set():  # a Ctrl-C or SIGTERM that could not be raised where it landed
        raise KeyboardInterrupt
    if _checked_for_report(stage_dir, key, hint):
        return stage_dir, True
    rerun = _RERUN.get()
    rerun = rerun is not None and name in rerun.stages
    reason = artifacts.why_not_current(stage_dir, key)
    if reason is None and rerun and not _rerun_done(stage_dir):
        reason = "--rerun"
    reused = reason is not None and reuse and _reuse(stage_dir, key, fresh_only=rerun)  # says so itself
    current = reason is None or reused
    if not reused:
        log.info("stage %s: %s", name, _skipped(name, stage_dir) if current else f"running{_because(reason)}")
    if reason == "--rerun" and not current:
        artifacts.empty_folder(stage_dir)
    if not current:
        artifacts.begin_stage(stage_dir)
    obs_metrics.stage_began(run, name, skipped=current)
    return stage_dir, current


def _finished_now(stage_dir: Path) -> None:
    if _RERUN.get() is not None:
        _RERUN.get().done.add(stage_dir.resolve())


def _rerun_done(stage_dir: Path) -> bool:
    """Whether this command (under `rerunning`) has finished the stage in `stage_dir`."""
    return _RERUN.get() is not None and stage_dir.resolve() in _RERUN.get().done


def _skipped(name: str, stage_dir: Path) -> str:
    """'up to date, skipped', with the commit that computed it where that is not the code's now."""
    made = ((artifacts.read_manifest(stage_dir) or {}).get("code_version") or {}).get("git")
    now = artifacts.code_version().get("git")
    if not made or not now or made == now:
        return "up to date, skipped"
    return f"up to date, skipped (computed at commit {made[:10]}, the code is at {now[:10]}: --rerun {name} redoes it)"


def _because(reason: str) -> str:
    """' (computed with other settings (train.lr 0.001 -> 0.003))': why a stage that ran before runs again."""
    return "" if reason == "not finished" else f" ({reason})"


def _checked_for_report(stage_dir: Path, key: dict, hint: str = "") -> bool:
    """Under `report_only`, True for a current stage and StageNotCurrent for any other; False when stages run."""
    if not _REPORT_ONLY.get():
        return False
    reason = artifacts.why_not_current(stage_dir, key)
    if reason is not None:
        raise StageNotCurrent(f"{stage_dir}: {reason}; run `qbr run` with this config first{hint}")
    return True


def _reuse(stage_dir: Path, key: dict, fresh_only: bool = False) -> bool:
    """Take a finished stage with the same key (with `fresh_only`, one this command finished) from another run
    under the same root (grid points and seeds then share the stages their settings do not change): hard links
    where possible, copied into place under a temporary name, so an interrupted copy is never mistaken for a
    finished stage."""
    import os
    import shutil

    def link_or_copy(source, target):
        try:
            os.link(source, target)  # safe to share: artifacts are replaced by rename, and a stage run again
            # first makes its checkpoint files (some rewritten in place) its own (`artifacts.begin_stage`)
        except OSError:
            shutil.copy2(source, target)

    for other in sorted(stage_dir.parent.parent.glob(f"*/{stage_dir.name}")):
        if other.parent != stage_dir.parent and artifacts.stage_is_current(other, key) and \
                (_rerun_done(other) or not fresh_only):
            staging = stage_dir.with_name(stage_dir.name + ".reusing")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(other, staging, copy_function=link_or_copy)
            shutil.rmtree(stage_dir, ignore_errors=True)
            staging.rename(stage_dir)
            if fresh_only:
                _finished_now(stage_dir)
            log.info("stage %s: same inputs and settings as %s, reused", stage_dir.name, other)
            return True
    return False


def _finish(stage_dir: Path, key: dict, **manifest) -> None:
    """A stage ends when its manifest is written."""
    artifacts.write_manifest(stage_dir, key, **manifest)
    _finished_now(stage_dir)
    obs_metrics.stage_ended(stage_dir.parent.name, stage_dir.name)


def _count_records(cfg: Config, stage: str, *, read: int, quarantined: int) -> None:
    obs_metrics.input_records.labels(stage=stage, run=cfg.run.name).inc(read)
    obs_metrics.quarantined_records.labels(stage=stage, run=cfg.run.name).inc(quarantined)


def raw_inputs(cfg: Config) -> dict[str, Path]:
    """The raw files a run reads: fetched into the cache for a named dataset, else from the config."""
    if cfg.data.dataset != "files":
        folder = fetch(cfg.data.dataset, cfg.run.cache_dir)
        return {kind: folder / name for kind, name in _named_files(cfg.data.dataset).items()}
    inputs = _configured_files(cfg)
    for path in inputs.values():
        existing_file(path)
    return inputs


def _configured_files(cfg: Config) -> dict[str, Path]:
    inputs = {"interactions": Path(cfg.data.interactions)}
    return inputs | ({"catalog": Path(cfg.data.catalog)} if cfg.data.catalog else {})


def _named_files(dataset: str) -> dict[str, str]:
    return {"interactions": f"{dataset}.inter", "catalog": f"{dataset}.item"}


def raw_fingerprints(cfg: Config) -> dict[str, str]:
    """sha256 of each raw file, for the ingest key: a named dataset's are the pinned ones its fetch verifies,
    so checking the stage (`qbr report` included) fetches nothing."""
    if cfg.data.dataset != "files":
        pinned = pinned_sha256(cfg.data.dataset)
        return {kind: pinned[name] for kind, name in _named_files(cfg.data.dataset).items()}
    fingerprints = {kind: _raw_fingerprint(cfg, kind, path) for kind, path in _configured_files(cfg).items()}
    return fingerprints if "catalog" in fingerprints else fingerprints | {"catalog": MADE_CATALOG}


def _raw_fingerprint(cfg: Config, kind: str, path: Path) -> str:
    """sha256 of a raw file; under `qbr report`, a file no longer there (a run folder looked at elsewhere) is
    taken as the ingest stage recorded it, with a warning, since the report cannot check it."""
    recorded = ((artifacts.read_manifest(run_dir(cfg) / "ingest") or {}).get("key", {}).get("inputs", {})
                if _REPORT_ONLY.get() and not path.is_file() else {})
    if kind in recorded:
        log.warning("%s: not found, so not checked; the report takes the fingerprint the ingest stage recorded", path)
        return recorded[kind]
    return artifacts.file_fingerprint(existing_file(path))


def ingest(cfg: Config, root: Path) -> Path:
    key = artifacts.stage_key("ingest", cfg.section_settings(data=cfg.data.key()), raw_fingerprints(cfg))
    stage_dir, current = _stage("ingest", root, key)
    if current:
        return stage_dir
    inputs = raw_inputs(cfg)
    (stage_dir / QUARANTINE).unlink(missing_ok=True)
    with Quarantine(stage_dir / QUARANTINE) as quarantine:
        interactions, catalog, by_file = _read_inputs(cfg, inputs, quarantine)
        read = quarantine.read  # rows of the input files, each accepted or quarantined
        catalog_ids = catalog.column("item_id")
        sequences, summary = build_sequences(
            interactions, catalog_ids, k_core=cfg.data.k_core, quarantine=quarantine,
            source=str(inputs["interactions"]), max_history=cfg.data.max_history,
            item_field=cfg.data.field_names().get("item_id", "item_id"),
        )
        check_item_ids_match(summary, interactions, catalog_ids, inputs)
    _count_records(cfg, "ingest", read=read, quarantined=quarantine.total)
    rows = {**summary.as_dict(), "rows_read": read, "quarantined": dict(quarantine.counts), "files": by_file}
    outputs = [ITEMS, SEQUENCES] + ([QUARANTINE] if quarantine.total else [])
    if cfg.data.cold_fraction:
        cold = choose_cold_items(catalog.num_rows, cfg.data.cold_fraction, cfg.data.cold_seed)
        sequences, dropped = remove_cold(sequences, cold)
        artifacts.save_array(stage_dir / COLD, cold)
        outputs.append(COLD)
        rows |= {"users": sequences.num_rows, "cold_items": int(cold.sum()), "users_dropped_by_cold_split": dropped,
                 "interactions": int(pc.sum(pc.list_value_length(sequences.column("items"))).as_py() or 0),
                 "cold_test_users": int(pc.sum(sequences.column("cold_target")).as_py() or 0)}
    else:  # an earlier run's split must not outlive its setting: training and scoring look for this file
        (stage_dir / COLD).unlink(missing_ok=True)
    if sequences.num_rows == 0:
        after = [f"the {cfg.data.k_core}-core filter (data.k_core)"] * bool(cfg.data.k_core) + \
            ["the cold-item split (data.cold_fraction)"] * bool(cfg.data.cold_fraction)
        raise ValueError(f"{inputs['interactions']}: no user has the {MIN_SPLIT_LENGTH} interactions a leave-one-out "
                         "split needs" + (f" after {' and '.join(after)}" if after else ""))
    for name, table in ((ITEMS, catalog), (SEQUENCES, sequences)):
        with artifacts.atomic_path(stage_dir / name) as tmp:
            pq.write_table(table, tmp)
    _finish(stage_dir, key, outputs=outputs, rows=rows, content={"sequences": _sequences_fingerprint(stage_dir)})
    notes = [f"{summary.unknown_item_rows:,} interactions of an item the catalog lacks quarantined"] * bool(
        summary.unknown_item_rows) + [
        f"{summary.users_too_short:,} users with fewer than {MIN_SPLIT_LENGTH} interactions left out "
        f"({summary.short_user_rows:,} interactions)"] * bool(summary.users_too_short) + [
        f"{summary.repeated_rows:,} interactions repeat an earlier one's user, item and timestamp (kept)"] * bool(
        summary.repeated_rows)
    if cfg.data.cold_fraction:
        notes.append(f"cold-item split: {rows['cold_items']} items out of every training and validation input, "
                     f"{rows['users_dropped_by_cold_split']} users left with too short a history, "
                     f"{rows['cold_test_users']} with a cold test target")
    files = "; ".join(f"{counts['file']}: {counts['read']:,} rows read, {counts['quarantined']:,} quarantined"
                      for counts in by_file.values())
    log.info("ingest: %s; %d users, %d items, %d interactions%s", files, rows["users"], summary.items,
             rows["interactions"], "".join(f"; {note}" for note in notes))
    return stage_dir


def _read_inputs(cfg: Config, inputs: dict[str, Path], quarantine: Quarantine) -> tuple[pa.Table, pa.Table, dict]:
    """The interactions and the catalog (made from the interactions' item ids when there is none), and the rows
    read and quarantined of each file. A file whose every row is quarantined is refused with its most common
    reason: a wrong field or format would otherwise fail a later step far from its cause ("no user has the 3
    interactions ...")."""
    by_file = {}

    def read(kind: str, reader, *args) -> pa.Table:
        since = quarantine.mark()
        table = reader(inputs[kind], *args, quarantine, cfg.data.field_names())
        quarantine.require_some(str(inputs[kind]), table.num_rows, since)
        by_file[kind] = {"file": inputs[kind].name, "read": quarantine.read - since[0],
                         "quarantined": quarantine.total - sum(since[1].values())}
        _hint_at_encoding(inputs[kind], quarantine.counts[NOT_UTF8_TEXT] - since[1][NOT_UTF8_TEXT])
        return table

    interactions = read("interactions", read_interactions)
    if "catalog" in inputs:
        return interactions, read("catalog", read_catalog, cfg.data.text_fields), by_file
    seen = pc.unique(interactions.column("item_id"))  # in the order of first appearance
    catalog = pa.table({"item_id": seen, "text": pa.nulls(len(seen), pa.string())})
    return interactions, catalog, by_file


def _hint_at_encoding(path: Path, rows: int) -> None:
    """Rows quarantined for bytes that are not UTF-8 most often come from a file exported in another encoding."""
    if rows:
        log.warning("%s: %d rows hold bytes that are not UTF-8, and are quarantined; if the file was exported as "
                    "Latin-1 or Windows-1252, convert it and run again: iconv -f cp1252 -t utf-8 %s > %s", path, rows,
                    shlex.quote(str(path)), shlex.quote(str(path.with_name(f"{path.stem}.utf8{path.suffix}"))))


def _sequences_fingerprint(ingest_dir: Path) -> str:
    """sha256 of what the stages after ingest read besides the catalog's text: the sequences, the cold split and
    the item ids in catalog order (ingest writes the same bytes for the same tables)."""
    digest = hashlib.sha256()
    for name in (SEQUENCES, COLD):
        if (ingest_dir / name).is_file():
            digest.update(f"{name} {artifacts.file_fingerprint(ingest_dir / name)}\n".encode())
    digest.update(json.dumps(load_item_ids(ingest_dir)).encode())
    return digest.hexdigest()[:16]


def sequences_input(ingest_dir: Path) -> dict[str, str]:
    """The key input of a stage that reads the sequences, the cold split or the item ids of ingest, and nothing else
    of it: their content, so a change of the text alone (`data.text_fields`, a corrected title) does not
    train the ID-only models again. An ingest stage written before it recorded its content gives its manifest's
    fingerprint, as then, so the stages after it stay current."""
    content = (artifacts.read_manifest(ingest_dir) or {}).get("content", {}).get("sequences")
    return {"sequences": content} if content else {"ingest": artifacts.manifest_fingerprint(ingest_dir)}


def check_item_ids_match(summary: SplitSummary, interactions: pa.Table, catalog_ids: pa.ChunkedArray,
                         inputs: dict[str, Path]) -> None:
    """Most interactions naming no catalog item is a mismatch of the two files' id formats rather than bad rows:
    said with an id from each side, as an error when none matches (each row stays in the quarantine)."""
    share = summary.unknown_item_rows / max(summary.interactions_read, 1)
    if share <= 0.5:
        return
    item_ids = interactions.column("item_id")
    unknown = item_ids.filter(pc.invert(pc.is_in(item_ids, value_set=catalog_ids)))[0].as_py()
    known = f"the catalog's ids look like {catalog_ids[0].as_py()!r}" if len(catalog_ids) else \
        "the catalog has no readable item"
    message = (f"{inputs['interactions']}: {summary.unknown_item_rows:,} of {summary.interactions_read:,} interactions "
               f"name an item id that {inputs['catalog']} lacks (e.g. {unknown!r}; {known}): do the two files write "
               "item ids alike?")
    if summary.unknown_item_rows == summary.interactions_read:
        raise DataError(message)
    log.warning("%s (listed in the ingest stage's %s)", message, QUARANTINE)


def shards(cfg: Config, ingest_dir: Path) -> Path:
    """WebDataset shards of the run's catalog in <shards.root>/<shards.name or run.name>/."""
    from qbr_dist.data.shards import INDEX, write_shards

    if cfg.shards.prebuilt_dir:
        return _prebuilt_shards(Path(cfg.shards.prebuilt_dir))
    folder = Path(cfg.shards.root) / (cfg.shards.name or cfg.run.name)
    # The catalog table itself, not the ingest manifest: runs under other roots, or with other split settings,
    # share these shards while their catalog is the same, instead of rewriting them (and so every encode after).
    settings = cfg.section_settings(shards=cfg.shards.key())
    key = artifacts.stage_key("shards", settings, {"catalog": artifacts.file_fingerprint(ingest_dir / ITEMS)[:16]})
    earlier = artifacts.stage_key("shards", settings, {"ingest": artifacts.manifest_fingerprint(ingest_dir)})
    if artifacts.stage_is_current(folder, earlier):  # written before the key took the catalog's sha256
        key = earlier
    shared = "" if cfg.shards.name else (" (the members of a --seeds or --grid run share their base run's shards: "
                                         "--set shards.name=<base run.name>)")
    # under shards.root, not in a run: runs share the folder itself, so there is no other run's copy to link
    folder, current = _open_stage("shards", folder, key, run=cfg.run.name, reuse=False, hint=shared)
    if current:
        return folder
    (folder / QUARANTINE).unlink(missing_ok=True)
    with Quarantine(folder / QUARANTINE) as quarantine:
        if cfg.shards.fetch_images:
            _fetch_catalog_images(cfg, ingest_dir / ITEMS, quarantine)
        index = write_shards(
            ingest_dir / ITEMS, folder, max_bytes=cfg.shards.max_bytes,
            images_dir=Path(cfg.shards.images_dir) if cfg.shards.images_dir else None,
            image_max_side=cfg.shards.image_max_side, max_pixels=cfg.shards.max_image_pixels,
            jpeg_quality=cfg.shards.jpeg_quality, quarantine=quarantine,
        )
    _count_records(cfg, "shards", read=index["items"], quarantined=quarantine.total)  # every catalog row is written
    outputs = [INDEX] + [s["file"] for s in index["shards"]] + ([QUARANTINE] if quarantine.total else [])
    artifacts.write_manifest(folder, key, outputs=outputs,
                             rows={k: index[k] for k in ("items", "with_image", "quarantined")})
    _finished_now(folder)
    obs_metrics.stage_ended(cfg.run.name, "shards")
    log.info("shards: %d items (%d with an image) in %d shards in %s, %d quarantined",
             index["items"], index["with_image"], len(index["shards"]), folder, index["quarantined"])
    return folder


def _prebuilt_shards(folder: Path) -> Path:
    from qbr_dist.data.shards import INDEX

    if not (folder / INDEX).is_file():
        raise FileNotFoundError(f"{folder / INDEX}: shards.prebuilt_dir has no shard index (write the shards with "
                                "`qbr shards write` or `qbr data synth` first)")
    log.info("stage shards: using the prebuilt shards in %s", folder)
    return folder


def check_structure_fields(cfg: Config, ingest_dir: Path) -> Path:
    """The ingested catalog, checked to have every field structure.fields names."""
    items_file = ingest_dir / ITEMS
    present = pq.read_schema(items_file).names
    source = cfg.data.catalog or (f"the {cfg.data.dataset} catalog" if cfg.data.dataset != "files" else
                                  "the catalog made from data.interactions (no data.catalog)")
    own = cfg.data.field_names().get("item_id", "item_id")
    for name in cfg.structure.fields:
        if name not in present:
            fields = [own if field == "item_id" else field for field in present if field != "text"]  # text: joined
            raise ValueError(f"{source}: structure.fields names '{name}', which the catalog does not have "
                             f"(fields: {', '.join(fields)})")
    return items_file


def structure(cfg: Config, root: Path, ingest_dir: Path) -> Path:
    """Structural features from the catalog's fields and the training parts of the sequences only."""
    from qbr_dist.data.split import train_part
    from qbr_dist.encode.structure import cooccurrence_embedding, cooccurrence_matrix, field_tokens, structure_table

    catalog = pq.read_table(check_structure_fields(cfg, ingest_dir), columns=["item_id", *cfg.structure.fields])
    inputs = sequences_input(ingest_dir)
    if "sequences" in inputs:  # and the catalog fields it reads, by content, not the text they may join
        inputs["fields"] = _table_fingerprint(catalog.select(cfg.structure.fields))
    key = artifacts.stage_key("structure", cfg.section_settings("structure", seed=cfg.run.seed), inputs)
    stage_dir, current = _stage("structure", root, key)
    if current:
        return stage_dir
    tokens, vocab = field_tokens({name: catalog.column(name).to_pylist() for name in cfg.structure.fields},
                                 separator=cfg.structure.separator or None, min_count=cfg.structure.min_count)
    tokens = tokens or [[] for _ in range(catalog.num_rows)]  # no fields named: co-occurrence only
    training = (train_part(items) for items in load_sequences(ingest_dir))
    matrix = cooccurrence_matrix(training, catalog.num_rows, window=cfg.structure.window)
    embedding, has_cooc = cooccurrence_embedding(matrix, dim=cfg.structure.dim, seed=cfg.run.seed)
    with artifacts.atomic_path(stage_dir / STRUCTURE) as tmp:
        pq.write_table(structure_table(catalog.column("item_id").to_pylist(), tokens, embedding, has_cooc), tmp)
    artifacts.write_json(stage_dir / STRUCTURE_VOCAB, vocab)
    rows = {"items": catalog.num_rows, "vocabulary": len(vocab) - 1, "with_tokens": sum(map(bool, tokens)),
            "with_cooccurrence": int(has_cooc.sum())}
    _finish(stage_dir, key, outputs=[STRUCTURE, STRUCTURE_VOCAB], rows=rows)
    log.info("structure: %d items, %d tokens, %d with tokens, %d with co-occurrence", *rows.values())
    return stage_dir


def _table_fingerprint(table: pa.Table) -> str:
    """sha256 of a table as Arrow's stream format writes it."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def encode(cfg: Config, root: Path, shards_dir: Path) -> Path:
    """Item feature table (one parquet per shard) in <run>/encode/, skipping finished shards."""
    from qbr_dist.data.shards import INDEX
    from qbr_dist.encode.job import SHARDS_DONE, encode_shards, encoder_files, settings_key, shard_state

    import ray.data

    # Keyed by the shards' contents, not the index file (which names the run it was written for), so
    # runs with the same catalog share their encoded features; plus missing or damaged shards (shard_state).
    shard_hashes = [shard["sha256"] for shard in json.loads((shards_dir / INDEX).read_text())["shards"]]
    fingerprints = artifacts.Fingerprints()  # the key (before and after) and the job read each damaged shard once

    def encode_key() -> dict:
        return artifacts.stage_key("encode", cfg.section_settings(encode=settings_key(cfg.encode)),
                                   {"shards": shard_hashes} | shard_state(shards_dir, root / "encode", fingerprints))

    stage_dir, current = _stage("encode", root, encode_key())
    if current:
        return stage_dir
    start_ray(cfg, reads={"the shards index": shards_dir / INDEX} | encoder_files(cfg.encode))
    context = ray.data.DataContext.get_current()
    bars, context.enable_progress_bars = context.enable_progress_bars, True  # the encode job shows its own
    try:
        with Quarantine(stage_dir / QUARANTINE) as quarantine:
            totals = encode_shards(shards_dir, stage_dir, cfg.encode, quarantine=quarantine,
                                   metrics=obs_serve.endpoint(cfg), fingerprints=fingerprints)
    finally:
        context.enable_progress_bars = bars
        obs_serve.retire(obs_serve.endpoint(cfg), "encode-actor")
    _count_records(cfg, "encode", read=totals["read"], quarantined=totals["quarantined"])
    log.info("encode: %d items (%d with text, %d with an image), %d quarantined, %d shards already done, "
             "%.1f items/s", totals["items"], totals["with_text"], totals["with_image"], totals["quarantined"],
             totals["skipped_shards"], totals["items_per_s"])
    outputs = [SHARDS_DONE] + [p.name for p in feature_files(stage_dir)]
    outputs += [QUARANTINE] if (stage_dir / QUARANTINE).is_file() else []
    done = json.loads((stage_dir / SHARDS_DONE).read_text()).values()
    rows = {name: sum(entry[field] for entry in done)
            for name, field in (("items", "rows"), ("with_text", "with_text"), ("with_image", "with_image"))}
    if totals["incomplete_shards"]:
        log.warning("encode: shards %s were missing or damaged (quarantine.jsonl); a later run encodes them once "
                    "they are there or restored", ", ".join(totals["incomplete_shards"]))
    _finish(stage_dir, encode_key(), outputs=outputs, rows=rows)
    return stage_dir


def feature_files(stage_dir: Path) -> list[Path]:
    """The parquet tables of a stage that writes one file per shard (encode) or per rank (fusion)."""
    return sorted(stage_dir.glob("*.parquet"))


def check_batch_fits(cfg: Config, ingest_dir: Path) -> None:
    """A `train.batch_size` larger than a training phase's windows is refused from the sequences' lengths: `qbr run`
    asks right after ingest, before the tokenizer's hours, for both training stages that follow."""
    from qbr_dist.seqrec.examples import window_count

    lengths = pc.list_value_length(pq.read_table(ingest_dir / SEQUENCES, columns=["items"]).column("items"))
    lengths = lengths.to_numpy(zero_copy_only=False)
    window = dict(max_len=cfg.model.max_len)
    counts = {"pretrain": window_count(lengths, stride=cfg.train.window_stride, **window),
              "finetune": window_count(lengths, stride=cfg.train.finetune_stride, every_prefix=True, **window)}
    fits = min(counts.values())
    if fits < cfg.train.batch_size:
        hint = (f"set it to at most {fits}" if fits >= max(1, cfg.runtime.num_workers) else
                "too few for any batch of the configured workers: a phase needs users with longer histories")
        raise ValueError(f"config key 'train.batch_size': {cfg.train.batch_size} exceeds the training windows "
                         f"of a phase ({counts}); {hint}")


def tokenize(cfg: Config, root: Path, ingest_dir: Path | None = None) -> dict[str, Path]:
    """ingest (unless given) -> structure -> shards -> encode -> fusion (when quant.input = 'fused') -> quantize,
    fitted on warm items only under a cold-item split, then retokenize to give the cold items their codes.
    Structure comes first of the content stages: it is quick, and a field it names that the catalog lacks stops
    the run before hours of encoding."""
    dirs = {"ingest": ingest_dir or ingest(cfg, root)}
    dirs["structure"] = structure(cfg, root, dirs["ingest"])
    dirs["shards"] = shards(cfg, dirs["ingest"])
    dirs["encode"] = encode(cfg, root, dirs["shards"])
    vectors = dirs["encode"]
    if cfg.quant.input == "fused":
        vectors = dirs["fusion"] = fusion(cfg, root, dirs["ingest"], dirs["encode"], dirs["structure"])
    dirs["quantize"] = quantize(cfg, root, vectors, exclude=dirs["ingest"] / COLD if cfg.data.cold_fraction else None)
    _record_tokenizer(cfg, dirs["quantize"])
    if cfg.data.cold_fraction:
        dirs["retokenize"] = retokenize(cfg, root, dirs["encode"], dirs)
    return dirs


def fusion(cfg: Config, root: Path, ingest_dir: Path, encode_dir: Path, structure_dir: Path) -> Path:
    """Fused item vectors, trained on Ray Train + DeepSpeed from the content and structure features."""
    import ray.data

    from qbr_dist.fusion import STATS, features
    from qbr_dist.fusion.export import MODEL
    from qbr_dist.fusion.train_loop import adjacent_pairs, fusion_worker, paired_items
    from qbr_dist.train.runtime import TrainJob, fit

    settings = cfg.section_settings("fusion", seed=cfg.run.seed, precision=cfg.runtime.precision,
                                    grad_clip=cfg.runtime.grad_clip)
    inputs = sequences_input(ingest_dir) | {name: artifacts.manifest_fingerprint(folder)
                                            for name, folder in (("encode", encode_dir), ("structure", structure_dir))}
    key = artifacts.stage_key("fusion", settings, inputs)
    stage_dir, current = _stage("fusion", root, key)
    if current:
        return stage_dir
    items = num_items(ingest_dir)
    item_ids = load_item_ids(ingest_dir)
    features.assemble(stage_dir / "features", item_ids=item_ids, encode_files=feature_files(encode_dir),
                      structure_file=structure_dir / STRUCTURE, max_tokens=cfg.fusion.max_tokens)
    artifacts.save_array(stage_dir / "seen.npy", paired_items(load_sequences(ingest_dir), items))
    for stale in stage_dir.glob("fused-rank*.parquet"):
        stale.unlink()
    start_ray(cfg)
    pairs = ray.data.read_parquet(str((ingest_dir / SEQUENCES).resolve())).map_batches(adjacent_pairs).materialize()
    steps_per_epoch = pairs.count() // cfg.fusion.batch_size
    if not steps_per_epoch:
        raise ValueError(f"config key 'fusion.batch_size': {cfg.fusion.batch_size} exceeds the "
                         f"{pairs.count()} (item, next item) pairs of the training sequences")
    loop_config = {
        "fusion": cfg.fusion.__dict__, "seed": cfg.run.seed, "num_items": items, "run_name": cfg.run.name,
        "vocab_size": len(json.loads((structure_dir / STRUCTURE_VOCAB).read_text())),
        "features_dir": str((stage_dir / "features").resolve()), "seen_file": str((stage_dir / "seen.npy").resolve()),
        "items_file": str((ingest_dir / ITEMS).resolve()), "out_dir": str(stage_dir.resolve()),
        "steps_per_epoch": steps_per_epoch,
    }
    started = time.perf_counter()
    job = TrainJob(name=_train_run_name("fusion", key, cfg), storage_path=stage_dir / "ray", loop=fusion_worker,
                   loop_config=loop_config, datasets={"pairs": pairs}, metrics=obs_serve.endpoint(cfg))
    result = fit(job, cfg.runtime)
    if result.error is not None:
        raise RuntimeError(f"fusion training failed: {result.error}")
    stats = json.loads((stage_dir / STATS).read_text()) | {"train_wall_s": round(time.perf_counter() - started, 1)}
    artifacts.write_json(stage_dir / STATS, stats)
    outputs = [STATS, MODEL] + [p.name for p in feature_files(stage_dir)]
    _finish(stage_dir, key, outputs=outputs, rows={
        "items": stats["items"], "cold_items": stats["cold_items"], "mean_depth": stats["mean_depth"],
        "steps": stats["steps"]})
    log.info("fusion: %d items (%d without a trained ID vector), mean depth %.2f, modality weights %s",
             stats["items"], stats["cold_items"], stats["mean_depth"], stats["modality_weights"])
    return stage_dir


def quantize(cfg: Config, root: Path, vectors_dir: Path, *, exclude: Path | None = None) -> Path:
    """Residual codebooks (k-means or RQ-VAE) fitted by Ray Train workers together, then unique semantic IDs per
    item; `exclude`, an ingest mask of items (the cold ones), leaves those items out of fitting and codes."""
    import shutil

    from qbr_dist.quant import CODEBOOKS, CODES, STATS
    from qbr_dist.quant.codes import write_codes
    from qbr_dist.quant.semantic_ids import assign_suffixes, collision_rate
    from qbr_dist.quant.worker import quantize_worker, rank_codes_file
    from qbr_dist.train.runtime import TrainJob, fit

    _every_item_has(cfg.quant.input, vectors_dir)
    settings = cfg.section_settings(quant=cfg.quant.key(), seed=cfg.run.seed, precision=cfg.runtime.precision,
                                    grad_clip=cfg.runtime.grad_clip)
    key = artifacts.stage_key("quantize", settings,
                              {"vectors": artifacts.manifest_fingerprint(vectors_dir),
                               "exclude": artifacts.file_fingerprint(exclude) if exclude else None})
    stage_dir, current = _stage("quantize", root, key)
    if current:
        return stage_dir
    parts = stage_dir / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    start_ray(cfg)
    loop_config = {"quant": cfg.quant.__dict__, "out_dir": str(parts.resolve()), "seed": cfg.run.seed,
                   "run_name": cfg.run.name, "files": [str(p.resolve()) for p in feature_files(vectors_dir)],
                   "exclude": {"items": str((exclude.parent / ITEMS).resolve()), "mask": str(exclude.resolve())}
                   if exclude else None}
    job = TrainJob(name=_train_run_name("quantize", key, cfg), storage_path=stage_dir / "ray", loop=quantize_worker,
                   loop_config=loop_config, datasets={}, metrics=obs_serve.endpoint(cfg))
    result = fit(job, cfg.runtime)
    if result.error is not None:
        raise RuntimeError(f"quantize failed: {result.error}")
    ranks = [pq.read_table(rank_codes_file(parts, r)) for r in range(cfg.runtime.num_workers)]
    table = pa.concat_tables(ranks)
    item_ids = table.column("item_id").combine_chunks()
    codes = column_matrix(table.column("codes"), np.int64)
    stats = json.loads((parts / STATS).read_text())
    suffixes = assign_suffixes(item_ids, codes)
    write_codes(stage_dir / CODES, item_ids, codes, suffixes, stats["codebook_version"])
    for name in (CODEBOOKS, STATS):
        (parts / name).replace(stage_dir / name)
    shutil.rmtree(parts)
    stats |= {"collision_rate": collision_rate(codes), "suffix_table_size": int(suffixes.max(initial=-1)) + 1}
    artifacts.write_json(stage_dir / STATS, stats)
    rows = {"items": len(item_ids), "codebook_version": stats["codebook_version"],
            "collision_rate": stats["collision_rate"], "suffix_table_size": stats["suffix_table_size"]}
    _finish(stage_dir, key, outputs=[CODES, CODEBOOKS, STATS], rows=rows)
    log.info("quantize: %d items, codebook %s, collision rate %.4f before suffixes, suffix table %d",
             len(item_ids), stats["codebook_version"], stats["collision_rate"], stats["suffix_table_size"])
    return stage_dir


def _every_item_has(column: str, vectors_dir: Path) -> None:
    """Encoder vectors (quant.input 'text_emb' or 'image_emb') can be quantized only if every item has one:
    checked from the encode stage's counts before any worker starts."""
    counted = VECTOR_COUNTS.get(column)
    rows = artifacts.read_manifest(vectors_dir)["rows"]
    if counted and rows[counted] < rows["items"]:
        raise ValueError(f"{vectors_dir}: quant.input = '{column}', but {rows['items'] - rows[counted]} of "
                         f"{rows['items']} items have no such vector; quantize 'fused', which gives every "
                         "item one")


def _record_tokenizer(cfg: Config, quantize_dir: Path) -> None:
    from qbr_dist.quant import STATS

    obs_metrics.record_tokenizer(json.loads((quantize_dir / STATS).read_text()), stage="quantize", run=cfg.run.name)


def retokenize(cfg: Config, root: Path, features: Path, dirs: dict[str, Path], *,
               keep_suffixes: list[Path] = (), stage: str = "retokenize") -> Path:
    """Codes for every row of a feature table (a parquet file or a folder of them) with the run's
    codebook, suffixes kept from `keep_suffixes` (earlier retokenizations' codes, same codebook; the
    first file's where they differ), the run's own retokenize stage's codes (its cold items', for any
    other stage) and the quantize stage's; in <run>/<stage>/ (the pipeline's own, for a cold-item split,
    is `retokenize`; `qbr retokenize` names its own). With quant.input = 'fused' the rows are item
    features (the encode format), fused first."""
    from qbr_dist.fusion.export import MODEL
    from qbr_dist.quant import CODEBOOKS, CODES
    from qbr_dist.quant.codebook import load_codebooks
    from qbr_dist.quant.codes import code_levels
    from qbr_dist.quant.retokenize import FusionInputs, check_feature_files
    from qbr_dist.quant.retokenize import retokenize as retokenize_job

    files = feature_table_files(features)
    check_feature_files(files, tokenizer_vectors(cfg, dirs["encode"]), any_of=cfg.quant.input == "fused")
    quantize_dir = dirs["quantize"]
    _, version, _ = load_codebooks(quantize_dir / CODEBOOKS)
    fusion = None
    inputs = {"codebook": version, "features": {f.name: artifacts.file_fingerprint(f) for f in files}}
    if keep_suffixes:
        check_keep_files(keep_suffixes, version, levels=code_levels(quantize_dir / CODES))
        inputs["keep_suffixes"] = [artifacts.file_fingerprint(path) for path in keep_suffixes]
    run_codes = [dirs["retokenize"] / CODES] if stage != "retokenize" and "retokenize" in dirs else []
    if run_codes:  # a new item must not take the semantic ID of one of the run's cold items
        inputs["run_codes"] = artifacts.manifest_fingerprint(dirs["retokenize"])
    if cfg.quant.input == "fused":
        fusion = FusionInputs(model=dirs["fusion"] / MODEL, id_vectors=feature_files(dirs["fusion"]),
                              structure=dirs["structure"] / STRUCTURE)
        _warn_without_structure_tokens(cfg, files, dirs["structure"], own_catalog=stage == "retokenize")
        inputs |= {name: artifacts.manifest_fingerprint(dirs[name]) for name in ("fusion", "structure")}
    key = artifacts.stage_key("retokenize", cfg.section_settings(quant=cfg.quant.key()), inputs)
    stage_dir, current = _stage(stage, root, key)
    if current:
        _log_retokenized(artifacts.read_manifest(stage_dir)["rows"], stage_dir)
        return stage_dir
    start_ray(cfg, reads={f"the features {f.name}": f for f in files})
    (stage_dir / QUARANTINE).unlink(missing_ok=True)
    with Quarantine(stage_dir / QUARANTINE) as quarantine:
        summary = retokenize_job(files, cfg.quant.input, quantize_dir / CODEBOOKS, stage_dir,
                                 previous=[*keep_suffixes, *run_codes, quantize_dir / CODES], quarantine=quarantine,
                                 fusion=fusion, batch_size=cfg.quant.retokenize_batch_size,
                                 actors=cfg.quant.retokenize_actors,
                                 cpus_per_actor=cfg.quant.retokenize_cpus_per_actor,
                                 chunk_size=cfg.quant.chunk_size, metrics=obs_serve.endpoint(cfg), stage=stage,
                                 code_contentless=stage == "retokenize", trained=[*run_codes, quantize_dir / CODES])
    _count_records(cfg, stage, read=quarantine.read, quarantined=quarantine.total)
    _finish(stage_dir, key, outputs=[CODES] + ([QUARANTINE] if quarantine.total else []), rows=summary)
    log.info("retokenize: %d items with codebook %s, actors busy %d, %.1f items/s, collision rate %.4f, suffix "
             "table %d", summary["items"], version, summary["actors_busy"], summary["items_per_s"],
             summary["collision_rate"], summary["suffix_table_size"])
    _log_retokenized(summary, stage_dir)
    return stage_dir


def _log_retokenized(summary: dict, stage_dir: Path) -> None:
    """What a retokenization found, said when it runs and again when a later command finds it done."""
    def named(kind: str) -> str:
        shown = summary.get(f"{kind}_shown", [])
        return ", ".join(shown) + (", ..." if summary[kind] > len(shown) else "")

    log.info("retokenize: %s: %d items (%d new to the run's codes%s; %d with a content-predicted query); %d rows "
             "quarantined%s", stage_dir, summary["items"],
             summary.get("new_items", 0), f": {named('new_items')}" if summary.get("new_items") else "",
             summary["content_queries"], summary.get("quarantined", 0),
             f" (listed in {stage_dir / QUARANTINE})" if summary.get("quarantined") else "")
    if summary.get("recoded"):
        log.warning("retokenize: %d items of the run's codes got other codes, as their features changed (%s); the "
                    "run's models know them by their codes in the run, and `qbr recommend --new-items` scores catalog "
                    "items with those", summary["recoded"], named("recoded"))
    if summary.get("contentless"):
        log.warning("retokenize: %d catalog items have no content at all (no trained ID vector, no vector of any "
                    "modality, no structure token); they share the codes of that emptiness", summary["contentless"])


def _warn_without_structure_tokens(cfg: Config, files: list[Path], structure_dir: Path, *, own_catalog: bool) -> None:
    """A feature table of new items without `struct_tokens` is fused without the structure the run's fusion was fit
    with (only the run's own items find theirs in its structure stage), so their codes lean on the other features:
    said once, with where the token ids come from."""
    from qbr_dist.fusion.features import TOKENS_COLUMN

    if own_catalog or not cfg.structure.fields or TOKENS_COLUMN in pq.read_schema(files[0]).names:
        return
    log.warning("retokenize: %s has no %s column, so items the run's catalog lacks are fused without structure "
                "tokens (the run's fusion was fit with structure.fields %s); for codes comparable to the catalog's, "
                "give each new item its token ids from %s", files[0].parent if len(files) > 1 else files[0],
                TOKENS_COLUMN, cfg.structure.fields, structure_dir / STRUCTURE_VOCAB)


def feature_table_files(features: Path) -> list[Path]:
    """The parquet files of a feature table to retokenize: a file, or a folder of them."""
    files = sorted(features.glob("*.parquet")) if features.is_dir() else [features]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"{features}: no parquet feature table to retokenize")
    return files


def tokenizer_vectors(cfg: Config, encode_dir: Path) -> dict[str, int]:
    """{column: width} of the encoder vectors the run's tokenizer was fit on: quant.input's, or with 'fused' each
    modality some item of the run had."""
    from qbr_dist.fusion.features import vector_width

    rows = artifacts.read_manifest(encode_dir)["rows"]
    columns = [cfg.quant.input] if cfg.quant.input != "fused" else \
        [column for column, counted in VECTOR_COUNTS.items() if rows[counted]]
    return {column: vector_width(feature_files(encode_dir), column) for column in columns}


def cli_retokenize_stage(features: Path) -> str:
    """The folder `qbr retokenize` writes for a feature table: its own, named after the table and a digest of
    its full path (two `items.parquet` in different folders are two tables), so it never replaces the
    pipeline's `retokenize/` (a cold split's codes, which Q-BERT4Rec trains on) nor another table's codes."""
    import hashlib

    resolved = features.resolve()
    return f"retokenize-{resolved.stem}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def check_keep_files(paths: list[Path], version: str | None = None, levels: int | None = None) -> None:
    """Refuse codes files to keep suffixes from that are missing, not codes files, or (given the run's codebook
    `version` and its code `levels`) made with another codebook or of another length: one line naming the file."""
    from qbr_dist.quant.codes import code_levels, codes_schema, schema_version

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no codes file to keep suffixes from")
        found = schema_version(codes_schema(path))
        if version is not None and found != version:
            raise ValueError(f"{path}: codes of codebook {found or '(none)'}, but the run's codebook is {version}; "
                             "suffixes can only be kept from codes of the same codebook")
        if levels is not None and (found := code_levels(path)) not in (0, levels):
            raise ValueError(f"{path}: codes of {found} levels, but the run's codebook has {levels}; "
                             "suffixes can only be kept from codes of the same codebook")


def _fetch_catalog_images(cfg: Config, catalog: Path, quarantine: Quarantine) -> None:
    from qbr_dist.data.images import fetch_images

    if "image_url" not in pq.read_schema(catalog).names:
        raise ValueError(f"{catalog}: shards.fetch_images is true but the catalog has no field 'image_url'")
    table = pq.read_table(catalog, columns=["item_id", "image_url"])
    urls = {i: u for i, u in zip(table.column("item_id").to_pylist(), table.column("image_url").to_pylist()) if u}
    summary = fetch_images(urls, Path(cfg.shards.images_dir), concurrency=cfg.shards.fetch_concurrency,
                           retries=cfg.shards.fetch_retries, timeout_s=cfg.shards.fetch_timeout_s,
                           max_bytes=cfg.shards.fetch_max_bytes, quarantine=quarantine)
    log.info("images: %d fetched, %d already there, %d failed (items kept without an image)",
             summary.fetched, summary.already_there, summary.failed)


def load_sequences(ingest_dir: Path) -> list[np.ndarray]:
    column = pq.read_table(ingest_dir / SEQUENCES).column("items")
    return [np.asarray(items, dtype=np.int64) for items in column.to_pylist()]


def load_item_ids(ingest_dir: Path) -> list[str]:
    """The catalog's item ids in item-index order (item i + 1 is entry i)."""
    return pq.read_table(ingest_dir / ITEMS, columns=["item_id"]).column("item_id").to_pylist()


def num_items(ingest_dir: Path) -> int:
    return artifacts.read_manifest(ingest_dir)["rows"]["items"]


def evaluations(ingest_dir: Path) -> tuple[str, ...]:
    """Validation and warm test always; cold test when the split has users with a cold test target."""
    cold_users = artifacts.read_manifest(ingest_dir)["rows"].get("cold_test_users", 0)
    return EVALUATIONS if cold_users else EVALUATIONS[:2]


def load_cold_targets(ingest_dir: Path) -> np.ndarray:
    return pq.read_table(ingest_dir / SEQUENCES, columns=["cold_target"]).column(0).to_numpy(zero_copy_only=False)


def popularity(cfg: Config, root: Path, ingest_dir: Path) -> Path:
    """Most-popular baseline, ranked on the driver."""
    from qbr_dist.seqrec.popularity import popularity_scorer, training_counts

    return _driver_baseline("popularity", cfg, root, ingest_dir, {}, lambda sequences: popularity_scorer(
        training_counts(sequences, num_items(ingest_dir))))


def content_knn(cfg: Config, root: Path, ingest_dir: Path, encode_dir: Path) -> Path:
    """Content k-NN baseline over the encode stage's text features, ranked on the driver."""
    return _driver_baseline("content-knn", cfg, root, ingest_dir,
                            {"encode": artifacts.manifest_fingerprint(encode_dir)},
                            lambda _: content_knn_model(ingest_dir, encode_dir))


def content_knn_model(ingest_dir: Path, encode_dir: Path):
    """The content k-NN scorer (`evaluate_examples`' `scorer`) of a run's catalog and text features."""
    import torch

    from qbr_dist.seqrec.content_knn import content_knn_scorer, text_matrix

    matrix = text_matrix(feature_files(encode_dir), load_item_ids(ingest_dir))
    return content_knn_scorer(torch.from_numpy(matrix))


def _driver_baseline(stage: str, cfg: Config, root: Path, ingest_dir: Path, inputs: dict, make_scorer) -> Path:
    """A model without training, scored on the driver for every evaluation with the shared metric code."""
    from qbr_dist.seqrec.examples import evaluation_examples
    from qbr_dist.seqrec.metrics import evaluate_examples

    key = artifacts.stage_key(stage, cfg.section_settings(eval=cfg.eval.key()),
                              sequences_input(ingest_dir) | inputs)
    stage_dir, current = _stage(stage, root, key)
    if current:
        return stage_dir
    started = time.perf_counter()
    sequences, cold_target = load_sequences(ingest_dir), load_cold_targets(ingest_dir)
    scorer = make_scorer(sequences)
    metrics = {
        evaluation: evaluate_examples(evaluation_examples(sequences, cold_target, evaluation), scorer,
                                      num_items=num_items(ingest_dir), chunk_size=cfg.eval.chunk_size,
                                      exclude_history=cfg.eval.exclude_history)
        for evaluation in evaluations(ingest_dir)
    }
    metrics.update(train_wall_s=round(time.perf_counter() - started, 3), epochs=0)
    artifacts.write_json(stage_dir / METRICS, metrics)
    _finish(stage_dir, key, outputs=[METRICS], rows={"users": len(sequences)})
    return stage_dir


def qbert4rec(cfg: Config, root: Path, tokenizer: dict[str, Path]) -> Path:
    """Q-BERT4Rec over the tokenizer's codes: every item's (the retokenize stage's) under a cold-item split."""
    return bert4rec(cfg, root, tokenizer["ingest"], quantize_dir=tokenizer["quantize"],
                    codes_dir=tokenizer.get("retokenize", tokenizer["quantize"]))


def bert4rec(cfg: Config, root: Path, ingest_dir: Path, *, quantize_dir: Path | None = None,
             codes_dir: Path | None = None) -> Path:
    """BERT4Rec over item IDs (stage `bert4rec`, the baseline), or over semantic IDs (stage
    `qbert4rec`, tokens from `model.tokens`): the quantize stage's codebooks, and the codes of
    `codes_dir` (the quantize or retokenize stage); the same training and evaluation. The ID-only
    model is not evaluated on cold test targets: their ID vectors were never trained."""
    import ray.data

    from qbr_dist.seqrec.examples import eval_inputs, training_windows
    from qbr_dist.seqrec.train_loop import LOOP_VERSION, bert4rec_worker
    from qbr_dist.seqrec.trained import CODES_FILE
    from qbr_dist.train.runtime import TrainJob, fit

    stage = "qbert4rec" if quantize_dir is not None else "bert4rec"
    model = cfg.model
    if quantize_dir is None:  # the ID baseline: no semantic option applies
        model = dataclasses.replace(cfg.model, tokens="id", id_dropout=0.0, codebook_init=False, cold_codes_only=False)
    # Worker count, checkpoint cadence and the like do not change the result; precision and clipping do.
    settings = cfg.section_settings("train", eval=cfg.eval.key(), model=model.key(), seed=cfg.run.seed,
                                    loop=LOOP_VERSION, precision=cfg.runtime.precision, grad_clip=cfg.runtime.grad_clip)
    inputs = sequences_input(ingest_dir)
    codes_dir = codes_dir or quantize_dir
    if quantize_dir is not None:
        inputs |= {"quantize": artifacts.manifest_fingerprint(quantize_dir),
                   "codes": artifacts.manifest_fingerprint(codes_dir)}
    key = artifacts.stage_key(stage, settings, inputs)
    stage_dir, current = _stage(stage, root, key)
    if current:
        return stage_dir
    items = num_items(ingest_dir)
    semantic = {}
    if quantize_dir is not None:
        semantic = _semantic_codes(ingest_dir, quantize_dir, codes_dir, stage_dir)
        if model.codebook_init:
            semantic["level_rows_file"] = _level_rows(quantize_dir, semantic["codebook_version"], model.hidden,
                                                      stage_dir)
    start_ray(cfg)
    sequences = ray.data.read_parquet(str((ingest_dir / SEQUENCES).resolve()))
    history_len = _longest_sequence(ingest_dir) if cfg.eval.exclude_history else 0
    scored = [e for e in evaluations(ingest_dir) if e != "test_cold" or model.tokens != "id"]
    eval_kwargs = dict(max_len=cfg.model.max_len, mask_token=items + 1, history_len=history_len)
    windows = dict(max_len=cfg.model.max_len)
    datasets = {
        "pretrain": sequences.map_batches(training_windows, fn_kwargs=windows | {"stride": cfg.train.window_stride}),
        "finetune": sequences.map_batches(
            training_windows, fn_kwargs=windows | {"stride": cfg.train.finetune_stride, "every_prefix": True}
        ),
        **{evaluation: sequences.map_batches(eval_inputs, fn_kwargs=dict(evaluation=evaluation, **eval_kwargs))
           for evaluation in scored},
    }
    # Built once and kept in the object store (spilled to disk when large): every epoch of every
    # worker then reads blocks instead of re-running the read-and-window pipeline.
    datasets = {name: dataset.materialize() for name, dataset in datasets.items()}
    steps_per_epoch = {phase: datasets[phase].count() // cfg.train.batch_size for phase in ("pretrain", "finetune")}
    sampled = _item_counts(sequences, items, stage_dir) if items > cfg.train.sampled_softmax_above else {}
    loop_config = {
        "model": model.__dict__, "train": cfg.train.__dict__, "eval": cfg.eval.__dict__, "stage": stage,
        "seed": cfg.run.seed, "num_items": items, "run_name": cfg.run.name, "steps_per_epoch": steps_per_epoch,
        "evaluations": scored, **semantic, **sampled,
        "cold_file": str((ingest_dir / COLD).resolve()) if (ingest_dir / COLD).is_file() else None,
    }
    started = time.perf_counter()
    # The Ray Train run name carries the stage key (config and inputs): a rerun resumes only a run
    # of the same config on the same data and codebook.
    job = TrainJob(name=_train_run_name(stage, key, cfg), storage_path=stage_dir / "ray", loop=bert4rec_worker,
                   loop_config=loop_config, datasets=datasets, metrics=obs_serve.endpoint(cfg))
    result = fit(job, cfg.runtime)
    if result.error is not None:
        raise RuntimeError(f"{stage} training failed: {result.error}")
    metrics = _training_metrics(result.metrics, wall_s=time.perf_counter() - started)
    metrics["checkpoint"] = result.checkpoint.path
    metrics["codebook_version"] = semantic.get("codebook_version")
    outputs = [METRICS] + ([CODES_FILE] if semantic else []) + _export_weights(cfg, result.checkpoint.path,
                                                                                  stage_dir, loop_config)
    artifacts.write_json(stage_dir / METRICS, metrics)
    _finish(stage_dir, key, outputs=outputs, rows={"steps": metrics["steps"]})
    return stage_dir


def _train_run_name(stage: str, key: dict, cfg: Config) -> str:
    """Names the Ray Train run a restart resumes: the stage key plus what the layout of its DeepSpeed
    checkpoints depends on (the ZeRO stage, and with partitions the worker count), which the key leaves out;
    a restart after changing either then starts afresh instead of failing to load another layout."""
    layout = {"zero_stage": cfg.runtime.zero_stage}
    if cfg.runtime.zero_stage >= 1:
        layout["num_workers"] = cfg.runtime.num_workers
    return f"{stage}-{artifacts.key_digest(key | {'checkpoint_layout': layout})}"


def _export_weights(cfg: Config, checkpoint: str, stage_dir: Path, loop_config: dict) -> list[str]:
    """The final weights as <stage>/model.safetensors, with model.json to rebuild the model around them
    (ZeRO stages 1-3; stage 0 keeps no ZeRO partitions)."""
    from qbr_dist.seqrec.trained import MODEL_SPEC, SPEC_KEYS
    from qbr_dist.train.export import WEIGHTS, export_weights
    from qbr_dist.train.runtime import CHECKPOINT_TAG

    if cfg.runtime.zero_stage == 0:
        log.warning("runtime.zero_stage = 0: no %s exported (the DeepSpeed checkpoint is in %s)", WEIGHTS, checkpoint)
        for stale in (WEIGHTS, MODEL_SPEC):  # an earlier run's weights must not pass for this one's
            (stage_dir / stale).unlink(missing_ok=True)
        return []
    export_weights(checkpoint, stage_dir / WEIGHTS, tag=CHECKPOINT_TAG)
    artifacts.write_json(stage_dir / MODEL_SPEC, {key: loop_config.get(key) for key in SPEC_KEYS})
    return [WEIGHTS, MODEL_SPEC]


def _semantic_codes(ingest_dir: Path, quantize_dir: Path, codes_dir: Path, stage_dir: Path) -> dict:
    """Every catalog item's codes (level codes + suffix) in item-index order, saved for the workers."""
    from qbr_dist.quant import CODES, STATS
    from qbr_dist.quant.codes import read_codes, suffix_table_size
    from qbr_dist.seqrec.trained import CODES_FILE

    version = artifacts.read_manifest(quantize_dir)["rows"]["codebook_version"]
    stats = json.loads((quantize_dir / STATS).read_text())
    table = read_codes(codes_dir / CODES, expected_version=version)
    item_ids = pq.read_table(ingest_dir / ITEMS, columns=["item_id"]).column("item_id").combine_chunks()
    rows = pc.index_in(item_ids, value_set=table.column("item_id").combine_chunks())
    if rows.null_count:
        missing = item_ids.filter(rows.is_null())
        raise ValueError(f"{codes_dir / CODES}: {len(missing)} catalog items have no semantic ID "
                         f"(e.g. {missing[0].as_py()!r}; quarantined at encode or retokenize? see their "
                         "quarantine.jsonl); retokenize the catalog first")
    by_row = column_matrix(table.column("codes"), np.int64)
    codes = np.zeros((len(item_ids) + 1, by_row.shape[1]), dtype=np.int64)
    codes[1:] = by_row[rows.to_numpy()]
    artifacts.save_array(stage_dir / CODES_FILE, codes)
    return {"codes_file": str((stage_dir / CODES_FILE).resolve()), "codebook_version": version,
            "code_sizes": [len(level["counts"]) for level in stats["levels"]] + [suffix_table_size(codes_dir / CODES)]}


def _level_rows(quantize_dir: Path, version: str, hidden: int, stage_dir: Path) -> str:
    """The codebooks projected to the model's width, saved once for every worker to start its code tables from."""
    from qbr_dist.quant import CODEBOOKS
    from qbr_dist.quant.codebook import load_codebooks
    from qbr_dist.seqrec.code_init import codebook_rows

    tensors, _, _ = load_codebooks(quantize_dir / CODEBOOKS, expected_version=version)
    path = stage_dir / "level_rows.npy"
    artifacts.save_array(path, codebook_rows(tensors["codebooks"], hidden).numpy())
    return str(path.resolve())


def _item_counts(sequences, items: int, stage_dir: Path) -> dict:
    """Training-part count of every item, for sampled softmax: per-batch counts from Ray Data tasks, summed here."""
    from qbr_dist.seqrec.popularity import batch_counts, summed_counts

    counts = summed_counts(sequences.map_batches(batch_counts).iter_batches(batch_format="numpy"), items)
    artifacts.save_array(stage_dir / "item_counts.npy", counts)
    return {"counts_file": str((stage_dir / "item_counts.npy").resolve())}


def _training_metrics(final: dict, *, wall_s: float) -> dict:
    """metrics.json of a training stage from the final report of its workers."""
    metrics = {
        split: {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith(f"{split}/")}
        for split in EVALUATIONS
        if any(k.startswith(f"{split}/") for k in final)
    }
    return metrics | {
        "train_wall_s": round(wall_s, 1), "epochs": final["epochs"], "steps": final["step"],
        "train_s": round(final["train_s"], 4), "train_sequences": final["train_sequences"],
        "sequences_per_s": round(final["train_sequences"] / final["train_s"], 1) if final["train_s"] else None,
        "best": {"phase": final["best_phase"], "epoch": final["best_epoch"],
                 "params_sha256": final.get("best_params_sha256")},
        "curve": final["curve"], "resumed_at": final["resumed_at"], "mask_mixture": final.get("mask_mixture"),
    }


def _longest_sequence(ingest_dir: Path) -> int:
    return max(len(items) for items in load_sequences(ingest_dir))


def read_metrics(stage_dir: Path) -> dict:
    return json.loads((stage_dir / METRICS).read_text())
