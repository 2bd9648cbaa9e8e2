"""Residual vector quantization: L levels of K codes, each level quantizing what the previous left.

`residual_kmeans` fits the codebooks level by level with the distributed k-means (each level on
the residuals of the level before), checking after every level that all ranks hold the same
codebook. `encode` and `decode` apply codebooks to any vectors, chunk by chunk;
`encode_with_stats` also counts each level's code usage over all ranks.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from qbr_dist.quant.codebook import verify_identical
from qbr_dist.quant.kmeans import kmeans, nearest
from qbr_dist.train import collective

log = logging.getLogger("qbr.quant")


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


def _assign_levels(vectors: torch.Tensor, codebooks: torch.Tensor, chunk_size: int):
    """(squared distance, code) per row, level by level, each level on the residual the levels before left."""
    residual = vectors.float().clone()
    for codebook in codebooks:
        distances, codes = nearest(residual, codebook, chunk_size=chunk_size)
        residual -= codebook[codes]
        yield distances, codes


def encode(vectors: torch.Tensor, codebooks: torch.Tensor, *, chunk_size: int = 65536) -> torch.Tensor:
    """(n, L) int64 codes: at each level the code nearest to the residual left by the levels before."""
    codes = [level_codes for _, level_codes in _assign_levels(vectors, codebooks, chunk_size)]
    return torch.stack(codes, 1) if codes else torch.zeros((len(vectors), 0), dtype=torch.int64)


def encode_with_stats(local: torch.Tensor, codebooks: torch.Tensor, *, chunk_size: int = 65536):
    """This rank's codes (n_r, L) and the per-level statistics over all ranks."""
    codes, stats = [], []
    for level, (distances, level_codes) in enumerate(_assign_levels(local, codebooks, chunk_size)):
        counts = collective.all_reduce_sum_(torch.bincount(level_codes, minlength=codebooks.shape[1]))
        inertia = collective.all_reduce_sum_(distances.double().sum().view(1))
        codes.append(level_codes)
        stats.append(level_stats(level, counts, float(inertia.item())))
    return torch.stack(codes, 1), stats


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
        if collective.rank() == 0:  # a level of a large catalog takes minutes: the log shows the fit moving
            log.info("k-means level %d of %d fitted: %d of %d codes used, inertia %.4g", level + 1, levels,
                     int((result.counts > 0).sum()), codebook_size, result.inertia)
    return torch.stack(codebooks), torch.stack(codes, 1), stats


def reconstruction_error(local: torch.Tensor, reconstructed: torch.Tensor) -> float:
    """Global mean squared error of the reconstruction, relative to the mean squared norm."""
    sums = torch.tensor([float(((local - reconstructed) ** 2).sum()), float((local ** 2).sum())], dtype=torch.float64)
    error, norm = collective.all_reduce_sum_(sums).tolist()
    return error / max(norm, 1e-12)
