"""Masking strategies over a batch of left-padded item sequences.

Each returns (inputs, labels): inputs with masked positions replaced by the mask token, labels
holding the original item at masked positions and 0 elsewhere. Randomness comes only from the
generator passed in, so a (seed, step) pair fixes the masks on every rank.
"""
from __future__ import annotations

from typing import Callable

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


def span_mask(
    seq: torch.Tensor, *, mean_span: float, mask_token: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One contiguous run of real items per sequence, its length geometric with mean `mean_span`."""
    real = seq != PAD
    start, length = _spans(real.sum(1), torch.zeros(len(seq), dtype=torch.long), mean_span, generator)
    return _apply(seq, _span_positions(seq, real, start, length), mask_token)


def tail_mask(seq: torch.Tensor, *, k: int, mask_token: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `k` real items of every sequence (all of them when it has fewer)."""
    positions = torch.arange(seq.shape[1])
    masked = (positions >= seq.shape[1] - k) & (seq != PAD)
    return _apply(seq, masked, mask_token)


def multi_region_mask(
    seq: torch.Tensor, *, regions: int, mean_span: float, mask_token: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Several disjoint spans: the real part is cut into `regions` equal segments, one span in each."""
    real = seq != PAD
    count = real.sum(1)
    masked = torch.zeros_like(real)
    for region in range(regions):
        first = count * region // regions
        size = count * (region + 1) // regions - first
        start, length = _spans(size, first, mean_span, generator)
        masked |= _span_positions(seq, real, start, length) & (size > 0)[:, None]
    return _apply(seq, masked, mask_token)


STRATEGIES = ("random", "span", "tail", "multi_region")


def mixed_mask(
    seq: torch.Tensor, *, weights: dict[str, float], makers: dict[str, Callable[[], tuple]],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pretraining masking: a strategy drawn per sequence from `weights`; `makers[name]()` masks the
    whole batch that way and is called only when some sequence drew it. Also returns the index into
    STRATEGIES chosen for each sequence."""
    unknown = set(weights) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown masking strategies {sorted(unknown)} (known: {', '.join(STRATEGIES)})")
    probabilities = torch.tensor([float(weights.get(name, 0.0)) for name in STRATEGIES])
    chosen = torch.multinomial(probabilities, len(seq), replacement=True, generator=generator)
    inputs, labels = seq.clone(), torch.zeros_like(seq)
    for index, name in enumerate(STRATEGIES):
        rows = chosen == index
        if rows.any():
            masked_inputs, masked_labels = makers[name]()
            inputs[rows], labels[rows] = masked_inputs[rows], masked_labels[rows]
    return inputs, labels, chosen


def _spans(available: torch.Tensor, offset: torch.Tensor, mean_span: float, generator: torch.Generator):
    """(start, length) per row: a geometric length (mean `mean_span`, at least 1, at most
    `available`) placed uniformly within `available` positions counted from `offset`."""
    p = min(1.0, 1.0 / max(mean_span, 1.0))
    draw = torch.rand(len(available), generator=generator).clamp_min(1e-12)
    geometric = 1 + (torch.log(draw) / torch.log(torch.tensor(1 - p).clamp_min(1e-12))).floor().long() if p < 1 \
        else torch.ones(len(available), dtype=torch.long)
    length = torch.minimum(geometric, available).clamp_min(1)
    slack = (available - length + 1).clamp_min(1)
    start = offset + (torch.rand(len(available), generator=generator) * slack).floor().long()
    return start, length


def _span_positions(seq: torch.Tensor, real: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Mask of positions start..start+length-1 counted over each row's real items (left padding skipped)."""
    index_in_real = torch.arange(seq.shape[1]) - (seq.shape[1] - real.sum(1, keepdim=True))
    return real & (index_in_real >= start[:, None]) & (index_in_real < (start + length)[:, None])


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
