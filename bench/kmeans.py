"""Distributed k-means against faiss.Kmeans: same data, k, iterations and threads, same run.

Our k-means runs in one process here (its collectives are the identity without a process
group; the code is the one Ray Train workers run). Both get the same Gaussian-blob data, the
same k and a fixed number of Lloyd iterations (our early stop is off, faiss uses every point:
`max_points_per_centroid` = N). Both final centroid sets are scored with the same function.

    python bench/kmeans.py [--quick]

Writes bench/results/kmeans.json (kmeans-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from common import machine, write_result

from qbr_dist.quant.kmeans import kmeans, nearest


def blobs(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)) * 3
    return (means[rng.integers(centres, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def inertia(data: torch.Tensor, centroids: torch.Tensor) -> float:
    return float(nearest(data, centroids)[0].double().sum())


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    n, d, k, iterations = (20_000, 32, 64, 10) if args.quick else (200_000, 64, 256, 20)
    data = blobs(n, d, centres=k * 2, seed=0)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    started = time.perf_counter()
    ours = kmeans(torch.from_numpy(data), k, iterations=iterations, seed=0, tol=0.0)
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    theirs = faiss.Kmeans(d, k, niter=iterations, seed=0, max_points_per_centroid=n, verbose=False)
    theirs.train(data)
    faiss_s = time.perf_counter() - started

    tensor = torch.from_numpy(data)
    ours_inertia, faiss_inertia = inertia(tensor, ours.centroids), inertia(tensor, torch.from_numpy(theirs.centroids))
    result = {
        "benchmark": "kmeans", "quick": args.quick,
        "machine": machine(threads=args.threads),
        "data": {"n": n, "d": d, "k": k, "iterations": iterations, "blobs": k * 2},
        "qbr_dist": {"seconds": round(ours_s, 3), "inertia": ours_inertia, "iterations": ours.iterations},
        "faiss": {"seconds": round(faiss_s, 3), "inertia": faiss_inertia, "version": faiss.__version__},
        "time_ratio_qbr_over_faiss": round(ours_s / faiss_s, 3),
        "inertia_ratio_qbr_over_faiss": round(ours_inertia / faiss_inertia, 4),
    }
    write_result(result, "kmeans", quick=args.quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
