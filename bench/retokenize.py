"""Retokenization at catalog scale: items/s and peak memory for 1M and 5M items (384-d vectors).

For each size a feature table of random 384-d float32 vectors is written in row groups, then
`qbr retokenize`'s job runs on an embedded Ray (a pool of actors quantizing with a 3 x 256
codebook from the object store, then the driver's suffix pass). Peak memory is the driver's own
peak RSS and the largest RSS any Ray worker process reached (sampled every 0.5 s): flat in N
means the per-process figures do not grow with the catalog.

    python bench/retokenize.py [--quick]

Writes bench/results/retokenize.json (retokenize-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import threading
import time
from pathlib import Path

for name, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled")):
    os.environ.setdefault(name, value)  # as the Makefile sets them, for direct runs too

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from qbr_dist.quant.codebook import save_codebooks  # noqa: E402
from qbr_dist.quant.retokenize import retokenize  # noqa: E402

ROOT = Path(__file__).resolve().parent
WORK, RESULTS = ROOT / ".work" / "retokenize", ROOT / "results"
DIM, LEVELS, CODES, ROWS_PER_GROUP = 384, 3, 256, 100_000


def write_vectors(path: Path, items: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    schema = pa.schema([("item_id", pa.string()), ("vector", pa.list_(pa.float32(), DIM))])
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, items, ROWS_PER_GROUP):
            n = min(ROWS_PER_GROUP, items - first)
            ids = pa.array([f"item{i:09d}" for i in range(first, first + n)])
            vectors = rng.standard_normal((n, DIM), dtype=np.float32)
            writer.write_table(pa.table({"item_id": ids, "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()), DIM)}, schema=schema))


class WorkerMemory:
    """Largest RSS of any Ray worker process while the job runs (psutil, every 0.5 s)."""

    def __init__(self):
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        import psutil

        while not self._stop.wait(0.5):
            for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
                command = " ".join(process.info["cmdline"] or [])
                if "ray::" in (process.info["name"] or "") or "default_worker.py" in command:
                    self.peak_mb = max(self.peak_mb, process.info["memory_info"].rss / 2**20)


def run(items: int, actors: int) -> dict:
    import ray

    folder = WORK / f"{items}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    write_vectors(folder / "vectors.parquet", items)
    written_s = time.perf_counter() - started
    codebooks = torch.randn(LEVELS, CODES, DIM, generator=torch.Generator().manual_seed(0))
    save_codebooks(folder / "codebooks.safetensors", codebooks)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, object_store_memory=1024**3)
    try:
        with WorkerMemory() as workers:
            summary = retokenize([folder / "vectors.parquet"], "vector", folder / "codebooks.safetensors",
                                 folder / "out", previous=None, batch_size=4096, actors=actors)
    finally:
        ray.shutdown()
    result = summary | {"vectors_gb": round((folder / "vectors.parquet").stat().st_size / 1e9, 2),
                        "write_vectors_seconds": round(written_s, 1),
                        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                        "worker_peak_rss_mb": round(workers.peak_mb, 1)}
    shutil.rmtree(folder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k and 200k items instead of 1M and 5M")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    sizes = (50_000, 200_000) if args.quick else (1_000_000, 5_000_000)
    runs = {str(n): run(n, args.actors) for n in sizes}
    result = {
        "benchmark": "retokenize", "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "setup": {"dim": DIM, "levels": LEVELS, "codebook_size": CODES, "actors": args.actors, "batch_size": 4096},
        "runs": runs,
        "note": "driver_peak_rss_mb is the driver's peak over the whole benchmark so far (it grows run by run "
                "only if the driver's share grows with N); worker_peak_rss_mb is per process",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("retokenize-quick.json" if args.quick else "retokenize.json")).write_text(
        json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
