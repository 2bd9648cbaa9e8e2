"""Unique semantic IDs: items sharing a full code tuple get an extra disambiguation code.

Within a tuple, suffixes are 0, 1, 2, ... in item-id order. They are only ever appended: given
the previous assignment (item id -> codes and suffix), an item whose codes did not change keeps
its suffix, and new items (or items whose codes changed) take the next free suffixes of their
tuple. A model is trained with a suffix table of fixed size; codes whose suffix does not fit it
are refused by `check_suffixes`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Previous:
    item_ids: np.ndarray  # (m,) str
    codes: np.ndarray  # (m, L) base codes
    suffixes: np.ndarray  # (m,)


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code tuple is shared with at least one other item."""
    if not len(codes):
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def assign_suffixes(item_ids: np.ndarray, codes: np.ndarray, previous: Previous | None = None) -> np.ndarray:
    """(n,) suffix per item so that (codes, suffix) is unique; keeps `previous` suffixes where codes match."""
    item_ids, codes = np.asarray(item_ids, dtype=object), np.asarray(codes)
    if len(set(item_ids.tolist())) != len(item_ids):
        raise ValueError("semantic IDs: duplicate item ids in the table to tokenize")
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.ravel()
    suffixes = np.full(len(item_ids), -1, dtype=np.int64)
    if previous is not None and len(previous.item_ids):
        suffixes = _kept_suffixes(item_ids, codes, previous)
    next_free = np.zeros(group.max(initial=-1) + 1, dtype=np.int64)
    kept = suffixes >= 0
    np.maximum.at(next_free, group[kept], suffixes[kept] + 1)
    new = np.flatnonzero(~kept)
    order = new[np.lexsort((item_ids[new].astype(str), group[new]))]
    new_groups = group[order]
    first_of_group = np.r_[True, new_groups[1:] != new_groups[:-1]] if len(order) else np.zeros(0, bool)
    starts = np.flatnonzero(first_of_group)
    rank_in_group = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    suffixes[order] = next_free[new_groups] + rank_in_group
    return suffixes


def _kept_suffixes(item_ids: np.ndarray, codes: np.ndarray, previous: Previous) -> np.ndarray:
    """The previous suffix of each item whose codes are unchanged, else -1."""
    where = {item_id: i for i, item_id in enumerate(previous.item_ids.tolist())}
    found = np.array([where.get(item_id, -1) for item_id in item_ids.tolist()], dtype=np.int64)
    same = found >= 0
    same[same] = (previous.codes[found[same]] == codes[same]).all(1)
    return np.where(same, previous.suffixes[np.maximum(found, 0)], -1)


def check_suffixes(suffixes: np.ndarray, table_size: int, *, source: str) -> None:
    """Refuse suffixes that a model with `table_size` suffix embeddings cannot represent."""
    largest = int(suffixes.max(initial=-1))
    if largest >= table_size:
        raise ValueError(f"{source}: disambiguation code {largest} is beyond the trained suffix table of "
                         f"{table_size}; retrain (or fine-tune) the model with a larger table")
