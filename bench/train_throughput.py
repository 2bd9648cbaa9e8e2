"""Training throughput: Q-BERT4Rec on the project's runtime (Ray Train + DeepSpeed, 1 and 2 workers) against
RecBole 1.2.1's BERT4Rec at the same width, depth, sequence length, batch size and threads, in one run.

    python bench/train_throughput.py [--quick] [--threads 1] [--out PATH]

1. The tokenizer stages of `launch/configs/ml100k.toml` (ingest .. retokenize) run once under
   bench/.work/train_throughput/ml100k/ and are reused while current. Codes come from the text features
   (`quant.input = text_emb`, no fusion training): the codes decide only which embedding rows are read, the
   model's tables, width and depth are those of the demo.
2. Q-BERT4Rec (the `qbert4rec` stage, `pipeline.bert4rec`) trains from scratch with `runtime.num_workers` = 1,
   then 2, each worker on `runtime.threads_per_worker` = --threads torch threads, pretraining only
   (`train.finetune_epochs = 0`), evaluated once at the end of pretraining, no checkpoint before the final one.
   Sequences/s is the stage's own `sequences_per_s` in metrics.json: the sequences of its training steps over
   the seconds of those steps (streaming each batch, masking, forward, backward, the ZeRO step with its
   all-reduce), so worker start, DeepSpeed set-up, evaluation and checkpoints stay out. Every step is a full
   global batch (drop_last); pretraining sequences are windows of up to model.max_len items.
3. RecBole's BERT4Rec (`bench/recbole/throughput.py` in `.venv-recbole`, one process, --threads torch threads)
   trains on the same ingest through its own Trainer: warm-up batches, then a fixed number of timed batches
   (loader with its masking, forward, backward, step); sequences are its every-prefix training examples,
   counted per batch.

Written to bench/results/train_throughput.json (train_throughput-quick.json): machine, every setting, each
side's sequences/s with the raw figures, and the ratios Q-BERT 1 worker / RecBole and Q-BERT 2 workers / 1.
--quick: 2 pretraining epochs per worker count and 30 timed RecBole batches; it checks the bench end to end,
its figures are noisy.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH, REPO, machine, write_result  # first: the environment Ray reads
from quality import CONFIG, RECBOLE_PYTHON

import ray

from qbr_dist import pipeline
from qbr_dist.config import Config, load_config

WORK = Path("bench") / ".work" / "train_throughput"  # relative to the repository root, where this runs
RECBOLE_THROUGHPUT = BENCH / "recbole" / "throughput.py"
BASE = [f"run.root={WORK}", f"shards.root={WORK / 'shards'}", "quant.input=text_emb"]  # both stage sets
WORKERS = (1, 2)
FULL = {"epochs": 8, "recbole_warmup": 10, "recbole_batches": 300}
QUICK = {"epochs": 2, "recbole_warmup": 3, "recbole_batches": 30}

NOTES = [
    ("Q-BERT4Rec timed: the training steps of the stage (metrics.json train_s, train_sequences): streaming each "
     "batch from the materialized Ray dataset, masking, forward, backward and the ZeRO optimizer step (with the "
     "gradient all-reduce for 2 workers); worker start, DeepSpeed set-up, evaluation and checkpoints left out."),
    ("RecBole BERT4Rec timed: a fixed number of batches of its own training loop after warm-up batches (loader "
     "with masking, forward, backward, Adam step); no evaluation, no checkpoint."),
    ("Sequences: Q-BERT pretraining windows (model.max_len items, one every train.window_stride) and RecBole's "
     "every-prefix examples (newest MAX_ITEM_LIST_LENGTH items), both padded to the same length and masked at "
     "the same ratio with a cross-entropy over the whole catalog; Q-BERT also masks the last item of a "
     "train.pretrain_last_item_prob share of windows. Q-BERT items are code embeddings plus an ID vector "
     "(model.tokens), RecBole's an ID vector."),
    ("Threads: each Q-BERT worker and the RecBole process use the same torch thread count; the two sides run "
     "one after the other on the same machine, Ray shut down before RecBole starts. loadavg_1m_before records "
     "other load at the start of each measurement."),
]


# ---------------------------------------------------------------- Q-BERT4Rec on the project's runtime

def tokenizer_stages() -> dict[str, Path]:
    cfg = load_config(CONFIG, BASE + ["run.name=ml100k"])
    print(f"tokenizer stages under {WORK / cfg.run.name} (reused when current)", flush=True)
    return pipeline.tokenize(cfg, pipeline.run_dir(cfg))


def timed_overrides(workers: int | str, threads: int | str, epochs: int | str) -> list[str]:
    return BASE + ["run.name=timed", f"runtime.num_workers={workers}", f"runtime.threads_per_worker={threads}",
                   "runtime.checkpoint_every=1000000", f"train.pretrain_epochs={epochs}", "train.finetune_epochs=0",
                   f"train.eval_every={epochs}"]


def timed_config(workers: int, threads: int, epochs: int) -> Config:
    return load_config(CONFIG, timed_overrides(workers, threads, epochs))


def qbert_throughput(tokenizer: dict[str, Path], workers: int, threads: int, epochs: int) -> dict:
    """One fresh `qbert4rec` stage (its folder removed before and after: the stage key ignores the worker
    count, so a finished one would be reused) and the training figures of its metrics.json."""
    cfg = timed_config(workers, threads, epochs)
    root = pipeline.run_dir(cfg)
    shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    stage = pipeline.bert4rec(cfg, root, tokenizer["ingest"], quantize_dir=tokenizer["quantize"],
                              codes_dir=tokenizer.get("retokenize", tokenizer["quantize"]))
    metrics = pipeline.read_metrics(stage)
    shutil.rmtree(root)
    if metrics["epochs"] != epochs:
        raise RuntimeError(f"qbert4rec trained {metrics['epochs']} epochs, not {epochs}")
    print(f"qbert4rec, {workers} worker(s): {metrics['train_sequences']} sequences in {metrics['train_s']:.1f} s, "
          f"{metrics['sequences_per_s']:.0f} sequences/s", flush=True)
    return {"workers": workers, "threads_per_worker": threads, "batch_size": cfg.train.batch_size,
            "micro_batch_per_worker": cfg.train.batch_size // workers, "loadavg_1m_before": load,
            **{k: metrics[k] for k in ("epochs", "steps", "train_sequences", "train_s", "sequences_per_s",
                                       "train_wall_s")}}


# ---------------------------------------------------------------- RecBole's BERT4Rec

def recbole_throughput(cfg: Config, ingest: Path, threads: int, mode: dict, work: Path) -> dict:
    if not RECBOLE_PYTHON.is_file():
        raise SystemExit(f"{RECBOLE_PYTHON} not found: `make bench-throughput` sets up .venv-recbole first")
    out = work / "recbole.json"
    command = [str(RECBOLE_PYTHON), str(RECBOLE_THROUGHPUT), "--ingest", str(ingest), "--work", str(work / "recbole"),
               "--out", str(out), "--hidden", str(cfg.model.hidden), "--layers", str(cfg.model.layers),
               "--heads", str(cfg.model.heads), "--max-len", str(cfg.model.max_len),
               "--dropout", str(cfg.model.dropout), "--mask-ratio", str(cfg.train.mask_ratio),
               "--batch-size", str(cfg.train.batch_size), "--lr", str(cfg.train.lr), "--threads", str(threads),
               "--seed", str(cfg.run.seed), "--warmup-batches", str(mode["recbole_warmup"]),
               "--batches", str(mode["recbole_batches"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": ""}
    print("recbole:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return json.loads(out.read_text())


# ---------------------------------------------------------------- output

def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("deepspeed", "ray")}


def settings(cfg: Config) -> dict:
    return {"model": {k: getattr(cfg.model, k) for k in ("tokens", "hidden", "layers", "heads", "max_len", "dropout")}
            | {"inner_size": 4 * cfg.model.hidden},
            "train": {k: getattr(cfg.train, k) for k in ("batch_size", "lr", "mask_ratio", "pretrain_last_item_prob",
                                                          "window_stride", "mask_weights")},
            "runtime": {k: getattr(cfg.runtime, k) for k in ("zero_stage", "precision", "grad_clip",
                                                              "cpus_per_worker")},
            "quant": {k: getattr(cfg.quant, k) for k in ("input", "levels", "codebook_size")}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each Q-BERT worker and of RecBole")
    parser.add_argument("--out", type=Path, help="default bench/results/train_throughput.json (-quick.json)")
    args = parser.parse_args(argv)
    out_path = args.out.resolve() if args.out else None  # None: bench/results/train_throughput(-quick).json
    mode = QUICK if args.quick else FULL
    os.chdir(REPO)  # the config's relative paths (data cache, run root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()

    tokenizer = tokenizer_stages()
    qbert = {f"workers_{n}": qbert_throughput(tokenizer, n, args.threads, mode["epochs"]) for n in WORKERS}
    ray.shutdown()  # nothing of Ray's left running while RecBole is timed
    cfg = timed_config(1, args.threads, mode["epochs"])
    recbole = recbole_throughput(cfg, tokenizer["ingest"].resolve(), args.threads, mode, REPO / WORK)
    result = {
        "quick": args.quick,
        "machine": machine(**versions(), recbole_env={k: recbole[k] for k in ("recbole", "torch", "python")}),
        "dataset": cfg.data.dataset, "ingest": str(tokenizer["ingest"]), "threads": args.threads,
        "sequences_per_s": {"qbert4rec_1_worker": qbert["workers_1"]["sequences_per_s"],
                            "qbert4rec_2_workers": qbert["workers_2"]["sequences_per_s"],
                            "recbole_bert4rec": recbole["sequences_per_s"]},
        "ratios": {"qbert4rec_1_worker_over_recbole": round(qbert["workers_1"]["sequences_per_s"]
                                                            / recbole["sequences_per_s"], 3),
                   "qbert4rec_2_workers_over_1_worker": round(qbert["workers_2"]["sequences_per_s"]
                                                              / qbert["workers_1"]["sequences_per_s"], 3)},
        "qbert4rec": {"config": str(CONFIG.relative_to(REPO)),
                      "overrides": timed_overrides("{workers}", args.threads, "{epochs}"),
                      "pretrain_epochs": mode["epochs"], **settings(cfg), **qbert},
        "recbole_bert4rec": {k: v for k, v in recbole.items() if k not in ("recbole", "torch", "python")},
        "notes": NOTES, "wall_s": round(time.perf_counter() - started, 1),
    }
    out_path = write_result(result, "train_throughput", quick=args.quick, out=out_path)
    print(json.dumps(result["sequences_per_s"]), json.dumps(result["ratios"]))
    print(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
