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

import sys
from pathlib import Path

import numpy as np
import torch
from common import model_ranks, score_runs

from qbr_dist import pipeline
from qbr_dist.seqrec.examples import evaluation_examples
from qbr_dist.seqrec.metrics import metric_means, metric_sums
from qbr_dist.seqrec.popularity import training_counts
from qbr_dist.seqrec.trained import load_trained

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
        ranks = model_ranks(load_trained(run / stage, ingest / pipeline.COLD)[0], examples, chunk_size)
        stage_test = pipeline.read_metrics(run / stage)["test"]
        entry = {"all": {k: v for k, v in metric_means(metric_sums(ranks), len(ranks)).items() if k in KEPT},
                 "metrics_json": {k: stage_test[k] for k in KEPT}}
        for index, name in enumerate(SLICES):
            picked = torch.from_numpy(slice_of == index)
            means = metric_means(metric_sums(ranks[picked]), int(picked.sum()))
            entry[name] = {"users": int(picked.sum()), **{k: means[k] for k in KEPT}}
        out["models"][stage] = entry
    return out


def main(argv: list[str]) -> int:
    return score_runs(argv, description=__doc__.splitlines()[0], result="popularity_slices", score_run=slice_run,
                      describe=lambda entry: "  ".join(f"{name}: NDCG@10 {entry[name]['NDCG@10']:.4f}"
                                                       for name in SLICES))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
