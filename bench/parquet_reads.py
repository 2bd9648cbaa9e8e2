"""Parquet reads on an embedded Ray with one footer-reader actor per read (what `train.runtime.start_ray`
sets) against Ray Data's default pool of 32. Each setting runs in a fresh process (its environment holding
the setting) with its own 2-CPU Ray, the 32 first. The workload is what the stages do on a small catalog:
whole-table reads (a training stage's datasets) and the two left joins of retokenization.

    python bench/parquet_reads.py [--quick]

Writes bench/results/parquet_reads.json: seconds per read and per join for each setting, and their ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result

RAY_DEFAULT = "32"  # Ray Data's own default (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS unset)


def workload(folder: Path, reads: int, joins: int) -> dict:
    """In this process: seconds per whole-table read and per pair of left joins, on a fresh embedded Ray."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from qbr_dist.config import RuntimeConfig
    from qbr_dist.train.runtime import start_ray

    ids = [f"item-{i}" for i in range(2000)]
    for name, width in (("features", 384), ("vectors", 64), ("structure", 8)):
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(len(ids) * width, np.float32)), width)
        pq.write_table(pa.table({"item_id": ids, name: vectors}), folder / f"{name}.parquet")
    start_ray(RuntimeConfig(ray_num_cpus=2, object_store_mb=256, dashboard=False))

    def read(name: str):
        return ray.data.read_parquet(str(folder / f"{name}.parquet"))

    started = time.perf_counter()
    for _ in range(reads):
        assert read("features").count() == len(ids)
    read_s = (time.perf_counter() - started) / reads
    started = time.perf_counter()
    for _ in range(joins):
        joined = read("features").join(read("vectors"), join_type="left_outer", num_partitions=1, on=("item_id",))
        joined = joined.join(read("structure"), join_type="left_outer", num_partitions=1, on=("item_id",))
        assert joined.count() == len(ids)
    join_s = (time.perf_counter() - started) / joins
    ray.shutdown()
    return {"read_s": round(read_s, 2), "two_joins_s": round(join_s, 2)}


def measure(footer_actors: str, reads: int, joins: int) -> dict:
    """`workload` in a fresh process whose environment holds the setting."""
    env = dict(os.environ, RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=footer_actors)
    env.pop("RAY_ADDRESS", None)  # always an embedded Ray of its own, never a cluster the shell points at
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, __file__, "--workload", folder, str(reads), str(joins)], env=env,
                              capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the workload with {footer_actors} footer actors failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 reads and 1 join per setting")
    parser.add_argument("--workload", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        folder, reads, joins = args.workload
        print(json.dumps(workload(Path(folder), int(reads), int(joins))))
        return 0
    reads, joins = (2, 1) if args.quick else (6, 3)
    peer, ours = measure(RAY_DEFAULT, reads, joins), measure("1", reads, joins)
    result = {"benchmark": "parquet_reads", "machine": machine(), "reads": reads, "joins": joins,
              "footer_actors_32": peer, "footer_actors_1": ours,
              "read_ratio_32_over_1": round(peer["read_s"] / max(ours["read_s"], 1e-9), 2),
              "join_ratio_32_over_1": round(peer["two_joins_s"] / max(ours["two_joins_s"], 1e-9), 2)}
    print(json.dumps(result, indent=2))
    print(write_result(result, "parquet_reads", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
