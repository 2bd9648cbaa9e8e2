import math

import numpy as np
import pytest
import torch

from qbr_dist.seqrec.metrics import METRIC_NAMES, metric_means, metric_sums, paired_bootstrap, target_ranks, user_metrics


def ranks_for(scores: list[list[float]], targets: list[int], chunk_size=2, history=None):
    table = torch.tensor(scores)  # column j holds item j + 1
    return target_ranks(
        lambda s, e: table[:, s - 1:e - 1], torch.tensor(targets),
        first_item=1, end_item=table.shape[1] + 1, chunk_size=chunk_size,
        history=None if history is None else torch.tensor(history),
    ).tolist()


def test_rank_counts_higher_items():
    assert ranks_for([[0.1, 0.9, 0.5, 0.3]], [2]) == [1]
    assert ranks_for([[0.1, 0.9, 0.5, 0.3]], [4]) == [3]
    assert ranks_for([[0.1, 0.9, 0.5, 0.3]], [1]) == [4]


def test_ties_count_against_the_target():
    assert ranks_for([[0.5, 0.5, 0.5, 0.1]], [2]) == [3]
    assert ranks_for([[1.0, 1.0, 1.0, 1.0]], [1]) == [4]


def test_nan_scores_count_against_the_target():
    nan = float("nan")
    assert ranks_for([[nan, nan, nan, nan]], [2]) == [4]  # a diverged model ranks every target last
    assert ranks_for([[0.1, 0.9, nan, 0.3], [0.1, nan, 0.5, 0.3]], [2, 3]) == [2, 2]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 100])
def test_chunking_does_not_change_ranks(chunk_size):
    torch.manual_seed(0)
    scores = torch.randn(6, 11).tolist()
    targets = [1, 5, 11, 3, 3, 7]
    assert ranks_for(scores, targets, chunk_size=chunk_size) == ranks_for(scores, targets, chunk_size=11)


def test_history_items_can_be_left_out():
    scores = [[0.9, 0.8, 0.1, 0.7]]
    assert ranks_for(scores, [4]) == [3]
    assert ranks_for(scores, [4], history=[[0, 1, 2]]) == [1]  # 0 is padding
    assert ranks_for(scores, [4], history=[[4, 1]]) == [2]  # the target itself is never left out


def test_target_outside_catalog_is_an_error():
    with pytest.raises(ValueError, match="every target"):
        ranks_for([[0.1, 0.2]], [3])


def test_metric_values_by_hand():
    sums = metric_sums(torch.tensor([1, 3, 7, 15, 40]))
    means = metric_means(sums, 5)
    assert set(means) == set(METRIC_NAMES)
    assert means["HR@5"] == pytest.approx(2 / 5)
    assert means["HR@10"] == pytest.approx(3 / 5)
    assert means["HR@20"] == pytest.approx(4 / 5)
    assert means["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 5)
    assert means["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8)) / 5)
    assert means["NDCG@20"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(8) + 1 / math.log2(16)) / 5)
    assert means["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 15 + 1 / 40) / 5)


def test_no_users_is_an_error():
    with pytest.raises(ValueError):
        metric_means(metric_sums(torch.tensor([1])), 0)


def test_user_metrics_sum_to_the_metric_sums():
    ranks = torch.tensor([1, 3, 11, 25, 2])
    values = user_metrics(ranks)
    assert {name: float(v.sum()) for name, v in values.items()} == metric_sums(ranks)
    assert values["NDCG@10"].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0, 1 / math.log2(3)])


def ratio(a, b):
    return a / b


def test_paired_bootstrap_of_a_model_twice_as_good_is_exactly_two():
    rng = np.random.default_rng(1)
    second = rng.random((3, 400))
    result = paired_bootstrap(2 * second, second, ratio, resamples=500)
    assert result["value"] == pytest.approx(2.0)
    assert result["ci95"] == pytest.approx([2.0, 2.0])


def test_paired_bootstrap_draws_the_same_users_for_every_run_and_both_models():
    """Run 1 is good on even users and run 2 on odd ones, so their sum is the same for every user: only draws
    shared across runs give a zero-width interval."""
    even = np.tile([1.0, 0.0], 300)
    first = np.stack([even, 1 - even])
    second = np.full((2, 600), 0.25)
    assert paired_bootstrap(first, second, ratio, resamples=500)["ci95"] == pytest.approx([2.0, 2.0])


def test_paired_bootstrap_interval_holds_the_value_and_narrows_with_more_users():
    rng = np.random.default_rng(2)

    def width(users):
        first, second = rng.random((2, users)), rng.random((2, users))
        result = paired_bootstrap(first, second, np.subtract, resamples=2000, seed=3)
        low, high = result["ci95"]
        assert low < result["value"] < high
        assert result["value"] == pytest.approx(first.mean() - second.mean())  # a difference of means over runs
        return high - low

    assert width(4000) < width(250) / 2


def test_paired_bootstrap_is_seeded_and_the_same_in_any_chunks():
    rng = np.random.default_rng(4)
    first, second = rng.random((3, 50)), rng.random((3, 50)) + 0.5
    whole = paired_bootstrap(first, second, ratio, resamples=1001, seed=7, chunk=1001)
    assert paired_bootstrap(first, second, ratio, resamples=1001, seed=7, chunk=100) == whole
    assert paired_bootstrap(first, second, ratio, resamples=1001, seed=8) != whole
