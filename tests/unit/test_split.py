import json

import numpy as np
import pytest
import pyarrow as pa

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data import split  # not `import test_part`: pytest would collect it as a test
from qbr_dist.data.split import build_sequences, item_indexes

INDEX = pa.array(["a", "b", "c", "d", "e"])  # the catalog's item ids: indices 1..5


def interactions(rows):
    users, items, stamps = zip(*rows)
    return pa.table({"user_id": list(users), "item_id": list(items), "timestamp": [float(t) for t in stamps]})


def sequences(rows, k_core=0, index=INDEX, quarantine=None, max_history=0):
    table, summary = build_sequences(
        interactions(rows), index, k_core=k_core, quarantine=quarantine or Quarantine(), source="test",
        max_history=max_history,
    )
    return dict(zip(table.column("user_id").to_pylist(), table.column("items").to_pylist())), summary


def test_item_indexes_follow_catalog_order_from_one_and_an_unknown_id_is_zero():
    assert item_indexes(pa.chunked_array([["e", "zz"], ["a", "c"]]), INDEX).tolist() == [5, 0, 1, 3]


def test_users_come_in_the_order_python_sorts_their_ids():
    ids = ["b", "a", "ä", "Z", "aa", "😀", "ü", "1"]
    seqs, _ = sequences([(user, "a", t) for user in ids for t in range(3)])
    assert list(seqs) == sorted(ids)


def test_sequences_sorted_by_time_ties_keep_row_order():
    rows = [("u", "b", 5), ("v", "a", 1), ("u", "a", 5), ("u", "c", 1), ("v", "b", 2), ("u", "d", 9), ("v", "c", 3)]
    seqs, summary = sequences(rows)
    assert seqs == {"u": [3, 2, 1, 4], "v": [1, 2, 3]}
    assert (summary.users, summary.interactions, summary.interactions_read) == (2, 7, 7)


def test_unknown_items_are_quarantined_and_counted(tmp_path):
    rows = [("u", "a", 1_600_000_001), ("u", "zzz", 1_600_000_002), ("u", "b", 1_600_000_003), ("u", "c", 1_600_000_004)]
    path = tmp_path / "quarantine.jsonl"
    with Quarantine(path) as quarantine:
        seqs, summary = sequences(rows, quarantine=quarantine)
    assert seqs == {"u": [1, 2, 3]}
    assert summary.unknown_item_rows == 1
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [{"source": "test", "where": "user 'u' at timestamp 1600000002.0", "field": "item_id",
                        "reason": "item id not in the catalog (or its catalog row was quarantined)", "value": "zzz"}]
    assert dict(quarantine.counts) == {"item id not in the catalog (or its catalog row was quarantined)": 1}
    renamed = tmp_path / "renamed.jsonl"
    with Quarantine(renamed) as quarantine:  # a file that calls the field otherwise is named as it does
        build_sequences(interactions(rows), INDEX, k_core=0, quarantine=quarantine, source="test", item_field="sku")
    assert [json.loads(line)["field"] for line in renamed.read_text().splitlines()] == ["sku"]


def test_rows_repeating_user_item_and_time_are_kept_and_counted():
    rows = [("u", "a", 1), ("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("v", "a", 1), ("u", "b", 2)]
    seqs, summary = sequences(rows)
    assert seqs["u"] == [1, 1, 2, 2, 1] and summary.repeated_rows == 2  # the second (u, a, 1) and (u, b, 2)


def test_short_users_are_excluded_and_counted():
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("short", "a", 1), ("short", "b", 2), ("one", "c", 1)]
    seqs, summary = sequences(rows)
    assert seqs == {"u": [1, 2, 3]}
    assert summary.users_too_short == 2 and summary.short_user_rows == 3
    assert summary.users == 1 and summary.interactions == 3


# u4's only rare item "d" goes, so u4 falls below 3 and goes; then "c" falls below 3 and goes too.
KCORE_ROWS = [
    ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "e", 4),
    ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3), ("u2", "e", 4),
    ("u3", "a", 1), ("u3", "b", 2), ("u3", "e", 3),
    ("u4", "a", 1), ("u4", "c", 2), ("u4", "d", 3),
]


def test_k_core_zero_keeps_everything():
    seqs, summary = sequences(KCORE_ROWS, k_core=0)
    assert summary.kcore_removed_rows == 0
    assert seqs["u4"] == [1, 3, 4]
    assert summary.interactions == len(KCORE_ROWS)


def test_k_core_drops_repeatedly():
    seqs, summary = sequences(KCORE_ROWS, k_core=3)
    assert seqs == {"u1": [1, 2, 5], "u2": [1, 2, 5], "u3": [1, 2, 5]}
    assert summary.kcore_removed_rows == 5
    assert summary.interactions == 9


