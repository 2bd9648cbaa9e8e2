"""Full-ranking metrics over the whole catalog, shared by every model compared.

The rank of the target is 1 + (items scoring higher) + (other items scoring equal): ties count
against the target, so a model that scores everything alike ranks every target last; so do NaN scores,
so a diverged model ranks every target last instead of first.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from qbr_dist.seqrec.examples import left_pad

KS = (5, 10, 20)
METRIC_NAMES = tuple(f"HR@{k}" for k in KS) + tuple(f"NDCG@{k}" for k in KS) + ("MRR",)

ScoreChunk = Callable[[int, int], torch.Tensor]
"""score_chunk(start, end) -> (users, end - start) scores of items start..end-1."""


def target_ranks(
    score_chunk: ScoreChunk,
    targets: torch.Tensor,
    *,
    first_item: int,
    end_item: int,
    chunk_size: int,
    history: torch.Tensor | None = None,
) -> torch.Tensor:
    """1-based rank of each target among items [first_item, end_item), scoring `chunk_size` items at a time.

    Two passes over the catalog: the first reads each target's score out of the same chunked
    product that the second compares against, so rounding can never split a target from itself.
    With `history` (users, length) given, those items (except the target) are left out of the ranking.
    """
    if len(targets) and not bool(((targets >= first_item) & (targets < end_item)).all()):
        raise ValueError(f"every target must be an item in [{first_item}, {end_item})")
    chunks = [(s, min(s + chunk_size, end_item)) for s in range(first_item, end_item, chunk_size)]
    rows = torch.arange(len(targets), device=targets.device)
    target_score = torch.empty(len(targets), device=targets.device)
    for start, end in chunks:
        inside = (targets >= start) & (targets < end)
        if inside.any():
            scores = score_chunk(start, end)
            target_score[inside] = scores[rows[inside], targets[inside] - start].float()
    better = torch.zeros(len(targets), dtype=torch.long, device=targets.device)
    for start, end in chunks:
        scores = score_chunk(start, end).float()
        if history is not None:
            scores = _drop_history(scores, history, targets, start, end)
        better += (~(scores < target_score[:, None])).sum(1)  # higher, equal, or NaN: all count against it
    return better  # the target matched itself once as "equal", which is its own place in the 1-based rank


def _drop_history(scores, history, targets, start, end):
    in_chunk = (history >= start) & (history < end) & (history != targets[:, None])
    rows = torch.arange(len(targets), device=targets.device)[:, None].expand_as(history)
    scores = scores.clone()
    scores[rows[in_chunk], history[in_chunk] - start] = float("-inf")
    return scores


def user_metrics(ranks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each metric per user (float64, one value per rank): what paired comparisons of two models resample."""
    ranks = ranks.double()
    values = {f"HR@{k}": (ranks <= k).double() for k in KS}
    gain = 1.0 / torch.log2(ranks + 1.0)
    values.update({f"NDCG@{k}": torch.where(ranks <= k, gain, 0.0) for k in KS})
    values["MRR"] = 1.0 / ranks
    return values


def metric_sums(ranks: torch.Tensor) -> dict[str, float]:
    """Per-metric sums over users; divide by the user count (after summing across ranks) for means."""
    return {name: float(values.sum()) for name, values in user_metrics(ranks).items()}


def paired_bootstrap(first: np.ndarray, second: np.ndarray, statistic, *, resamples: int = 10_000,
                     seed: int = 0, chunk: int = 500) -> dict:
    """`statistic(first's mean, second's mean)` of two models' per-user values (runs, users), and its 95 %
    percentile interval over `resamples` draws of the users with replacement (`chunk` draws at a time, so memory
    stays at chunk x users). One draw serves every run and both models (the same users in every seed): the
    interval is what the finite set of users leaves open, with the runs fixed."""
    first, second = first.mean(0), second.mean(0)  # each user's value averaged over the runs
    rng = np.random.default_rng(seed)
    resampled = []
    for size in [chunk] * (resamples // chunk) + [resamples % chunk] * bool(resamples % chunk):
        draws = rng.integers(0, len(first), size=(size, len(first)))
        resampled.append(statistic(first[draws].mean(1), second[draws].mean(1)))
    low, high = np.quantile(np.concatenate(resampled), [0.025, 0.975])
    return {"value": float(statistic(first.mean(), second.mean())), "ci95": [float(low), float(high)]}


def metric_means(sums: dict[str, float], users: int) -> dict[str, float]:
    if users <= 0:
        raise ValueError("no users to evaluate")
    return {name: sums[name] / users for name in METRIC_NAMES}


def evaluate_examples(examples: list[tuple[np.ndarray, int]], scorer, *, num_items: int, chunk_size: int,
                      exclude_history: bool, users_per_batch: int = 4096) -> dict[str, float]:
    """Full-ranking metrics of a driver-side model over (history, target) examples (`example_ranks`)."""
    sums = dict.fromkeys(METRIC_NAMES, 0.0)
    for ranks in example_ranks(examples, scorer, num_items=num_items, chunk_size=chunk_size,
                               exclude_history=exclude_history, users_per_batch=users_per_batch):
        for name, value in metric_sums(ranks).items():
            sums[name] += value
    return metric_means(sums, len(examples))


def example_ranks(examples: list[tuple[np.ndarray, int]], scorer, *, num_items: int, chunk_size: int,
                  exclude_history: bool, users_per_batch: int = 4096) -> Iterator[torch.Tensor]:
    """Target ranks of a driver-side model over (history, target) examples, one tensor per batch of users;
    `scorer(histories)` returns the `ScoreChunk` of those users."""
    for first in range(0, len(examples), users_per_batch):
        batch = examples[first:first + users_per_batch]
        histories = [history for history, _ in batch]
        history = None
        if exclude_history:
            longest = max(len(h) for h in histories)
            history = torch.from_numpy(np.stack([left_pad(h, longest) for h in histories]))
        yield target_ranks(scorer(histories), torch.tensor([target for _, target in batch]), first_item=1,
                           end_item=num_items + 1, chunk_size=chunk_size, history=history)

