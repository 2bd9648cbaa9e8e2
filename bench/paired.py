"""How much of a test comparison the finite set of test users leaves open: a paired bootstrap over users of
qbert4rec against bert4rec (warm test NDCG@10 as a ratio of means, the Q-BERT issue's 1.10x criterion) and
against content-knn (cold HR@10 as a difference), over the seeds of one setting.

    python bench/paired.py --name NAME [--quick] [--resamples N] RUN_DIR [RUN_DIR ...]

The RUN_DIRs are finished `qbr run` directories of one setting, one per seed, over the same users (the same
ingest stage: checked), evaluated on every item (eval.exclude_history off: checked). Their exported weights
rank the test targets on the driver with the project's metric code, and each model's mean must equal its
stage's metrics.json (checked, except with --quick, which takes the first 200 users of each split). Each
resample draws the test users once, with replacement, and uses that draw in every run: the interval is about
the users, with these seeds fixed (the seeds' own spread is in the per-seed figures). Adds or replaces group
NAME in bench/results/paired.json (paired-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import machine, model_ranks, result_path, write_result

from qbr_dist import artifacts, pipeline
from qbr_dist.seqrec.examples import evaluation_examples
from qbr_dist.seqrec.metrics import example_ranks, paired_bootstrap, user_metrics
from qbr_dist.seqrec.trained import load_trained

CRITERION = 1.10  # qbert4rec's mean test NDCG@10 against bert4rec's, in the Q-BERT issue
QUICK_USERS = 200
MATCH = 1e-9  # how far a mean here may be from the stage's metrics.json (summation order only)


@dataclass(frozen=True)
class Comparison:
    metric: str
    ours: str
    theirs: str
    ratio: bool  # the ratio of the two means, else their difference

    @property
    def statistic(self):
        return np.divide if self.ratio else np.subtract

    def describe(self) -> str:
        return f"{self.ours} {'/' if self.ratio else '-'} {self.theirs}, {self.metric} means over the runs"


COMPARED = {"test": Comparison("NDCG@10", "qbert4rec", "bert4rec", ratio=True),
            "test_cold": Comparison("HR@10", "qbert4rec", "content-knn", ratio=False)}


def run_values(run: Path, splits: list[str], limit: int | None, chunk_size: int) -> dict[str, dict[str, np.ndarray]]:
    """{split: {model: the compared metric per user, in the evaluation's user order}}; each model loaded once."""
    ingest = run / "ingest"
    sequences, cold_target = pipeline.load_sequences(ingest), pipeline.load_cold_targets(ingest)
    rankers, values = {}, {}
    for split in splits:
        comparison = COMPARED[split]
        examples = evaluation_examples(sequences, cold_target, split)[:limit]
        values[split] = {}
        for model in (comparison.ours, comparison.theirs):
            if model not in rankers:
                rankers[model] = _ranker(run, model, chunk_size)
            per_user = user_metrics(rankers[model](examples))[comparison.metric].numpy()
            recorded = pipeline.read_metrics(run / model)[split][comparison.metric]
            if limit is None and abs(per_user.mean() - recorded) > MATCH:
                raise SystemExit(f"{run / model}: {split} {comparison.metric} {per_user.mean():.6f} here, "
                                 f"{recorded:.6f} in {pipeline.METRICS}: not what the stage evaluated")
            values[split][model] = per_user
    return values


def _ranker(run: Path, model: str, chunk_size: int):
    """examples -> 1-based target ranks among all items, by a run's trained model or its content k-NN."""
    if model != "content-knn":
        trained = load_trained(run / model, run / "ingest" / pipeline.COLD)[0]
        return lambda examples: model_ranks(trained, examples, chunk_size)
    scorer, items = pipeline.content_knn_model(run / "ingest", run / "encode"), pipeline.num_items(run / "ingest")
    return lambda examples: torch.cat(list(example_ranks(examples, scorer, num_items=items, chunk_size=chunk_size,
                                                         exclude_history=False)))


def check_runs(runs: list[Path]) -> None:
    """One setting's seeds: distinct folders over one ingest stage, every item ranked."""
    if len({run.resolve() for run in runs}) < len(runs):
        raise SystemExit(f"a run is given twice: {[str(run) for run in runs]}")
    fingerprints = {str(run): artifacts.manifest_fingerprint(run / "ingest") for run in runs}
    if len(set(fingerprints.values())) > 1:
        raise SystemExit(f"the runs do not share one ingest stage (their users differ): {fingerprints}")
    for run in runs:
        if json.loads((run / "report.json").read_text())["config"]["eval"]["exclude_history"]:
            raise SystemExit(f"{run}: eval.exclude_history is on; this script ranks every item")


def compare(runs: list[Path], limit: int | None, chunk_size: int, resamples: int) -> dict:
    splits = [split for split in COMPARED if split in pipeline.evaluations(runs[0] / "ingest")]
    per_run = {str(run): run_values(run, splits, limit, chunk_size) for run in runs}
    out = {}
    for split in splits:
        comparison = COMPARED[split]
        first, second = (np.stack([values[split][model] for values in per_run.values()])
                         for model in (comparison.ours, comparison.theirs))
        out[split] = {"statistic": comparison.describe(), "users": first.shape[1],
                      "per_run": {run: {model: float(per_user.mean()) for model, per_user in values[split].items()}
                                  for run, values in per_run.items()},
                      **paired_bootstrap(first, second, comparison.statistic, resamples=resamples)}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", required=True, help="the group's name in the results file (the setting)")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_USERS} users of each split")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    check_runs(args.runs)
    splits = compare(args.runs, QUICK_USERS if args.quick else None, args.chunk_size, args.resamples)
    for split, entry in splits.items():
        print(f"{args.name} {split}: {entry['statistic']} {entry['value']:.4f} (95 % interval "
              f"{entry['ci95'][0]:.4f} to {entry['ci95'][1]:.4f}, {entry['users']} users)", flush=True)
    path = result_path("paired", quick=args.quick)
    result = json.loads(path.read_text()) if path.is_file() else {"criterion_ratio": CRITERION, "groups": {}}
    result["groups"][args.name] = {"runs": [str(run) for run in args.runs], "resamples": args.resamples,
                                   "splits": splits, "machine": machine()}
    print(write_result(result, "paired", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