def test_max_history_keeps_each_users_newest_items_after_k_core():
    rows = [("u", "a", 5), ("u", "b", 1), ("u", "c", 3), ("u", "d", 4), ("u", "e", 2), ("v", "a", 1), ("v", "b", 2),
            ("v", "c", 3)]
    seqs, summary = sequences(rows, max_history=3)
    assert seqs == {"u": [3, 4, 1], "v": [1, 2, 3]}  # u's newest three, oldest first; v had no more
    assert summary.history_cut_rows == 2 and summary.interactions == 6
    seqs, summary = sequences(KCORE_ROWS, k_core=3, max_history=3)
    assert seqs == {"u1": [1, 2, 5], "u2": [1, 2, 5], "u3": [1, 2, 5]}  # the k-core drops "c" first: nothing to cut
    assert summary.history_cut_rows == 0


def test_leave_one_out_parts():
    items = np.array([7, 3, 9, 4, 8])
    assert split.train_part(items).tolist() == [7, 3, 9]
    history, target = split.valid_part(items)
    assert (history.tolist(), target) == ([7, 3, 9], 4)
    history, target = split.test_part(items)
    assert (history.tolist(), target) == ([7, 3, 9, 4], 8)  # validation item is part of the test history
    assert isinstance(target, int)


def test_nothing_left_after_k_core_counts_no_short_users():
    users, summary = sequences([("u", "a", 1), ("u", "a", 2), ("u", "b", 3)], k_core=3)
    assert users == {}
    assert summary.users == 0 and summary.users_too_short == 0 and summary.kcore_removed_rows == 3


def test_cold_items_leave_every_input_but_stay_test_targets():
    import numpy as np
    import pyarrow as pa

    from qbr_dist.data.split import choose_cold_items, remove_cold

    cold = choose_cold_items(100, 0.1, seed=3)
    assert cold.sum() == 10 and not cold[0] and (choose_cold_items(100, 0.1, seed=3) == cold).all()
    c1, c2 = np.flatnonzero(cold)[:2]
    warm = [int(i) for i in np.flatnonzero(~cold)[1:8]]
    sequences = pa.table({"user_id": ["a", "b", "c"], "items": pa.array(
        [[warm[0], c1, warm[1], warm[2], c2], [c1, warm[3], warm[4], warm[5]], [c1, c2, warm[6]]],
        pa.list_(pa.int32()))})
    table, dropped = remove_cold(sequences, cold)
    assert dropped == 1  # user c keeps one item and its target: too short for a split
    assert table.column("user_id").to_pylist() == ["a", "b"]
    assert table.column("items").to_pylist() == [[warm[0], warm[1], warm[2], c2], [warm[3], warm[4], warm[5]]]
    assert table.column("cold_target").to_pylist() == [True, False]



def reference_split(rows, max_history, cold, skip_first_user=False):
    """The split as its docstrings state it, a user at a time in plain Python: the reference the Arrow version must
    equal (`skip_first_user`: without the first user that has a sequence before the cold split)."""
    by_user = {}
    for row, (user, item, stamp) in enumerate(rows):
        by_user.setdefault(user, []).append((stamp, row, ord(item) - ord("a") + 1))
    histories = {user: [item for _, _, item in sorted(by_user[user])][-max_history or None:] for user in sorted(by_user)}
    histories = {user: items for user, items in histories.items() if len(items) >= 3}
    out = {}
    for user, items in list(histories.items())[int(skip_first_user):]:
        items = [item for item in items[:-1] if not cold[item]] + items[-1:]
        if len(items) >= 3:
            out[user] = (items, bool(cold[items[-1]]))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_sequences_and_the_cold_split_equal_a_plain_python_reference(seed):
    from qbr_dist.data.split import remove_cold

    rng = np.random.default_rng(seed)
    rows = [(f"u{rng.integers(12)}", "abcde"[rng.integers(5)], int(rng.integers(6))) for _ in range(rng.integers(1, 90))]
    max_history = int(rng.choice([0, 3, 5]))
    cold = np.r_[False, rng.random(5) < 0.3]
    table, _ = build_sequences(interactions(rows), INDEX, k_core=0, quarantine=Quarantine(), source="test",
                               max_history=max_history)
    sliced = seed % 2 == 1 and table.num_rows > 0  # a table whose list column is a slice (offsets not from 0)
    table, _ = remove_cold(table.slice(1) if sliced else table, cold)
    got = {user: (items, target) for user, items, target in zip(*(table.column(c).to_pylist() for c in
                                                                   ("user_id", "items", "cold_target")))}
    assert got == reference_split(rows, max_history, cold, skip_first_user=sliced)


def test_user_ids_are_sorted_as_large_text_and_come_back_as_text_in_chunks():
    """The distinct ids of tens of millions of users can pass the 2 GiB one Arrow text array holds (seen at 30M
    users of 72-byte ids), so they are worked on as large text and handed on in chunks of text."""
    from qbr_dist.data.split import _sorted_codes, _text_in_chunks

    distinct, codes = _sorted_codes(pa.chunked_array([["b", "a"], ["c", "a", "é"]]))
    assert distinct.type == pa.large_string() and distinct.to_pylist() == ["a", "b", "c", "é"]
    assert codes.tolist() == [1, 0, 2, 0, 3]
    chunked = _text_in_chunks(distinct, rows=3)
    assert chunked.type == pa.string() and [len(c) for c in chunked.chunks] == [3, 1]
    assert chunked.to_pylist() == ["a", "b", "c", "é"] and _text_in_chunks(distinct[:0]).to_pylist() == []
