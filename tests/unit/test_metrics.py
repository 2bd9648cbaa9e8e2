import math

import pytest
import torch

from qbr_dist.seqrec.metrics import METRIC_NAMES, metric_means, metric_sums, target_ranks


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
