"""Retokenization at catalog scale: items/s and peak memory for 1M and 5M items (384-d vectors).

For each size a feature table of random 384-d float32 vectors is written as parquet files of
100k rows, and a 3 x 256 residual codebook is fitted on 20k of them with the project's k-means. Then, in a
fresh process, `qbr retokenize`'s job runs on an embedded Ray (a pool of actors quantizing with
the codebook from the object store, then the driver's suffix pass). Peak memory is that
process's own peak RSS (the driver) and the largest RSS any Ray worker process reached (sampled
every 0.5 s): flat in N means these figures do not grow with the catalog.

    python bench/retokenize.py [--quick]

Writes bench/results/retokenize.json (retokenize-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import BENCH, machine, write_result  # first: the environment Ray reads

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.quant.codebook import save_codebooks
from qbr_dist.quant.residual import residual_kmeans
from qbr_dist.quant.retokenize import retokenize

WORK = BENCH / ".work" / "retokenize"
DIM, LEVELS, CODES, ROWS_PER_FILE, FIT_SAMPLE = 384, 3, 256, 100_000, 20_000


def write_vectors(folder: Path, items: int, seed: int = 0) -> list[Path]:
    """Parquet files of ROWS_PER_FILE rows: item ids and standard normal vectors."""
    rng = np.random.default_rng(seed)
    files = []
    for first in range(0, items, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, items - first)
        vectors = rng.standard_normal((n, DIM), dtype=np.float32)
        path = folder / f"vectors-{first // ROWS_PER_FILE:05d}.parquet"
        pq.write_table(pa.table({"item_id": pa.array([f"item{i:09d}" for i in range(first, first + n)]),
                                 "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)}), path)
        files.append(path)
    return files


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


def run(items: int, actors: int, work: Path = WORK) -> dict:
    """Write the table (under `work`) and fit the codebook here; retokenize in a fresh process that reports its
    memory."""
    folder = work / f"{items}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    files = write_vectors(folder, items)
    written_s = time.perf_counter() - started
    sample = torch.from_numpy(np.array(pq.read_table(files[0]).column("vector").combine_chunks().flatten(),
                                       dtype=np.float32).reshape(-1, DIM)[:FIT_SAMPLE])
    codebooks, _, _ = residual_kmeans(sample, levels=LEVELS, codebook_size=CODES, iterations=10)
    save_codebooks(folder / "codebooks.safetensors", {"codebooks": codebooks})
    done = subprocess.run([sys.executable, __file__, "--one", str(folder), "--actors", str(actors)],
                          check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result |= {"vectors_gb": round(sum(f.stat().st_size for f in files) / 1e9, 2), "files": len(files),
               "write_vectors_seconds": round(written_s, 1)}
    shutil.rmtree(folder)
    return result


def run_one(folder: Path, actors: int) -> dict:
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, object_store_memory=1024**3)
    try:
        with WorkerMemory() as workers:
            summary = retokenize(sorted(folder.glob("vectors-*.parquet")), "vector", folder / "codebooks.safetensors",
                                 folder / "out", previous=[], batch_size=4096, actors=actors,
                                 quarantine=Quarantine(folder / "out" / "quarantine.jsonl"))
    finally:
        ray.shutdown()
    return summary | {"driver_peak_rss_mb": peak_rss_mb(), "worker_peak_rss_mb": round(workers.peak_mb, 1)}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss it starts afresh at exec, not at the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k and 200k items instead of 1M and 5M")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: retokenize one prepared folder
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.actors)))
        return
    sizes = (50_000, 200_000) if args.quick else (1_000_000, 5_000_000)
    runs = {str(n): run(n, args.actors) for n in sizes}
    result = {
        "benchmark": "retokenize", "quick": args.quick,
        "machine": machine(),
        "setup": {"dim": DIM, "levels": LEVELS, "codebook_size": CODES, "actors": args.actors, "batch_size": 4096},
        "runs": runs,
        "note": "driver_peak_rss_mb: the retokenize process's own peak; worker_peak_rss_mb: the largest Ray "
                "worker process; the vectors are written and the codebook fitted in another process",
    }
    write_result(result, "retokenize", quick=args.quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
