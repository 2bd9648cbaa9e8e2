"""Where the trained models win and lose: test metrics of each finished run's bert4rec and qbert4rec,
sliced by how popular the test target was in training (terciles of its training count).

    python bench/popularity_slices.py [--quick] [RUN_DIR ...]

Each RUN_DIR is a finished `qbr run` directory (default `runs/ml100k`, what `make demo` writes);
its exported weights are loaded and the warm test users scored on the driver with the project's
metric code, so the overall figure must equal the stage's metrics.json (both are written out).
--quick scores the first 200 test users of each run. Writes bench/results/popularity_slices.json
(popularity_slices-quick.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from common import REPO, machine, model_ranks, write_result

from qbr_dist import pipeline
from qbr_dist.seqrec.examples import evaluation_examples
from qbr_dist.seqrec.metrics import metric_means, metric_sums
from qbr_dist.seqrec.popularity import training_counts

STAGES = ("bert4rec", "qbert4rec")
SLICES = ("least popular third", "middle third", "most popular third")
KEPT = ("HR@10", "NDCG@10")


def slice_run(run: Path, limit: int | None, chunk_size: int) -> dict:
    ingest = run / "ingest"
    sequences = pipeline.load_sequences(ingest)
    examples = evaluation_examples(sequences, pipeline.load_cold_targets(ingest), "test")[:limit]
    counts = training_counts(sequences, pipeline.num_items(ingest)).numpy()
    target_counts = counts[[target for _, target in examples]]
    edges = np.quantile(target_counts, [1 / 3, 2 / 3])
    slice_of = np.digitize(target_counts, edges)
    out = {"test_users": len(examples), "tercile_edges_training_count": edges.tolist(), "models": {}}
    for stage in STAGES:
        if not (run / stage / pipeline.METRICS).is_file():
            continue
        ranks = model_ranks(run / stage, ingest, examples, chunk_size)
        entry = {"all": {k: v for k, v in metric_means(metric_sums(ranks), len(ranks)).items() if k in KEPT},
                 "metrics_json": {k: pipeline.read_metrics(run / stage)["test"][k] for k in KEPT}}
        for index, name in enumerate(SLICES):
            picked = torch.from_numpy(slice_of == index)
            means = metric_means(metric_sums(ranks[picked]), int(picked.sum()))
            entry[name] = {"users": int(picked.sum()), **{k: means[k] for k in KEPT}}
        out["models"][stage] = entry
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, default=[REPO / "runs" / "ml100k"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chunk-size", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"quick": args.quick, "runs": {}, "machine": machine()}
    for run in args.runs:
        if not (run / "ingest" / pipeline.SEQUENCES).is_file():
            raise SystemExit(f"{run}: not a finished qbr run directory (no ingest/{pipeline.SEQUENCES})")
        result["runs"][run.name] = slice_run(run, 200 if args.quick else None, args.chunk_size)
        for stage, entry in result["runs"][run.name]["models"].items():
            print(run.name, stage, "  ".join(f"{name}: NDCG@10 {entry[name]['NDCG@10']:.4f}" for name in SLICES),
                  flush=True)
    print(write_result(result, "popularity_slices", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
