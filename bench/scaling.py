"""Cost as the catalog grows (10k, 100k, 1M, 5M items): full-ranking scoring time per 1,000 users,
retokenization items/s and peak RSS, with the fitted exponent of each cost (slope of log cost against log N).

For each catalog size N:

1. Scoring. Random semantic IDs for N items (3 levels x 256 codes, plus the disambiguation suffix that
   `assign_suffixes` gives colliding tuples) go into the project's Q-BERT4Rec (`build_model`) at the demo's
   width (launch/configs/ml100k.toml [model]: hybrid tokens, so the N-row ID table too). Its weights stay
   at their random initialisation on purpose: the time does not depend on them. In a fresh process (so
   peaks do not carry over), with all of the machine's torch threads, batches of `eval.batch_size` users
   with random histories of `max_len` items (the newest position masked, as `qbr recommend` does) are
   encoded, scored against the whole catalog `eval.chunk_size` items at a time (`score_items`, which
   composes each chunk's item vectors from the code tables, as evaluation does) and reduced to a running
   top 10. Reported: seconds per 1,000 users (encoding and ranking apart too) and that process's peak RSS.
   Then the same again (another fresh process) with a cold-item split: a random `COLD_FRACTION` of the
   items (the demo config's `data.cold_fraction`) is left out of training, so their ID part comes from
   the mean of the trained items sharing their longest code prefix (`PrefixBackoff`), as a cold-split
   evaluation scores them; the ratio of the two times is that back-off's cost.
2. Retokenization: bench/retokenize.py's `run` (random 384-d vectors, a 3 x 256 residual codebook,
   `qbr retokenize`'s job on an embedded Ray with 2 actors in a fresh process): items/s, the driver's
   peak RSS and the largest Ray worker RSS.

    python bench/scaling.py [--quick] [--sizes N,N,...] [--users U]

--quick: 10k, 30k and 100k items. Writes bench/results/scaling.json and the log-log plot scaling.png
(scaling-quick.json, scaling-quick.png); scratch files under bench/.work/scaling/, removed afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import BENCH, REPO, RESULTS, machine, write_result  # first: the environment Ray reads
import retokenize as retokenize_bench  # bench/retokenize.py
from qbr_dist.config import EvalConfig, load_config
from qbr_dist.quant.semantic_ids import assign_suffixes
from qbr_dist.seqrec.bert4rec import BERT4Rec
from qbr_dist.seqrec.trained import build_model

WORK = BENCH / ".work" / "scaling"
CONFIG = REPO / "launch" / "configs" / "ml100k.toml"
LEVELS, CODES, TOP_K, USERS, ACTORS = 3, 256, 10, 1024, 2
COLD_FRACTION = 0.1
SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000, 5_000_000), (10_000, 30_000, 100_000)
COSTS = {  # fitted cost -> (part of a size's run, its key there, unit)
    "score_seconds_per_1k_users": ("scoring", "seconds_per_1k_users", "s"),
    "score_cold_split_seconds_per_1k_users": ("scoring_cold_split", "seconds_per_1k_users", "s"),
    "retokenize_seconds": ("retokenize", "seconds", "s"),
    "score_peak_rss_mb": ("scoring", "peak_rss_mb", "MB"),
    "retokenize_driver_peak_rss_mb": ("retokenize", "driver_peak_rss_mb", "MB"),
    "retokenize_worker_peak_rss_mb": ("retokenize", "worker_peak_rss_mb", "MB"),
}


def write_codes(items: int, path: Path, seed: int = 0) -> list[int]:
    """Random codes (row 0 unused, as in a codes.npy) with unique suffixes; returns the code table sizes."""
    base = np.random.default_rng(seed).integers(0, CODES, size=(items, LEVELS))
    suffixes = assign_suffixes(np.arange(items), base)
    np.save(path, np.vstack([np.zeros((1, LEVELS + 1), np.int64), np.column_stack([base, suffixes])]))
    return [CODES] * LEVELS + [int(suffixes.max()) + 1]


def write_cold_mask(items: int, path: Path, seed: int = 0) -> None:
    """A random COLD_FRACTION of items 1..items marked cold (row 0, padding, never), as a cold split's mask."""
    cold = np.random.default_rng(seed).random(items + 1) < COLD_FRACTION
    cold[0] = False
    np.save(path, cold)


def model_spec(items: int, codes_file: Path, code_sizes: list[int], cold_file: Path | None) -> dict:
    return {"model": load_config(CONFIG).to_dict()["model"], "num_items": items, "code_sizes": code_sizes,
            "codes_file": str(codes_file), "cold_file": str(cold_file) if cold_file else None}


