"""The ingest stage at scale: seconds and peak memory of `qbr run`'s ingest (read, check, quarantine, sort, split,
cold-item split, write) on random parquet interactions of growing size, against pandas doing the bare minimum of
the same (read the parquet file, sort by user and time, one list of item codes per user) with no check at all.
Each side runs in a fresh process, so its peak resident memory is its own.

    python bench/ingest.py [--rows N ...] [--quick]

Writes bench/results/ingest.json: per size, seconds and peak MB of each, and ours over pandas.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result


def write_interactions(rows: int, path: Path) -> None:
    """Random interactions: 1 user in 20 rows, 1 item in 25, timestamps at random."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    users = pa.array(np.char.add("u", rng.integers(0, max(rows // 20, 1), rows).astype(str)).astype(object))
    items = pa.array(np.char.add("i", rng.integers(0, max(rows // 25, 1), rows).astype(str)).astype(object))
    pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": rng.random(rows) * 1e9}), path)


def ours(path: Path, work: Path) -> int:
    from qbr_dist import pipeline
    from qbr_dist.config import load_config

    cfg = load_config(None, ["data.dataset=files", f"data.interactions='{path}'", f"run.root='{work}'",
                             "run.name=ingest", "run.tokenize=false", "data.cold_fraction=0.1"])
    folder = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    return json.loads((folder / "manifest.json").read_text())["rows"]["interactions"]


def pandas_minimum(path: Path, work: Path) -> int:
    import pandas

    frame = pandas.read_parquet(path)
    frame["item"] = frame["item_id"].astype("category").cat.codes + 1
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    sequences = frame.groupby("user_id", sort=False)["item"].agg(list)
    sequences.to_frame().to_parquet(work / "sequences.parquet")
    return int(sum(map(len, sequences)))


SIDES = {"ours": ours, "pandas": pandas_minimum}


def measured(side: str, path: Path, work: Path) -> dict:
    """One side in a fresh process: its seconds, peak resident MB and the interactions it kept."""
    done = subprocess.run([sys.executable, __file__, "--child", side, str(path), str(work)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(side: str, path: str, work: str) -> None:
    started = time.perf_counter()
    kept = SIDES[side](Path(path), Path(work))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2), "peak_mb": round(peak_mb),
                      "interactions": kept}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sizes = [100_000] if args.quick else args.rows
    runs = []
    for rows in sizes:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "events.parquet"
            write_interactions(rows, path)
            sides = {}
            for side in SIDES:
                (Path(folder) / side).mkdir()
                sides[side] = measured(side, path, Path(folder) / side)
        runs.append({"rows": rows, **sides,
                     "seconds_over_pandas": round(sides["ours"]["seconds"] / max(sides["pandas"]["seconds"], 1e-9), 2),
                     "peak_over_pandas": round(sides["ours"]["peak_mb"] / max(sides["pandas"]["peak_mb"], 1), 2)})
        print(runs[-1], flush=True)
    result = {"benchmark": "ingest", "quick": args.quick, "machine": machine(), "runs": runs}
    print(write_result(result, "ingest", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
