"""How well each trained model ranks a user's items at the end of the sequence, one offset at a time:
a check that the validation target behaves like the test target, not like a training target.

    python bench/target_offsets.py [--quick] [RUN_DIR ...]

For the warm test users (with more than 4 items) of each finished `qbr run` directory (default
`runs/ml100k`, what `make demo` writes), with its exported bert4rec and qbert4rec scored on the
driver by the project's metric code:

- "next item": the item at offset -k predicted from every item before it: k = 1 is the test
  target, k = 2 the validation target, k = 3 and 4 are training targets (the newest items of the
  training part);
- "from the validation input": the validation target (k = 2) and the test target (k = 1), both
  predicted from the validation input (everything before the validation target), so only the
  target differs;
- each of the two targets from its own input changed: without its 3 oldest items, with all but its
  newest 2 items shuffled, or cut to its newest 5 items. A model that ranks from a memorised user
  context, not from what the newest items say, loses when the context changes.

A model that never saw the validation target ranks it like the test target from the same input
(up to the one step the test target lies further ahead); one that ranks it like its training
targets has learned from it. --quick scores the first 200 users of each run. Writes
bench/results/target_offsets.json (target_offsets-quick.json).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from common import model_ranks, score_runs

from qbr_dist import pipeline
from qbr_dist.seqrec.metrics import metric_means, metric_sums
from qbr_dist.seqrec.trained import load_trained

STAGES = ("bert4rec", "qbert4rec")
KEPT = ("HR@10", "NDCG@10")
OFFSETS = (1, 2, 3, 4)
SAME_INPUT_TEST = "from the validation input, test target"
CHANGED_INPUTS = {
    "without its 3 oldest items": lambda history, rng: history[3:],
    "all but its newest 2 items shuffled": lambda history, rng: np.concatenate([rng.permutation(history[:-2]),
                                                                                history[-2:]]),
    "only its newest 5 items": lambda history, rng: history[-5:],
}


def example_sets(sequences: list[np.ndarray]) -> dict[str, list[tuple]]:
    """(history, target) examples of each kind, over the same users; the validation target from the
    validation input is offset -2's set, so it is not listed again. Shuffles are seeded: reruns agree."""
    sets = {f"next item, offset -{k}": [(s[:-k], int(s[-k])) for s in sequences] for k in OFFSETS}
    sets[SAME_INPUT_TEST] = [(s[:-2], int(s[-1])) for s in sequences]
    rng = np.random.default_rng(0)
    for target, k in (("validation", 2), ("test", 1)):
        for change, changed in CHANGED_INPUTS.items():
            sets[f"{target} target, own input {change}"] = [(changed(s[:-k], rng), int(s[-k])) for s in sequences]
    return sets


def offsets_of_run(run: Path, limit: int | None, chunk_size: int) -> dict:
    ingest = run / "ingest"
    warm = ~pipeline.load_cold_targets(ingest)
    sequences = [np.asarray(s) for s, keep in zip(pipeline.load_sequences(ingest), warm)
                 if keep and len(s) > max(OFFSETS)][:limit]
    out = {"users": len(sequences), "models": {}}
    sets = example_sets(sequences)  # built once: both models rank the same (seeded) changed inputs
    for stage in STAGES:
        if not (run / stage / pipeline.METRICS).is_file():
            continue
        model, _ = load_trained(run / stage, ingest / pipeline.COLD)
        rows = {name: {k: v for k, v in metric_means(metric_sums(model_ranks(model, examples, chunk_size)),
                                                     len(examples)).items() if k in KEPT}
                for name, examples in sets.items()}
        test_row = rows.pop(SAME_INPUT_TEST)
        rows |= {"from the validation input, validation target": rows["next item, offset -2"],
                 SAME_INPUT_TEST: test_row}
        out["models"][stage] = rows
    return out


def main(argv: list[str]) -> int:
    return score_runs(argv, description=__doc__.splitlines()[0], result="target_offsets", score_run=offsets_of_run,
                      describe=lambda rows: "  ".join(f"{name}: {row['NDCG@10']:.4f}" for name, row in rows.items()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
