"""Q-BERT4Rec code tables started from the tokenizer's codebooks (`model.codebook_init`).

An item's residual codes name one centroid per level, and the sum of those centroids approximates
the vector the tokenizer quantized. Projecting every centroid by one linear map keeps that sum, so
the code tables start out placing each item where its content (and fused co-occurrence) put it,
not at a random point; training then moves them like any other parameter.
"""
from __future__ import annotations

import torch

INIT_STD = 0.02  # the std of the randomly started tables: level 0's rows are scaled to it


def codebook_rows(codebooks: torch.Tensor, hidden: int) -> torch.Tensor:
    """Code-table rows (levels, codebook_size, hidden) from codebooks (levels, codebook_size, dim).

    Wider codebooks keep their `hidden` strongest directions (the top right-singular vectors of all
    centroids); narrower ones are padded with zeros. One scale for every level keeps the residual
    levels smaller than the first, as the quantizer made them."""
    levels, size, dim = codebooks.shape
    centroids = codebooks.reshape(levels * size, dim).double()
    if dim > hidden:
        centroids = centroids @ torch.linalg.svd(centroids, full_matrices=False).Vh[:hidden].T
    else:
        centroids = torch.nn.functional.pad(centroids, (0, hidden - dim))
    rows = centroids.reshape(levels, size, hidden)
    first_level_rms = rows[0].pow(2).mean().sqrt().clamp_min(1e-12)
    return (rows * (INIT_STD / first_level_rms)).float()
