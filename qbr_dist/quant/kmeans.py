"""Distributed k-means: each rank holds a contiguous slice of the vectors, in rank order.

Seeding: k-means++ on a sample drawn by *global* row index from the seed, gathered from all
ranks, so the sample (and everything after it) is the same with 1 or N workers. Lloyd steps:
every rank assigns its rows chunk by chunk and the per-cluster sums (float64) and counts are
all-reduced, so memory is bounded by `chunk_size` rows, not by the catalog. A cluster left
empty is re-seeded with the points of largest error across all ranks (ties broken by global
index). Every rank ends with the same centroids; they are broadcast from rank 0 so they are
bit-identical as well.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qbr_dist.train import collective


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, d) float32, identical on every rank
    counts: torch.Tensor  # (k,) int64 global cluster sizes under the final centroids
    inertia: float  # global sum of squared distances to the nearest centroid
    iterations: int
    reseeded: int  # empty clusters re-seeded over all iterations


def nearest(vectors: torch.Tensor, centroids: torch.Tensor, *, chunk_size: int = 65536):
    """(squared distance, index) of the nearest centroid for every row, `chunk_size` rows at a time."""
    squared_norms = (centroids * centroids).sum(1)
    distances, indices = [], []
    for chunk in vectors.split(chunk_size):
        scores = squared_norms - 2 * chunk @ centroids.T  # ||x||^2 is the same for every centroid
        best, index = scores.min(1)
        distances.append((best + (chunk * chunk).sum(1)).clamp_min(0))
        indices.append(index)
    if not distances:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(distances), torch.cat(indices)


def kmeans(local: torch.Tensor, k: int, *, iterations: int = 25, seed: int = 0, sample_size: int = 65536,
           chunk_size: int = 65536, tol: float = 1e-6) -> KMeansResult:
    """k-means over the rows all ranks hold together; `local` is this rank's (n_r, d) slice."""
    local = local.float()
    offset, total = collective.row_offset(len(local))
    if total < k:
        raise ValueError(f"k-means: {k} clusters requested but only {total} vectors")
    centroids = collective.broadcast_(_seed_centroids(local, k, offset, total, seed, sample_size))
    previous, reseeded, done = float("inf"), 0, 0
    for done in range(1, iterations + 1):
        sums, counts, inertia = _assignment_sums(local, centroids, chunk_size)
        updated = (sums / counts.clamp_min(1)[:, None]).float()
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            updated[empty] = _largest_error_points(local, centroids, len(empty), offset, chunk_size)
            reseeded += len(empty)
        centroids = collective.broadcast_(updated)
        if not len(empty) and previous - inertia <= tol * max(inertia, 1e-12):
            break
        previous = inertia
    distances, assigned = nearest(local, centroids, chunk_size=chunk_size)
    counts = collective.all_reduce_sum_(torch.bincount(assigned, minlength=k).to(torch.int64))
    inertia = float(collective.all_reduce_sum_(distances.double().sum().view(1)).item())
    return KMeansResult(centroids=centroids, counts=counts, inertia=inertia, iterations=done, reseeded=reseeded)


def _global_sample(local: torch.Tensor, offset: int, total: int, seed: int, size: int) -> torch.Tensor:
    """Rows at seed-chosen global indices, gathered from their ranks in global order."""
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    mine = chosen[(chosen >= offset) & (chosen < offset + len(local))] - offset
    return collective.all_gather_rows(local[torch.from_numpy(mine)])


def _seed_centroids(local: torch.Tensor, k: int, offset: int, total: int, seed: int, sample_size: int):
    """k-means++ (D^2 sampling) on the gathered sample; the same on every rank."""
    sample = _global_sample(local, offset, total, seed, max(sample_size, k))
    norms = (sample * sample).sum(1)
    rng = np.random.default_rng([seed, 1])
    picks = [int(rng.integers(len(sample)))]
    closest = _distances_to(sample, norms, picks[0])
    for _ in range(1, k):
        cumulative = torch.cumsum(closest.double(), 0)
        if cumulative[-1] <= 0:  # fewer distinct points than clusters: any point will do
            pick = int(rng.integers(len(sample)))
        else:
            drawn = torch.searchsorted(cumulative, rng.random() * cumulative[-1], right=True)
            pick = int(drawn.clamp_max(len(sample) - 1))
        picks.append(pick)
        closest = torch.minimum(closest, _distances_to(sample, norms, pick))
    return sample[torch.tensor(picks)].clone()


def _distances_to(sample: torch.Tensor, norms: torch.Tensor, row: int) -> torch.Tensor:
    """Squared distances of every sample row to row `row` (one matrix-vector product)."""
    return (norms - 2 * (sample @ sample[row]) + norms[row]).clamp_min(0)


def _assignment_sums(local: torch.Tensor, centroids: torch.Tensor, chunk_size: int):
    """Global per-cluster sums (float64) and counts, and the inertia, under `centroids`."""
    k, d = centroids.shape
    sums = torch.zeros((k, d), dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    inertia = torch.zeros(1, dtype=torch.float64)
    for chunk in local.split(chunk_size):
        distances, assigned = nearest(chunk, centroids, chunk_size=chunk_size)
        sums.index_add_(0, assigned, chunk.double())
        counts += torch.bincount(assigned, minlength=k).double()
        inertia += distances.double().sum()
    for tensor in (sums, counts, inertia):
        collective.all_reduce_sum_(tensor)
    return sums, counts, float(inertia.item())


def _largest_error_points(local: torch.Tensor, centroids: torch.Tensor, m: int, offset: int, chunk_size: int):
    """The m rows, over all ranks, farthest from their nearest centroid (ties: lower global index)."""
    distances, _ = nearest(local, centroids, chunk_size=chunk_size)
    top = torch.topk(distances, min(m, len(distances))).indices if len(distances) else torch.zeros(0, dtype=torch.int64)
    candidates = torch.cat([distances[top, None].double(), (top + offset)[:, None].double(), local[top].double()], 1)
    gathered = collective.all_gather_rows(candidates)
    order = np.lexsort((gathered[:, 1].numpy(), -gathered[:, 0].numpy()))[:m]
    return gathered[torch.from_numpy(order), 2:].float()
