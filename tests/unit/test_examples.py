import numpy as np

import pytest

from qbr_dist.seqrec.examples import eval_inputs, left_pad, training_windows, window_count, window_ends


def batch(*seqs):
    return {"items": np.array([np.array(s) for s in seqs] + [None], dtype=object)[:-1]}


def test_left_pad():
    assert left_pad([1, 2], 4).tolist() == [0, 0, 1, 2]
    assert left_pad([1, 2, 3, 4, 5], 3).tolist() == [3, 4, 5]
    assert left_pad([1, 2], 0).tolist() == []


def test_windows_cover_every_training_item():
    items = np.arange(1, 40)
    out = training_windows(batch(items), max_len=10, stride=4)["seq"]
    train = set(items[:-2].tolist())
    assert set(out[out > 0].tolist()) == train
    assert out.shape[1] == 10
    assert out[0, -1] == items[-3]  # the newest window ends at the newest training item


@pytest.mark.parametrize("stride, every_prefix", [(10, False), (3, False), (2, True), (1, True)])
def test_window_count_is_the_number_of_windows_made(stride, every_prefix):
    rng = np.random.default_rng(stride)
    seqs = [np.arange(1, n + 1) for n in rng.integers(1, 90, 60)]
    made = training_windows(batch(*seqs), max_len=20, stride=stride, every_prefix=every_prefix)["seq"]
    assert window_count(np.array([len(s) for s in seqs]), max_len=20, stride=stride,
                        every_prefix=every_prefix) == len(made) > 0


def test_window_ends():
    assert window_ends(5, 10, 3) == [5]
    assert window_ends(20, 10, 4) == [20, 16, 12, 8]
    assert window_ends(7, 10, 2, every_prefix=True) == [7, 5, 3]
    assert window_ends(6, 10, 1, every_prefix=True) == [6, 5, 4, 3, 2]


def test_fine_tuning_windows_end_at_every_prefix():
    items = np.arange(1, 10)  # training part 1..7
    out = training_windows(batch(items), max_len=4, stride=1, every_prefix=True)["seq"]
    assert out[:, -1].tolist() == [7, 6, 5, 4, 3, 2]
    assert out[-1].tolist() == [0, 0, 1, 2]


def test_eval_inputs_hide_the_target_and_keep_history():
    items = np.array([3, 4, 5, 6, 7])
    valid = eval_inputs(batch(items), evaluation="valid", max_len=4, mask_token=99, history_len=6)
    assert valid["seq"].tolist() == [[3, 4, 5, 99]] and valid["target"].tolist() == [6]
    assert valid["history"].tolist() == [[0, 0, 0, 3, 4, 5]]
    test = eval_inputs(batch(items), evaluation="test", max_len=4, mask_token=99)
    assert test["seq"].tolist() == [[4, 5, 6, 99]] and test["target"].tolist() == [7]
    assert "history" not in test


def test_eval_inputs_keep_the_users_an_evaluation_covers():
    rows = {"items": np.array([np.array([1, 2, 3, 4]), np.array([5, 6, 7])], dtype=object),
            "cold_target": np.array([False, True])}
    assert eval_inputs(rows, evaluation="test", max_len=4, mask_token=99)["target"].tolist() == [4]
    cold = eval_inputs(rows, evaluation="test_cold", max_len=4, mask_token=99, history_len=3)
    assert cold["target"].tolist() == [7] and cold["history"].tolist() == [[0, 5, 6]]
    assert eval_inputs(rows, evaluation="valid", max_len=4, mask_token=99)["target"].tolist() == [3, 6]
    empty = eval_inputs({"items": rows["items"][:1], "cold_target": np.array([False])}, evaluation="test_cold",
                        max_len=4, mask_token=99, history_len=3)
    assert empty["seq"].shape == (0, 4) and empty["history"].shape == (0, 3)
