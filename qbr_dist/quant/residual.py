"""Residual vector quantization: L levels of K codes, each level quantizing what the previous left.

`residual_kmeans` fits the codebooks level by level with the distributed k-means (each level on
the residuals of the level before), checking after every level that all ranks hold the same
codebook. `encode` and `decode` apply codebooks to any vectors, chunk by chunk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from qbr_dist.quant.codebook import verify_identical
from qbr_dist.quant.kmeans import kmeans, nearest
from qbr_dist.train import collective


@dataclass
class LevelStats:
    level: int
    usage: float  # share of the level's codes used by at least one item
    perplexity: float  # exp(entropy) of the code distribution; K when all codes are equally used
    dead_codes: int
    inertia: float  # k-means inertia of the level on its residuals
    counts: list  # items per code

    def as_dict(self) -> dict:
        return asdict(self)


def level_stats(level: int, counts: torch.Tensor, inertia: float) -> LevelStats:
    counts = counts.double()
    share = counts / counts.sum().clamp_min(1)
    used = share > 0
    entropy = float(-(share[used] * share[used].log()).sum())
    return LevelStats(level=level, usage=float(used.double().mean()), perplexity=float(np.exp(entropy)),
                      dead_codes=int((~used).sum()), inertia=inertia, counts=[int(c) for c in counts.tolist()])


def encode(vectors: torch.Tensor, codebooks: torch.Tensor, *, chunk_size: int = 65536) -> torch.Tensor:
    """(n, L) int64 codes: at each level the code nearest to the residual left by the levels before."""
    residual = vectors.float().clone()
    codes = torch.empty((len(vectors), len(codebooks)), dtype=torch.int64)
    for level, codebook in enumerate(codebooks):
        _, codes[:, level] = nearest(residual, codebook, chunk_size=chunk_size)
        residual -= codebook[codes[:, level]]
    return codes


def decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Sum of each level's code vector."""
    return sum(codebooks[level][codes[:, level]] for level in range(len(codebooks)))


def residual_kmeans(local: torch.Tensor, *, levels: int, codebook_size: int, iterations: int = 25, seed: int = 0,
                    sample_size: int = 65536, chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Codebooks (L, K, d), this rank's codes (n_r, L) and per-level stats."""
    residual = local.float().clone()
    codebooks, codes, stats = [], [], []
    for level in range(levels):
        result = kmeans(residual, codebook_size, iterations=iterations, seed=seed + level,
                        sample_size=sample_size, chunk_size=chunk_size)
        verify_identical(result.centroids, what=f"codebook level {level}")
        _, assigned = nearest(residual, result.centroids, chunk_size=chunk_size)
        residual -= result.centroids[assigned]
        codebooks.append(result.centroids)
        codes.append(assigned)
        stats.append(level_stats(level, result.counts, result.inertia))
    return torch.stack(codebooks), torch.stack(codes, 1), stats


def reconstruction_error(local: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor) -> float:
    """Global mean squared error of the reconstruction, relative to the mean squared norm."""
    sums = torch.tensor([float(((local - decode(codes, codebooks)) ** 2).sum()), float((local ** 2).sum())],
                        dtype=torch.float64)
    error, norm = collective.all_reduce_sum_(sums).tolist()
    return error / max(norm, 1e-12)
