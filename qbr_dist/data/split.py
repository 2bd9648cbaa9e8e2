"""From interactions to per-user item sequences and the leave-one-out split.

Each user's items are sorted by timestamp; equal timestamps keep the input's row order. A user's
history can be cut to its newest `max_history` items (before the split, so the cut keeps the newest
items as validation and test targets).
Leave-one-out: the last item is the test target, the second-to-last the validation target,
the rest is training. A user needs at least three interactions to appear in all three parts.

Cold-item split: a seeded uniform share of the items is cold. Cold items are removed from every
sequence except as its test target, so no training or validation input holds one; the
sequences table marks the users whose test target is cold (`cold_target`), evaluated apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qbr_dist.data.quarantine import Quarantine

MIN_SPLIT_LENGTH = 3


@dataclass
class SplitSummary:
    interactions_read: int
    unknown_item_rows: int
    kcore_removed_rows: int
    history_cut_rows: int
    users: int
    users_too_short: int
    items: int
    interactions: int
    repeated_rows: int = 0  # rows after the k-core filter with an earlier row's user, item and timestamp (kept)
    short_user_rows: int = 0  # the interactions of the users_too_short

    def as_dict(self) -> dict:
        return asdict(self)


UNKNOWN_ITEM = "item id not in the catalog (or its catalog row was quarantined)"  # one reason, counted as one


def item_indexes(item_ids: pa.Array | pa.ChunkedArray, catalog_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Token index of each item id: 1..N in catalog order (0 is padding), 0 for an id the catalog lacks."""
    rows = pc.index_in(item_ids, value_set=catalog_ids)
    return pc.fill_null(rows, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def build_sequences(
    interactions: pa.Table, catalog_ids: pa.Array | pa.ChunkedArray, *, k_core: int, quarantine: Quarantine,
    source: str, max_history: int = 0, item_field: str = "item_id",
) -> tuple[pa.Table, SplitSummary]:
    """Table (user_id: string, items: list<int32>, cold_target: bool) of time-ordered item indices (`item_indexes`
    of the catalog's item ids), one row per user in user id order; each the user's newest `max_history` items when
    that is > 0 (after the k-core filter). Ids are matched and ordered by Arrow, not row by row in Python. An
    interaction of an item the catalog lacks is quarantined under `item_field`, the file's own name of the field."""
    items = item_indexes(interactions.column("item_id"), catalog_ids)
    unknown = np.flatnonzero(items == 0)
    if len(unknown):  # named by user and time: the readers' accepted rows are not the file's lines
        picked = interactions.take(pa.array(unknown))
        for user, item, stamp in zip(*(picked.column(name).to_pylist() for name in ("user_id", "item_id",
                                                                                     "timestamp"))):
            quarantine.add(source=source, where=f"user {user!r} at timestamp {stamp!r}", field=item_field,
                           reason=UNKNOWN_ITEM, value=item)
    known = items > 0
    users, user_codes = _sorted_codes(interactions.column("user_id").filter(pa.array(known)))
    items = items[known]
    stamps = interactions.column("timestamp").to_numpy()[known]
    keep = _k_core(user_codes, items, k_core)
    user_codes, items, stamps = user_codes[keep], items[keep], stamps[keep]
    order = np.lexsort((np.arange(len(items)), stamps, user_codes))  # stable: ties keep row order
    user_codes, items = user_codes[order], items[order]
    repeated = _repeated_rows(user_codes, items, stamps[order])
    starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]]) if len(items) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(items)])
    cut = np.clip(lengths - max_history, 0, None) if max_history > 0 else np.zeros_like(lengths)
    owner = np.repeat(np.arange(len(starts)), lengths)  # each sorted row's user, numbered in order
    lengths = lengths - cut
    long_enough = lengths >= MIN_SPLIT_LENGTH
    kept = long_enough[owner] & (np.arange(len(items)) - starts[owner] >= cut[owner])  # a user's newest rows
    offsets = np.r_[0, np.cumsum(lengths[long_enough])].astype(np.int32)
    table = pa.table({
        "user_id": _text_in_chunks(users.take(pa.array(user_codes[starts[long_enough]]))),
        "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(items[kept].astype(np.int32))),
        "cold_target": pa.array(np.zeros(int(long_enough.sum()), dtype=bool)),
    })
    summary = SplitSummary(
        interactions_read=interactions.num_rows,
        unknown_item_rows=int((~known).sum()),
        kcore_removed_rows=int((~keep).sum()),
        history_cut_rows=int(cut.sum()),
        users=table.num_rows,
        users_too_short=int((~long_enough).sum()),
        short_user_rows=int(lengths[~long_enough].sum()),
        items=len(catalog_ids),
        interactions=int(lengths[long_enough].sum()),
        repeated_rows=int(repeated),
    )
    return table, summary


