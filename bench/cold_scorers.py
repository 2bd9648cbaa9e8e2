"""Two ways to score the items no training saw, on the same weights: each finished run's qbert4rec (hybrid)
ranks its cold test targets with the cold items' ID part from their code prefix (the mean ID vector and bias
of the trained items sharing their longest prefix) and with their codes alone (`model.cold_codes_only`),
next to content k-NN's figures on the same targets.

    python bench/cold_scorers.py [--quick] [RUN_DIR ...]

Each RUN_DIR is a finished `qbr run` directory with a cold-item split (default `runs/ml100k`, what `make
demo` writes); its exported weights are loaded and the cold test users scored on the driver with the
project's metric code, so the stage's own scorer (`stage_scorer`) must reproduce its metrics.json (both are
written out). --quick scores the first 200 cold test users. Writes bench/results/cold_scorers.json
(cold_scorers-quick.json).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import model_ranks, score_runs

from qbr_dist import pipeline
from qbr_dist.seqrec.examples import evaluation_examples
from qbr_dist.seqrec.metrics import metric_means, metric_sums
from qbr_dist.seqrec.trained import MODEL_SPEC, load_trained

SCORERS = {"code prefix": False, "codes alone": True}  # name: cold_codes_only
KEPT = ("HR@10", "HR@20", "NDCG@10", "MRR")


def score_cold(run: Path, limit: int | None, chunk_size: int) -> dict:
    ingest, stage = run / "ingest", run / "qbert4rec"
    examples = evaluation_examples(pipeline.load_sequences(ingest), pipeline.load_cold_targets(ingest),
                                   "test_cold")[:limit]
    if not examples:
        raise SystemExit(f"{run}: no cold test targets (a run with data.cold_fraction > 0 has them)")
    models = {}
    for name, codes_only in SCORERS.items():
        model, spec = load_trained(stage, ingest / pipeline.COLD, cold_codes_only=codes_only)
        ranks = model_ranks(model, examples, chunk_size)
        models[name] = {k: v for k, v in metric_means(metric_sums(ranks), len(ranks)).items() if k in KEPT}
        models[name]["hits@10"] = int((ranks <= 10).sum())
    own = json.loads((stage / MODEL_SPEC).read_text())["model"].get("cold_codes_only", False)
    knn_cold, stage_cold = (pipeline.read_metrics(folder)["test_cold"] for folder in (run / "content-knn", stage))
    return {"cold_test_users": len(examples), "id_dropout": spec["model"].get("id_dropout", 0.0),
            "models": models | {"content-knn": {k: knn_cold[k] for k in KEPT}},
            "qbert4rec_metrics_json": {k: stage_cold[k] for k in KEPT},
            "stage_scorer": next(name for name, flag in SCORERS.items() if flag == own)}


def main(argv: list[str]) -> int:
    return score_runs(argv, description=__doc__.splitlines()[0], result="cold_scorers", score_run=score_cold,
                      describe=lambda entry: "  ".join(f"{k} {entry[k]:.4f}" for k in KEPT))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
