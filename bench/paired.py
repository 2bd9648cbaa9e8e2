"""How much of a test comparison the finite set of test users leaves open: a paired bootstrap over users of
qbert4rec against bert4rec (warm test NDCG@10 as a ratio of means, the Q-BERT issue's 1.10x criterion) and
against content-knn (cold HR@10 as a difference), over the seeds of one setting.

    python bench/paired.py --name NAME [--quick] [--resamples N] RUN_DIR [RUN_DIR ...]

The RUN_DIRs are finished `qbr run` directories of one setting, one per seed, over the same users (the same
ingest stage: checked). Their exported weights rank the test targets on the driver with the project's metric
code, and each model's mean must equal its stage's metrics.json (checked). Each resample draws the test users
once, with replacement, and uses that draw in every run: the interval is about the users, with these seeds
fixed (the seeds' own spread is in the per-seed figures). Adds or replaces group NAME in
bench/results/paired.json (paired-quick.json with --quick, which takes the first 200 users of each split).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from common import machine, model_ranks, result_path, write_result

from qbr_dist import artifacts, pipeline
from qbr_dist.seqrec.content_knn import content_knn_scorer, text_matrix
from qbr_dist.seqrec.examples import evaluation_examples
from qbr_dist.seqrec.metrics import paired_bootstrap, target_ranks, user_metrics
from qbr_dist.seqrec.trained import load_trained

CRITERION = 1.10  # qbert4rec's mean test NDCG@10 against bert4rec's, in the Q-BERT issue
COMPARED = {"test": ("NDCG@10", ("qbert4rec", "bert4rec")), "test_cold": ("HR@10", ("qbert4rec", "content-knn"))}
QUICK_USERS = 200
MATCH = 1e-9  # how far a mean here may be from the stage's metrics.json (summation order only)


def user_values(run: Path, split: str, limit: int | None, chunk_size: int) -> dict[str, np.ndarray]:
    """The compared metric of `split` per user, for each model of COMPARED[split], in the evaluation's user order."""
    ingest = run / "ingest"
    sequences = pipeline.load_sequences(ingest)
    examples = evaluation_examples(sequences, pipeline.load_cold_targets(ingest), split)[:limit]
    metric, models = COMPARED[split]
    values = {}
    for model in models:
        ranks = (_content_knn_ranks(run, examples, chunk_size) if model == "content-knn" else
                 model_ranks(load_trained(run / model, ingest / pipeline.COLD)[0], examples, chunk_size))
        values[model] = user_metrics(ranks)[metric].numpy()
        recorded = pipeline.read_metrics(run / model)[split][metric]
        if limit is None and abs(values[model].mean() - recorded) > MATCH:
            raise SystemExit(f"{run / model}: {split} {metric} {values[model].mean():.6f} here, {recorded:.6f} in "
                             f"{pipeline.METRICS}: the exported weights are not what the stage evaluated")
    return values


def _content_knn_ranks(run: Path, examples: list[tuple], chunk_size: int) -> torch.Tensor:
    item_ids = pipeline.load_item_ids(run / "ingest")
    scorer = content_knn_scorer(torch.from_numpy(text_matrix(pipeline.feature_files(run / "encode"), item_ids)))
    return target_ranks(scorer([history for history, _ in examples]), torch.tensor([t for _, t in examples]),
                        first_item=1, end_item=len(item_ids) + 1, chunk_size=chunk_size)


def compare(runs: list[Path], split: str, limit: int | None, chunk_size: int, resamples: int) -> dict:
    metric, (ours, theirs) = COMPARED[split]
    per_run = {run.name: user_values(run, split, limit, chunk_size) for run in runs}
    first, second = (np.stack([values[model] for values in per_run.values()]) for model in (ours, theirs))
    ratio = split == "test"
    statistic = (lambda a, b: a / b) if ratio else (lambda a, b: (a - b) / len(runs))
    out = {"metric": metric, "users": first.shape[1],
           "per_run": {name: {model: float(values[model].mean()) for model in (ours, theirs)}
                       for name, values in per_run.items()},
           "statistic": f"{ours} / {theirs}, means over runs" if ratio else f"{ours} - {theirs}, mean over runs"}
    return out | paired_bootstrap(first, second, statistic, resamples=resamples)


def same_users(runs: list[Path]) -> None:
    fingerprints = {run.name: artifacts.manifest_fingerprint(run / "ingest") for run in runs}
    if len(set(fingerprints.values())) > 1:
        raise SystemExit(f"the runs do not share one ingest stage (their users differ): {fingerprints}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", required=True, help="the group's name in the results file (the setting)")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_USERS} users of each split")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    same_users(args.runs)
    limit = QUICK_USERS if args.quick else None
    group = {"runs": [str(run) for run in args.runs], "resamples": args.resamples,
             "splits": {split: compare(args.runs, split, limit, args.chunk_size, args.resamples)
                        for split in COMPARED if split in pipeline.evaluations(args.runs[0] / "ingest")}}
    for split, entry in group["splits"].items():
        print(f"{args.name} {split}: {entry['statistic']} {entry['metric']} {entry['value']:.4f} "
              f"(95 % interval {entry['ci95'][0]:.4f} to {entry['ci95'][1]:.4f}, {entry['users']} users)", flush=True)
    path = result_path("paired", quick=args.quick)
    result = json.loads(path.read_text()) if path.is_file() else {"criterion_ratio": CRITERION, "groups": {}}
    result["groups"][args.name] = group
    result["machine"] = machine()
    print(write_result(result, "paired", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
