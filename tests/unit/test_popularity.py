import numpy as np
import pytest

from qbr_dist.seqrec.examples import evaluation_examples
from qbr_dist.seqrec.metrics import evaluate_examples
from qbr_dist.seqrec.popularity import batch_counts, popularity_scorer, summed_counts, training_counts

NUM_ITEMS = 7
# Training parts (all but the last two): [1, 1, 2], [1, 2, 3], [1, 4]
# -> counts 1:4, 2:2, 3:1, 4:1, 5..7:0
SEQUENCES = [np.array([1, 1, 2, 3, 2]), np.array([1, 2, 3, 4, 1]), np.array([1, 4, 5, 6])]


def evaluate(split, exclude_history=False, chunk_size=3, cold_target=(False, False, False), users_per_batch=4096):
    counts = training_counts(SEQUENCES, NUM_ITEMS)
    examples = evaluation_examples(SEQUENCES, np.array(cold_target), split)
    return evaluate_examples(examples, popularity_scorer(counts), num_items=NUM_ITEMS, chunk_size=chunk_size,
                             exclude_history=exclude_history, users_per_batch=users_per_batch)


def test_training_counts_use_only_the_training_part():
    counts = training_counts(SEQUENCES, NUM_ITEMS)
    assert counts.tolist() == [0, 4, 2, 1, 1, 0, 0, 0]


def test_per_batch_counts_sum_to_the_training_counts():
    partial = [batch_counts({"items": part}) for part in (SEQUENCES[:2], SEQUENCES[2:], [])]
    merged = {name: np.concatenate([p[name] for p in partial]) for name in ("item", "count")}  # an item twice
    assert summed_counts([merged], NUM_ITEMS).tolist() == training_counts(SEQUENCES, NUM_ITEMS).tolist()


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_test_split_by_hand(chunk_size):
    # targets 2, 1, 6 -> ranks 2, 1, 7 (item 6 ties with 5 and 7 at zero; ties count against it)
    metrics = evaluate("test", chunk_size=chunk_size)
    assert metrics["HR@5"] == pytest.approx(2 / 3)
    assert metrics["HR@10"] == pytest.approx(1.0)
    assert metrics["MRR"] == pytest.approx((1 / 2 + 1 + 1 / 7) / 3)


def test_valid_split_ties_count_against_the_target():
    # targets 3, 4, 5 -> ranks 4, 4 (3 and 4 tie at one count), 7
    metrics = evaluate("valid")
    assert metrics["HR@5"] == pytest.approx(2 / 3)
    assert metrics["MRR"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 7) / 3)


def test_excluding_history_by_hand():
    # histories [1,1,2,3], [1,2,3,4], [1,4,5]; targets 2, 1, 6 -> ranks 1, 1, 4 (2 and 3 beat 6, 7 ties)
    metrics = evaluate("test", exclude_history=True)
    assert metrics["HR@5"] == pytest.approx(1.0)
    assert metrics["MRR"] == pytest.approx((1 + 1 + 1 / 4) / 3)


def test_users_in_batches_give_the_same_means():
    assert evaluate("test", users_per_batch=1) == pytest.approx(evaluate("test"))


def test_cold_and_warm_test_users_are_evaluated_apart():
    cold_target = (False, True, True)  # targets 2 | 1, 6: ranks 2 | 1, 7
    assert evaluate("test", cold_target=cold_target)["MRR"] == pytest.approx(1 / 2)
    assert evaluate("test_cold", cold_target=cold_target)["MRR"] == pytest.approx((1 + 1 / 7) / 2)
    assert evaluate("valid", cold_target=cold_target) == evaluate("valid")  # validation covers every user