@torch.no_grad()
def top_items(model: BERT4Rec, hidden: torch.Tensor, chunk: int) -> torch.Tensor:
    """The TOP_K best items (indexes) over the whole catalog for each row, keeping a running top per chunk."""
    values = torch.empty((len(hidden), 0))
    items = torch.empty((len(hidden), 0), dtype=torch.long)
    for start in range(1, model.num_items + 1, chunk):
        end = min(start + chunk, model.num_items + 1)
        best = model.score_items(hidden, start, end).topk(min(TOP_K, end - start), dim=1)
        values, items = torch.cat([values, best.values], 1), torch.cat([items, best.indices + start], 1)
        values, kept = values.topk(min(TOP_K, values.shape[1]), dim=1)
        items = items.gather(1, kept)
    return items


def histories(model: BERT4Rec, users: int, generator: torch.Generator) -> torch.Tensor:
    """Random full-length histories with the newest position masked, as `score_next` builds one."""
    length = model.bert.config.max_position_embeddings
    seq = torch.randint(1, model.num_items + 1, (users, length), generator=generator)
    seq[:, -1] = model.mask_token
    return seq


@torch.no_grad()
def time_scoring(model: BERT4Rec, users: int, cfg: EvalConfig) -> dict:
    """Seconds to encode and to rank `users` users, `cfg.batch_size` at a time, after one untimed warm-up batch."""
    generator = torch.Generator().manual_seed(0)
    top_items(model, model.encode(histories(model, 8, generator))[:, -1], cfg.chunk_size)
    encode_s = rank_s = 0.0
    for first in range(0, users, cfg.batch_size):
        seq = histories(model, min(cfg.batch_size, users - first), generator)
        started = time.perf_counter()
        hidden = model.encode(seq)[:, -1]
        encoded = time.perf_counter()
        top_items(model, hidden, cfg.chunk_size)
        encode_s, rank_s = encode_s + encoded - started, rank_s + time.perf_counter() - encoded
    per_1k = 1000 / users
    return {"users": users, "batch_size": cfg.batch_size, "chunk_size": cfg.chunk_size,
            "seconds_per_1k_users": round((encode_s + rank_s) * per_1k, 4),
            "encode_seconds_per_1k_users": round(encode_s * per_1k, 4),
            "rank_seconds_per_1k_users": round(rank_s * per_1k, 4)}


def score_one(items: int, codes_file: Path, code_sizes: list[int], users: int, cold_file: Path | None) -> dict:
    """In its own process: build the model (with `cold_file`'s items untrained), time scoring, report this
    process's peak RSS."""
    import psutil

    torch.set_num_threads(os.cpu_count())
    before_mb = round(psutil.Process().memory_info().rss / 2**20, 1)
    started = time.perf_counter()
    model = build_model(model_spec(items, codes_file, code_sizes, cold_file)).eval()
    built_s = time.perf_counter() - started
    return time_scoring(model, users, EvalConfig()) | {
        "build_seconds": round(built_s, 2), "threads": torch.get_num_threads(),
        "rss_before_model_mb": before_mb, "peak_rss_mb": retokenize_bench.peak_rss_mb()}


def run_scoring(items: int, users: int) -> tuple[dict, dict]:
    """Random codes and cold mask written here; the model built and timed in a fresh process, without and
    with the cold split."""
    codes_file, cold_file = WORK / f"codes-{items}.npy", WORK / f"cold-{items}.npy"
    code_sizes = write_codes(items, codes_file)
    write_cold_mask(items, cold_file)
    timed = []
    for cold in ([], ["--cold", str(cold_file)]):
        done = subprocess.run([sys.executable, __file__, "--score-one", str(items), "--codes", str(codes_file),
                               "--code-sizes", ",".join(map(str, code_sizes)), "--users", str(users), *cold],
                              check=True, capture_output=True, text=True)
        timed.append(json.loads(done.stdout.strip().splitlines()[-1]) | {"code_sizes": code_sizes})
    codes_file.unlink()
    cold_file.unlink()
    return timed[0], timed[1] | {"cold_fraction": COLD_FRACTION,
                                 "ratio_to_no_cold_split": round(timed[1]["seconds_per_1k_users"]
                                                                 / timed[0]["seconds_per_1k_users"], 3)}


def run_size(items: int, users: int) -> dict:
    scoring, cold_split = run_scoring(items, users)
    print(f"{items} items: scoring {scoring['seconds_per_1k_users']} s per 1k users, "
          f"{cold_split['seconds_per_1k_users']} s with a cold split", file=sys.stderr, flush=True)
    retokenized = retokenize_bench.run(items, ACTORS, work=WORK)
    print(f"{items} items: retokenize {retokenized['items_per_s']} items/s", file=sys.stderr, flush=True)
    return {"scoring": scoring, "scoring_cold_split": cold_split, "retokenize": retokenized}


def cost(run: dict, name: str) -> float:
    """One fitted cost of one catalog size (see COSTS)."""
    part, key, _ = COSTS[name]
    return run[part][key]