def _sorted_codes(values: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(the distinct values in sorted order, each value's position among them): np.unique's answer for text,
    without a Python object per row (UTF-8 byte order is code point order, so the order is Python's too). Worked on
    as large text: the distinct ids of tens of millions of users can pass the 2 GiB one text array holds."""
    values = values.cast(pa.large_string())
    distinct = pc.unique(values)
    distinct = distinct.take(pc.sort_indices(distinct))
    return distinct, pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)


def _text_in_chunks(texts: pa.Array, rows: int = 1 << 20) -> pa.ChunkedArray:
    """Large text as text, a million values a chunk (each well within 2 GiB)."""
    return pa.chunked_array([texts.slice(at, rows).cast(pa.string()) for at in range(0, len(texts), rows)],
                            pa.string())


def _repeated_rows(users: np.ndarray, items: np.ndarray, stamps: np.ndarray) -> int:
    """Rows whose user, item and timestamp an earlier row has (an export's doubled lines, or a real repeat), of rows
    sorted by user and time: only the runs of rows sharing a user and a time are looked at, so the count costs no
    sort of its own beyond those few rows."""
    tie = (users[1:] == users[:-1]) & (stamps[1:] == stamps[:-1])  # row k + 1 shares row k's user and time
    tied = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
    runs = np.stack([np.cumsum(np.r_[True, ~tie])[tied], items[tied]], axis=1)
    return len(runs) - len(np.unique(runs, axis=0))


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


def choose_cold_items(num_items: int, fraction: float, seed: int) -> np.ndarray:
    """(num_items + 1,) bool: the cold items (index 0, padding, never cold)."""
    cold = np.zeros(num_items + 1, dtype=bool)
    picked = np.random.default_rng(seed).choice(num_items, size=int(round(fraction * num_items)), replace=False)
    cold[picked + 1] = True
    return cold


def remove_cold(sequences: pa.Table, cold: np.ndarray) -> tuple[pa.Table, int]:
    """Sequences without cold items before their test target, plus the `cold_target` column;
    users left with fewer than MIN_SPLIT_LENGTH items are dropped (returned count)."""
    lists = sequences.column("items").combine_chunks()
    items = lists.flatten().to_numpy(zero_copy_only=False)
    owner = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    offsets = lists.offsets.to_numpy()
    ends = offsets[1:] - offsets[0] - 1  # each user's last row (the test target), in the flattened rows
    last = np.zeros(len(items), bool)
    last[ends] = True
    row_kept = ~cold[items] | last
    counts = np.bincount(owner[row_kept], minlength=len(lists))
    users_kept = counts >= MIN_SPLIT_LENGTH
    row_kept &= users_kept[owner]
    table = pa.table({
        "user_id": sequences.column("user_id").filter(pa.array(users_kept)),
        "items": pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(counts[users_kept])].astype(np.int32)),
                                          pa.array(items[row_kept].astype(np.int32))),
        "cold_target": pa.array(cold[items[ends[users_kept]]])})
    return table, sequences.num_rows - table.num_rows


EVALUATIONS = ("valid", "test", "test_cold")  # test: users whose test target is warm; test_cold: cold


def evaluation_part(evaluation: str):
    """The (history, target) function of an evaluation."""
    return valid_part if evaluation == "valid" else test_part


def evaluation_users(cold_target: np.ndarray, evaluation: str) -> np.ndarray:
    """Which users an evaluation covers: all for validation (its targets are never cold), else by test target."""
    cold_target = np.asarray(cold_target, dtype=bool)
    return {"valid": np.ones_like(cold_target), "test": ~cold_target, "test_cold": cold_target}[evaluation]
