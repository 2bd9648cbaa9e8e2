"""Masking strategies over a batch of left-padded item sequences.

Each returns (inputs, labels): inputs with masked positions replaced by the mask token, labels
holding the original item at masked positions and 0 elsewhere. Randomness comes only from the
generator passed in, so a (seed, step) pair fixes the masks on every rank.
"""
from __future__ import annotations

import torch

from qbr_dist.seqrec.bert4rec import PAD


def random_item_mask(
    seq: torch.Tensor, *, ratio: float, mask_token: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT4Rec masking: each real item masked with probability `ratio`, at least one per sequence."""
    real = seq != PAD
    draw = torch.rand(seq.shape, generator=generator)
    masked = (draw < ratio) & real
    # A sequence with no masked item teaches nothing: mask its newest item instead.
    empty = ~masked.any(dim=1) & real.any(dim=1)
    masked[empty, -1] = True
    return _apply(seq, masked, mask_token)


def last_item_mask(seq: torch.Tensor, *, mask_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine-tuning / inference masking: only the newest (last) position is masked."""
    masked = torch.zeros_like(seq, dtype=torch.bool)
    masked[:, -1] = seq[:, -1] != PAD
    return _apply(seq, masked, mask_token)


def mix_per_sequence(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor], use_second: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise choice between two maskings of the same batch (`use_second`: bool per sequence)."""
    pick = use_second[:, None]
    return torch.where(pick, second[0], first[0]), torch.where(pick, second[1], first[1])


def _apply(seq: torch.Tensor, masked: torch.Tensor, mask_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = seq.masked_fill(masked, mask_token)
    labels = seq.masked_fill(~masked, 0)
    return inputs, labels
