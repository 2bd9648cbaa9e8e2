"""What every benchmark script does alike. Import it before Ray: it sets the environment the Makefile
sets (no usage stats, no hub downloads) and the one `qbr run` gives a Ray it starts (no token auth, one
parquet footer reader), so direct runs behave as `make bench-*` runs and their Ray as the project's."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

for _name, _value in (("RAY_USAGE_STATS_ENABLED", "0"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

from qbr_dist.train.runtime import use_embedded_environment  # noqa: E402 (it imports Ray: after the settings)

use_embedded_environment()

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"


def machine(**extra) -> dict:
    """Where a figure was measured: date, CPUs, memory and GPU in words, platform, Python and torch."""
    import torch

    from qbr_dist.report import provenance

    return {"provenance": provenance(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, **extra}


def trained(stage_dir: Path) -> dict:
    """When a finished stage finished and the commit its run started from, with `dirty` where the manifest
    says whether tracked files differed from it (a reused stage keeps its first run's)."""
    from qbr_dist.artifacts import read_manifest

    manifest = read_manifest(stage_dir)
    version = manifest["code_version"]
    recorded = {"dirty": version["dirty"]} if "dirty" in version else {}
    return {"finished_at": manifest["finished_at"], "commit": version.get("git"), **recorded}


def model_ranks(model, examples: list[tuple], chunk_size: int):
    """1-based rank of each (history, target) example's target among all items, scored on the driver by an
    exported model (`qbr_dist.seqrec.trained.load_trained`) with the project's metric code."""
    import numpy as np
    import torch

    from qbr_dist.seqrec.examples import left_pad
    from qbr_dist.seqrec.metrics import target_ranks

    length = model.bert.config.max_position_embeddings
    inputs = np.stack([left_pad(np.append(history[-(length - 1):], model.mask_token), length)
                       for history, _ in examples])
    with torch.no_grad():
        hidden = model.encode(torch.from_numpy(inputs))[:, -1]
        return target_ranks(lambda start, end: model.score_items(hidden, start, end),
                            torch.tensor([target for _, target in examples]), first_item=1,
                            end_item=model.num_items + 1, chunk_size=chunk_size)


def score_runs(argv: list[str], *, description: str, result: str, score_run, describe) -> int:
    """The command line of a script that scores the exported models of finished runs:
    `[--quick] [--chunk-size N] [RUN_DIR ...]` (default runs/ml100k, what `make demo` writes).
    `score_run(run, limit, chunk_size)` gives a run's entry, with a "models" dict; `describe(model_entry)`
    its printed line per model. Writes results/<result>.json (<result>-quick.json)."""
    import argparse

    import torch

    from qbr_dist import pipeline

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="*", type=Path, default=[REPO / "runs" / "ml100k"])
    parser.add_argument("--quick", action="store_true", help="the first 200 users of each run")
    parser.add_argument("--chunk-size", type=int, default=4096)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {"quick": args.quick, "runs": {}, "machine": machine()}
    for run in args.runs:
        if not (run / "ingest" / pipeline.SEQUENCES).is_file():
            raise SystemExit(f"{run}: not a finished qbr run directory (no ingest/{pipeline.SEQUENCES})")
        out["runs"][run.name] = score_run(run, 200 if args.quick else None, args.chunk_size)
        for stage, entry in out["runs"][run.name]["models"].items():
            print(run.name, stage, describe(entry), flush=True)
    print(write_result(out, result, quick=args.quick))
    return 0


def result_path(name: str, *, quick: bool = False) -> Path:
    """bench/results/<name>.json, <name>-quick.json for a quick run."""
    return RESULTS / f"{name}{'-quick' if quick else ''}.json"


def write_result(result: dict, name: str, *, quick: bool = False, out: Path | None = None) -> Path:
    """Write `result` to `out`, or to its `result_path`; returns where."""
    path = out or result_path(name, quick=quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
