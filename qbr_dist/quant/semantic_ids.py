"""Unique semantic IDs: items sharing a full code tuple get an extra disambiguation code.

Within a tuple, suffixes are 0, 1, 2, ... in item-id order. They are only ever appended: given
the previous assignment (item id -> codes and suffix), an item whose codes did not change keeps
its suffix, and new items (or items whose codes changed) take the suffixes after every one their
tuple has in the previous assignment, so none of its semantic IDs is given to another item, whether
or not its item is in the table (a table of new items only, an item that left the catalog).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qbr_dist.data.buckets import as_ids


@dataclass
class Previous:
    item_ids: pa.Array  # (m,) string
    codes: np.ndarray  # (m, L) base codes
    suffixes: np.ndarray  # (m,)


def tuple_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group index per item, items per group) of the code tuples; one int64 key per tuple when the
    code ranges fit in 63 bits (no copy of the tuples), else a row-wise unique."""
    codes = np.asarray(codes, dtype=np.int64)
    sizes = codes.max(0, initial=0) + 1 if len(codes) else np.ones(codes.shape[1], np.int64)
    if float(np.log2(sizes.astype(np.float64)).sum()) < 63:
        key = np.zeros(len(codes), dtype=np.int64)
        for column, size in zip(codes.T, sizes):
            key = key * int(size) + column
        _, group, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, group, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return group.ravel(), counts


def shared_items(codes: np.ndarray) -> int:
    """How many items share their full code tuple with at least one other item."""
    _, counts = tuple_groups(codes)
    return int(counts[counts > 1].sum())


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code tuple is shared with at least one other item."""
    return shared_items(codes) / len(codes) if len(codes) else 0.0


def assign_suffixes(item_ids, codes: np.ndarray, previous: Previous | None = None) -> np.ndarray:
    """(n,) suffix per item so that (codes, suffix) is unique; keeps `previous` suffixes where codes match
    (`previous` may list an item more than once, from several earlier files: its first row with the item's
    current codes counts)."""
    ids, codes = as_ids(item_ids), np.asarray(codes)
    if pc.count_distinct(ids).as_py() != len(ids):
        raise ValueError("semantic IDs: duplicate item ids in the table to tokenize")
    earlier = previous is not None and len(previous.item_ids) > 0
    # Tuples of this table and of the previous assignment in one numbering: a tuple's next free suffix comes
    # after every suffix it had there, including those of items not in this table (left, or not given again).
    groups, _ = tuple_groups(np.vstack([codes, previous.codes]) if earlier else codes)
    group = groups[:len(ids)]
    next_free = np.zeros(groups.max(initial=-1) + 1, dtype=np.int64)
    suffixes = np.full(len(ids), -1, dtype=np.int64)
    if earlier:
        previous_groups, previous_suffixes = groups[len(ids):], np.asarray(previous.suffixes, dtype=np.int64)
        np.maximum.at(next_free, previous_groups, previous_suffixes + 1)
        suffixes = _kept_suffixes(ids, group, as_ids(previous.item_ids), previous_groups, previous_suffixes)
    new = np.flatnonzero(suffixes < 0)
    by_group_then_id = pa.table({"group": group[new], "id": ids.take(pa.array(new))})
    order = new[pc.sort_indices(by_group_then_id, sort_keys=[("group", "ascending"), ("id", "ascending")]).to_numpy()]
    new_groups = group[order]
    first_of_group = np.r_[True, new_groups[1:] != new_groups[:-1]] if len(order) else np.zeros(0, bool)
    starts = np.flatnonzero(first_of_group)
    rank_in_group = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    suffixes[order] = next_free[new_groups] + rank_in_group
    return suffixes


def code_changes(item_ids, codes: np.ndarray, trained: Previous | None) -> tuple[np.ndarray, np.ndarray]:
    """(n,) each whether `trained` (the codes a model was trained with) lacks the item, and whether it lists the item
    with none of its rows holding these codes: its features changed since, and the model knows it by the old ones."""
    ids = as_ids(item_ids)
    if trained is None or not len(trained.item_ids) or not len(ids):
        return np.ones(len(ids), dtype=bool), np.zeros(len(ids), dtype=bool)
    groups, _ = tuple_groups(np.vstack([np.asarray(codes), trained.codes]))
    trained_ids = as_ids(trained.item_ids)
    known = pc.is_in(ids, value_set=trained_ids).to_numpy(zero_copy_only=False)
    same = pc.is_in(_item_and_tuple(ids, groups[:len(ids)]),
                    value_set=_item_and_tuple(trained_ids, groups[len(ids):])).to_numpy(zero_copy_only=False)
    return ~known, known & ~same


def _kept_suffixes(ids: pa.Array, group: np.ndarray, previous_ids: pa.Array, previous_groups: np.ndarray,
                   previous_suffixes: np.ndarray) -> np.ndarray:
    """The previous suffix of each item whose codes are unchanged (its first previous row with the same tuple),
    else -1; where two kept items would share a semantic ID (earlier files that disagree), only the first in
    table order keeps it."""
    found = pc.index_in(_item_and_tuple(ids, group),
                        value_set=_item_and_tuple(previous_ids, previous_groups)).fill_null(-1).to_numpy()
    suffixes = np.where(found >= 0, previous_suffixes[np.maximum(found, 0)], -1)
    kept = np.flatnonzero(suffixes >= 0)
    _, first = np.unique(np.stack([group[kept], suffixes[kept]], axis=1), axis=0, return_index=True)
    repeated = np.ones(len(kept), dtype=bool)
    repeated[first] = False
    suffixes[kept[repeated]] = -1
    return suffixes


def _item_and_tuple(ids: pa.Array, group: np.ndarray) -> pa.Array:
    """One string per (item id, tuple number); the number after the last separator keeps it unambiguous."""
    return pc.binary_join_element_wise(ids, pc.cast(pa.array(group), pa.string()), "\x1f")
