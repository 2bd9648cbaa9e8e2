"""Interaction readers: rows/s of `read_interactions` on the same random interactions written as a RecBole
`.inter` file, a CSV file (quoted as pyarrow writes it: read by Arrow), the same CSV file with one more row whose
quoted user id holds a comma (read a row at a time by Python's csv module) and a parquet file, against two CSV
readers that check nothing row by row (pyarrow.csv and pandas), in one run, one process.

    python bench/readers.py [--rows N] [--quick]

Writes bench/results/readers.json: seconds and rows/s for each, and each of ours over pyarrow.csv.read_csv.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result


def interactions(rows: int):
    """Random interactions: 1 user in 20 rows, 1 item in 50, timestamps in order."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    return pa.table({"user_id": pa.array([f"u{i}" for i in rng.integers(0, rows // 20, rows)], pa.string()),
                     "item_id": pa.array([f"i{i}" for i in rng.integers(0, rows // 50, rows)], pa.string()),
                     "timestamp": pa.array(1_600_000_000 + np.arange(rows, dtype=np.float64))})


def write_files(table, folder: Path) -> dict[str, Path]:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    files = {name: folder / f"events.{name}" for name in ("inter", "csv", "parquet")}
    files["csv, a row at a time"] = folder / "events-quoted-comma.csv"
    with open(files["inter"], "w") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, item, stamp in zip(*(table.column(n).to_pylist() for n in table.column_names)):
            handle.write(f"{user}\t{item}\t{stamp!r}\n")
    pa_csv.write_csv(table, files["csv"])
    files["csv, a row at a time"].write_bytes(files["csv"].read_bytes() + b'"u,0","i0",1600000000\n')
    pq.write_table(table, files["parquet"])
    return files


def timed(read) -> dict:
    started = time.perf_counter()
    rows = read()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    args = parser.parse_args()
    rows = 100_000 if args.quick else args.rows

    import pandas
    import pyarrow.csv as pa_csv

    from qbr_dist.data.quarantine import Quarantine
    from qbr_dist.data.readers import read_interactions

    with tempfile.TemporaryDirectory() as folder:
        files = write_files(interactions(rows), Path(folder))
        ours = {name: timed(lambda path=path: read_interactions(path, Quarantine()).num_rows)
                for name, path in files.items()}
        peers = {"pyarrow.csv.read_csv": timed(lambda: pa_csv.read_csv(files["csv"]).num_rows),
                 "pandas.read_csv": timed(lambda: len(pandas.read_csv(files["csv"], dtype=str)))}
    reference = peers["pyarrow.csv.read_csv"]["seconds"]
    result = {"benchmark": "readers", "quick": args.quick, "machine": machine(), "rows": rows,
              "read_interactions": ours, "peers": peers,
              "seconds_over_pyarrow_csv": {name: round(r["seconds"] / max(reference, 1e-9), 1)
                                           for name, r in ours.items()}}
    print(result)
    print(write_result(result, "readers", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
