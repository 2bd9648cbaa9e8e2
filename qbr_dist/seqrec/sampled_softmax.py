"""Sampled softmax with log-Q correction (Yi et al., 2019, "Sampling-bias-corrected neural modeling")
for training over catalogs too large for a full softmax; evaluation still ranks the whole catalog.

Each step draws K negatives with replacement from the smoothed item popularity
q(i) = (count(i) + 1) / sum_j (count(j) + 1), counts taken from the training parts of the sequences;
the + 1 lets every item be drawn, those without training counts included, except the items kept
out of training (the cold items of a cold-item split), which have q = 0: the loss would mask them
out, so a draw of one would be wasted.
All masked positions of the step share the draw, which comes from a generator seeded per step,
so every rank and a resumed run draw the same.
"""
from __future__ import annotations

import torch
from torch import nn


class NegativeSampler:
    """K negatives per step from the smoothed popularity of items 1..num_items (`counts` row 0 is padding),
    never an `excluded` one (bool by item, like `counts`)."""

    def __init__(self, counts: torch.Tensor, negatives: int, device: torch.device | str = "cpu",
                 excluded: torch.Tensor | None = None):
        smoothed = torch.cat([torch.zeros(1, dtype=torch.float64), counts[1:].double() + 1.0])
        if excluded is not None:
            smoothed = smoothed.masked_fill(excluded.cpu(), 0.0)
        self.q = smoothed / smoothed.sum()
        self.cdf = self.q.cumsum(0)
        self.last = int(self.q.nonzero().max())  # the newest item that can be drawn
        self.negatives = negatives
        # log of each item's expected count in a draw; catalog-sized, so it moves to the device once
        self.log_kq = torch.log(negatives * self.q).float().to(device)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """K item indices by inverse-CDF sampling (no category limit, unlike torch.multinomial)."""
        uniform = torch.rand(self.negatives, generator=generator, dtype=torch.float64)
        return torch.searchsorted(self.cdf, uniform, right=True).clamp(max=self.last)  # rounding at the top


def sampled_softmax_loss(target_logits: torch.Tensor, negative_logits: torch.Tensor, targets: torch.Tensor,
                         negatives: torch.Tensor, log_kq: torch.Tensor) -> torch.Tensor:
    """Summed -log softmax(target) over [target, negatives], each logit s(i) - log(K q(i)), target-equal negatives -inf.

    target_logits (rows,), negative_logits (rows, K), targets (rows,), negatives (K,), log_kq indexed by item.
    """
    negative_logits = (negative_logits - log_kq[negatives]).masked_fill(negatives == targets[:, None], float("-inf"))
    logits = torch.cat([(target_logits - log_kq[targets])[:, None], negative_logits], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros_like(targets), reduction="sum")
