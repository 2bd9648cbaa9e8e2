"""Model inputs built from user sequences, as Ray Data batch functions.

Input batches carry `items` (each user's time-ordered item indices). Training yields windows of
`max_len` items over the training part, one every `stride` items counted back from the newest:
for pretraining until the windows cover the whole part (every item appears in some window), for
fine-tuning down to the shortest prefix (every `stride`-th item is the newest of some window).
Evaluation yields, for the users it covers (all for validation; warm or cold test targets for
"test" and "test_cold"), the history before the target (newest `max_len - 1` items) followed by the
mask token, and the target; with `history_len` > 0 also the history's newest `history_len` items,
left-padded to that length, for leaving seen items out of the ranking.
"""
from __future__ import annotations

import numpy as np

from qbr_dist.data.split import evaluation_part, evaluation_users, train_part


def left_pad(items: np.ndarray, length: int) -> np.ndarray:
    items = np.asarray(items, dtype=np.int64)[max(len(items) - length, 0):]
    return np.concatenate([np.zeros(length - len(items), dtype=np.int64), items])


def window_ends(length: int, max_len: int, stride: int, *, every_prefix: bool = False) -> list[int]:
    """End offsets of the windows over a sequence of `length` items, newest first."""
    if every_prefix:
        return list(range(length, 1, -stride))  # a prefix needs one item of context before its newest
    ends = []
    for end in range(length, 0, -stride):
        ends.append(end)
        if end <= max_len:
            break
    return ends


def window_count(lengths: np.ndarray, *, max_len: int, stride: int, every_prefix: bool = False) -> int:
    """How many windows `training_windows` makes of sequences of these lengths, without making them."""
    values, users = np.unique(np.asarray(lengths), return_counts=True)
    return int(sum(len(window_ends(len(train_part(np.arange(length))), max_len, stride, every_prefix=every_prefix))
                   * count for length, count in zip(values.tolist(), users.tolist())))


def training_windows(batch: dict, *, max_len: int, stride: int, every_prefix: bool = False) -> dict:
    rows = []
    for items in batch["items"]:
        part = train_part(np.asarray(items))
        ends = window_ends(len(part), max_len, stride, every_prefix=every_prefix)
        rows.extend(left_pad(part[max(0, end - max_len):end], max_len) for end in ends)
    return {"seq": np.stack(rows) if rows else np.zeros((0, max_len), dtype=np.int64)}


def eval_inputs(batch: dict, *, evaluation: str, max_len: int, mask_token: int, history_len: int = 0) -> dict:
    """Inputs of the batch's users that `evaluation` ("valid", "test", "test_cold") covers."""
    cold_target = batch.get("cold_target", np.zeros(len(batch["items"]), bool))
    seqs, targets, histories = [], [], []
    for history, target in evaluation_examples(batch["items"], cold_target, evaluation):
        seqs.append(left_pad(np.append(history[-(max_len - 1):], mask_token), max_len))
        targets.append(target)
        histories.append(left_pad(history, history_len))
    out = {"seq": np.stack(seqs) if seqs else np.zeros((0, max_len), np.int64),
           "target": np.asarray(targets, dtype=np.int64)}
    if history_len:
        out["history"] = np.stack(histories) if histories else np.zeros((0, history_len), np.int64)
    return out


def evaluation_examples(sequences: list[np.ndarray], cold_target: np.ndarray, evaluation: str) -> list[tuple]:
    """(history, target) of every user `evaluation` covers, for models scored on the driver."""
    pick = evaluation_part(evaluation)
    users = evaluation_users(cold_target, evaluation)
    return [pick(np.asarray(items)) for items, covered in zip(sequences, users) if covered]
