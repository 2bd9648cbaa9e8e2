"""Publish a finished `qbr run --seeds N` under bench/results/: each seed's validation, test and cold
metrics of the two transformer models, the commit each was trained at and when, and the run's own
mean-and-spread summary (<name>/seeds.json), next to the command that made it.

    python bench/seeds.py --root bench/.work/ablations --name text-codes --out ml100k-text-codes-seeds \\
        --command "qbr run --config launch/configs/ml100k.toml --set quant.input=text_emb --seeds 3"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import machine, trained, write_result  # first: the environment Ray reads

MODELS = ("bert4rec", "qbert4rec")
KEPT = ("valid", "test", "test_cold", "epochs", "steps", "train_wall_s", "best")


def seed_row(run: Path) -> dict:
    """One seed's kept metrics of each model, with when and from which commit it was trained."""
    row = {}
    for model in MODELS:
        metrics = json.loads((run / model / "metrics.json").read_text())
        row[model] = {k: metrics[k] for k in KEPT if k in metrics} | {"trained": trained(run / model)}
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the run root (run.root) of the seeds")
    parser.add_argument("--name", required=True, help="run.name of the `qbr run --seeds` command")
    parser.add_argument("--out", required=True, help="result name: bench/results/<out>.json")
    parser.add_argument("--command", required=True, help="the `qbr run` command that made the runs")
    args = parser.parse_args(argv)
    summary_file = args.root / args.name / "seeds.json"
    if not summary_file.is_file():
        parser.error(f"{summary_file}: no seeds summary; run `qbr run ... --seeds N` with run.name={args.name} first")
    summary = json.loads(summary_file.read_text())
    per_seed = {str(seed): seed_row(args.root / f"{args.name}-seed{seed}") for seed in summary["seeds"]}
    result = {"command": args.command, "per_seed": per_seed, "summary": summary, "machine": machine()}
    print(write_result(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
