"""What every benchmark script does alike. Import it before Ray: it sets the environment the Makefile
sets (no usage stats, no token auth, no hub downloads), so direct runs behave as `make bench-*` runs."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

for _name, _value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"), ("HF_HUB_OFFLINE", "1"),
                      ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

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


def result_path(name: str, *, quick: bool = False) -> Path:
    """bench/results/<name>.json, <name>-quick.json for a quick run."""
    return RESULTS / f"{name}{'-quick' if quick else ''}.json"


def write_result(result: dict, name: str, *, quick: bool = False, out: Path | None = None) -> Path:
    """Write `result` to `out`, or to its `result_path`; returns where."""
    path = out or result_path(name, quick=quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
