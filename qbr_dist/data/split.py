"""From interactions to per-user item sequences and the leave-one-out split.

Each user's items are sorted by timestamp; equal timestamps keep the input's row order.
Leave-one-out: the last item is the test target, the second-to-last the validation target,
the rest is training. A user needs at least three interactions to appear in all three parts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from qbr_dist.data.quarantine import Quarantine

MIN_SPLIT_LENGTH = 3


@dataclass
class SplitSummary:
    interactions_read: int
    unknown_item_rows: int
    kcore_removed_rows: int
    users: int
    users_too_short: int
    items: int
    interactions: int

    def as_dict(self) -> dict:
        return asdict(self)


def item_index(catalog: pa.Table) -> dict[str, int]:
    """Item id -> token index, 1..N in catalog order (0 is padding)."""
    return {item_id: i + 1 for i, item_id in enumerate(catalog.column("item_id").to_pylist())}


def build_sequences(
    interactions: pa.Table, index: dict[str, int], *, k_core: int, quarantine: Quarantine, source: str
) -> tuple[pa.Table, SplitSummary]:
    """Table (user_id: string, items: list<int32>) of time-ordered item indices, one row per user."""
    item_ids = interactions.column("item_id").to_pylist()
    items = np.fromiter((index.get(i, 0) for i in item_ids), dtype=np.int64, count=len(item_ids))
    for row in np.flatnonzero(items == 0):
        quarantine.add(source=source, where=f"row {row}", field="item_id",
                       reason=f"unknown item id {item_ids[row]!r}")
    known = items > 0
    users, user_codes = np.unique(np.asarray(interactions.column("user_id").to_pylist(), dtype=object)[known],
                                  return_inverse=True)
    items = items[known]
    stamps = interactions.column("timestamp").to_numpy()[known]
    keep = _k_core(user_codes, items, k_core)
    user_codes, items, stamps = user_codes[keep], items[keep], stamps[keep]
    order = np.lexsort((np.arange(len(items)), stamps, user_codes))  # stable: ties keep row order
    user_codes, items = user_codes[order], items[order]
    starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]]) if len(items) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(items)])
    long_enough = lengths >= MIN_SPLIT_LENGTH
    sequences = [items[s:s + n].astype(np.int32) for s, n, ok in zip(starts, lengths, long_enough) if ok]
    table = pa.table({
        "user_id": pa.array(users[user_codes[starts[long_enough]]].tolist(), pa.string()),
        "items": pa.array(sequences, pa.list_(pa.int32())),
    })
    summary = SplitSummary(
        interactions_read=len(item_ids),
        unknown_item_rows=int((~known).sum()),
        kcore_removed_rows=int((~keep).sum()),
        users=table.num_rows,
        users_too_short=int((~long_enough).sum()),
        items=len(index),
        interactions=int(lengths[long_enough].sum()),
    )
    return table, summary


def _k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows kept after repeatedly dropping users and items with fewer than k interactions."""
    keep = np.ones(len(items), dtype=bool)
    if k <= 1:
        return keep
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max(initial=0) + 1)
        item_counts = np.bincount(items[keep], minlength=items.max(initial=0) + 1)
        weak = keep & ((user_counts[users] < k) | (item_counts[items] < k))
        if not weak.any():
            return keep
        keep &= ~weak


def train_part(items: np.ndarray) -> np.ndarray:
    return items[:-2]


def valid_part(items: np.ndarray) -> tuple[np.ndarray, int]:
    """(history, target) for validation: everything before the second-to-last item."""
    return items[:-2], int(items[-2])


def test_part(items: np.ndarray) -> tuple[np.ndarray, int]:
    """(history, target) for test: the whole history before the last item, validation item included."""
    return items[:-1], int(items[-1])