def summary(runs: dict) -> dict:
    """The headline figures per catalog size: each fitted cost and the retokenization items/s."""
    return {n: {name: cost(run, name) for name in COSTS} | {"retokenize_items_per_s": run["retokenize"]["items_per_s"]}
            for n, run in runs.items()}


def exponents(runs: dict) -> dict:
    """Slope of log(cost) against log(N), least squares (numpy polyfit), per cost."""
    sizes = np.log([int(n) for n in runs])
    return {name: round(float(np.polyfit(sizes, np.log([cost(r, name) for r in runs.values()]), 1)[0]), 3)
            for name in COSTS}


def plot(runs: dict, fitted: dict, path: Path) -> None:
    """Log-log plot: seconds on the left, peak RSS on the right, each line labelled with its exponent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in runs]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (_, _, unit) in COSTS.items():
        axis = axes[0 if unit == "s" else 1]
        axis.plot(sizes, [cost(r, name) for r in runs.values()], marker="o", label=f"{name} (N^{fitted[name]:.2f})")
    for axis, label in zip(axes, ("seconds", "peak RSS (MB)")):
        axis.set(xscale="log", yscale="log", xlabel="catalog items N", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("qbr-dist cost against catalog size")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


NOTES = {
    "scoring": "Random weights (the time does not depend on them). Each user batch composes the item vectors "
               "of every chunk again from the code tables and the ID table, as evaluation does, so the ranking "
               "part grows with N; at small N the transformer encoding of the users' histories, which does not "
               "depend on N, is a large share and the exponent is below 1. Limited by the machine's CPU "
               "threads and memory bandwidth; peak_rss_mb is the scoring process's own peak (model, codes, "
               "one batch's score chunk), rss_before_model_mb what it held after its imports (torch, transformers, "
               "Ray), before building the model.",
    "scoring_cold_split": "The same scoring with a random 10 % of the items untrained (a cold-item split): each "
                          "untrained item takes the mean ID vector and bias of the trained items sharing its "
                          "longest code prefix, the means computed once from the ID table (a block of members at a "
                          "time) and kept while the model stays in evaluation. ratio_to_no_cold_split is that "
                          "back-off's cost; peak_rss_mb this process's own peak.",
    "retokenize": "bench/retokenize.py's run: items_per_s and seconds are the job end to end (actor start, "
                  "quantizing, the driver's suffix pass), without Ray's own start; at small N the fixed start "
                  "costs dominate, so items/s rises with N and the seconds' exponent is below 1. "
                  "driver_peak_rss_mb is the retokenize process's peak, worker_peak_rss_mb the largest Ray "
                  "worker (sampled every 0.5 s, so short peaks can be missed). The vectors come in parquet files of "
                  "100k rows (retokenize.py's ROWS_PER_FILE): below 100k items one file, so what a worker reads "
                  "at once, grows with N; above it the file size stays the same.",
    "exponents": "Least-squares slope of log(cost) against log(N) over the measured sizes: 1 is linear in "
                 "the catalog, 0 flat. With few sizes, or sizes where fixed costs dominate, it is a rough "
                 "figure.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k, 30k and 100k items instead of 10k to 5M")
    parser.add_argument("--sizes", help="comma-separated catalog sizes instead of the defaults")
    parser.add_argument("--users", type=int, default=USERS, help="users timed per catalog size")
    parser.add_argument("--score-one", type=int, help=argparse.SUPPRESS)  # internal: time scoring of N items
    parser.add_argument("--codes", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code-sizes", help=argparse.SUPPRESS)
    parser.add_argument("--cold", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score_one:
        sizes = [int(s) for s in args.code_sizes.split(",")]
        print(json.dumps(score_one(args.score_one, args.codes, sizes, args.users, args.cold)))
        return
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else QUICK_SIZES if args.quick else SIZES
    runs = {str(n): run_size(n, args.users) for n in sizes}
    shutil.rmtree(WORK)
    fitted = exponents(runs)
    name = "scaling-quick" if args.quick else "scaling"
    result = {
        "benchmark": "scaling", "quick": args.quick, "machine": machine(),
        "setup": {"model": load_config(CONFIG).to_dict()["model"], "levels": LEVELS, "codebook_size": CODES,
                  "top_k": TOP_K, "users": args.users, "cold_fraction": COLD_FRACTION, "retokenize_actors": ACTORS,
                  "retokenize_dim": retokenize_bench.DIM},
        "summary": summary(runs), "exponents": fitted, "runs": runs, "notes": NOTES,
    }
    write_result(result, name)
    plot(runs, fitted, RESULTS / f"{name}.png")
    print(json.dumps({"summary": result["summary"], "exponents": fitted}, indent=2))


if __name__ == "__main__":
    main()
