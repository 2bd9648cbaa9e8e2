import math

import pytest
import torch

from qbr_dist.seqrec.bert4rec import BERT4Rec, SemanticTokens
from qbr_dist.seqrec.sampled_softmax import NegativeSampler, sampled_softmax_loss


def test_log_q_corrected_loss_by_hand():
    # 4 items, counts 1, 0, 2, 5 -> smoothed 2, 1, 3, 6 -> q = 2/12, 1/12, 3/12, 6/12; K = 2, so K q = 1/3, 1/6, 1/2, 1.
    sampler = NegativeSampler(torch.tensor([0.0, 1, 0, 2, 5]), negatives=2)
    assert sampler.q.tolist() == pytest.approx([0, 2 / 12, 1 / 12, 3 / 12, 6 / 12])
    # One row: target item 1 scored 2.0, negatives items 4 and 2 scored 1.0 and -1.0.
    # Corrected logits: 2 - log(1/3) = 2 + log 3, 1 - log(1) = 1, -1 - log(1/6) = -1 + log 6.
    loss = sampled_softmax_loss(torch.tensor([2.0]), torch.tensor([[1.0, -1.0]]), torch.tensor([1]),
                                torch.tensor([4, 2]), sampler.log_kq)
    logits = [2 + math.log(3), 1.0, -1 + math.log(6)]
    expected = -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.20065, abs=1e-5)


def test_a_negative_equal_to_the_target_is_left_out():
    log_kq = torch.zeros(5)
    # Row 0's target (3) was also drawn as the first negative: only the other negative competes.
    loss = sampled_softmax_loss(torch.tensor([1.0, 1.0]), torch.tensor([[5.0, 0.0], [5.0, 0.0]]), torch.tensor([3, 2]),
                                torch.tensor([3, 4]), log_kq)
    row0 = -1.0 + math.log(math.exp(1.0) + math.exp(0.0))
    row1 = -1.0 + math.log(math.exp(1.0) + math.exp(5.0) + math.exp(0.0))
    assert loss.item() == pytest.approx(row0 + row1, rel=1e-6)


def test_sampler_is_deterministic_per_seed_and_follows_q():
    counts = torch.tensor([0.0, 99, 0, 49, 19, 29])  # smoothed 100, 1, 50, 20, 30 over 201
    sampler = NegativeSampler(counts, negatives=200_000)
    draw = sampler.draw(torch.Generator().manual_seed(3))
    assert torch.equal(draw, sampler.draw(torch.Generator().manual_seed(3)))
    assert not torch.equal(draw, sampler.draw(torch.Generator().manual_seed(4)))
    assert draw.min() >= 1 and draw.max() <= 5
    frequencies = torch.bincount(draw, minlength=6).double() / len(draw)
    assert frequencies[0] == 0
    assert torch.allclose(frequencies[1:], sampler.q[1:], atol=0.005)


def test_sampler_never_draws_excluded_items():
    counts = torch.tensor([0.0, 99, 0, 49, 19, 29])
    excluded = torch.tensor([False, False, True, False, False, True])  # items 2 and 5: the newest one too
    sampler = NegativeSampler(counts, negatives=200_000, excluded=excluded)
    assert sampler.q.tolist() == pytest.approx([0, 100 / 170, 0, 50 / 170, 20 / 170, 0])
    draw = sampler.draw(torch.Generator().manual_seed(3))
    assert not excluded[draw].any()
    assert set(draw.tolist()) == {1, 3, 4}
    assert sampler.last == 4  # where a cumulative sum rounded below 1 sends the top of [0, 1)


def id_model():
    torch.manual_seed(0)
    return BERT4Rec(num_items=20, hidden=16, layers=1, heads=2, max_len=6, dropout=0.0)


def semantic_model():
    torch.manual_seed(0)
    codes = torch.tensor([[0, 0, 0], [1, 2, 0], [1, 2, 1], [3, 0, 0], [0, 1, 0], [2, 3, 0], [3, 3, 0]])
    tokens = SemanticTokens(codes=codes, code_sizes=[4, 4, 2], hidden=16, hybrid=True)
    return BERT4Rec(num_items=6, hidden=16, layers=1, heads=2, max_len=6, dropout=0.0, tokens=tokens)


@pytest.mark.parametrize("make", [id_model, semantic_model], ids=["id", "semantic"])
def test_scoring_chunked_and_of_given_items_match_full_scoring(make):
    m = make()
    n = m.num_items
    with torch.no_grad():
        for name, param in m.tokens.named_parameters():
            if "bias" in name:
                param.normal_()
    hidden = torch.randn(3, 16)
    full = m.score_items(hidden)
    assert full.shape == (3, n)
    chunked = torch.cat([m.score_items(hidden, s, min(s + 4, n + 1)) for s in range(1, n + 1, 4)], dim=1)
    assert torch.allclose(full, chunked)
    items = torch.tensor([5, 2, 2, n])
    assert torch.allclose(m.score_given(hidden, items), full[:, items - 1])
    own = torch.tensor([3, 1, n])
    assert torch.allclose(m.score_own(hidden, own), full[torch.arange(3), own - 1])


@pytest.mark.parametrize("make", [id_model, semantic_model], ids=["id", "semantic"])
def test_sampled_softmax_training_lowers_the_loss(make):
    m = make()
    n, mask = m.num_items, m.mask_token
    seq = torch.tensor([[0, 1, 2, 3, 4, mask], [5, 6, 1, mask, 2, 3], [0, 0, 4, 3, 2, mask]])
    labels = torch.zeros_like(seq)
    labels[0, 5], labels[1, 3], labels[2, 5] = 5, 4, 1
    sampler = NegativeSampler(torch.arange(n + 1).double(), negatives=4)

    def loss(step):
        return m(seq, labels, sampler.draw(torch.Generator().manual_seed(step)), sampler.log_kq)

    held_out = [loss(1000 + s).item() for s in range(5)]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for step in range(30):
        opt.zero_grad()
        loss(step).backward()
        opt.step()
    assert sum(loss(1000 + s).item() for s in range(5)) < sum(held_out) / 2


def test_every_rank_draws_the_same_negatives_for_a_step():
    from qbr_dist.seqrec.train_loop import _negatives

    sampler = NegativeSampler(torch.ones(101), negatives=16)
    step, other = _negatives(sampler, (0, 1, 2, 3)), _negatives(sampler, (0, 1, 2, 4))
    assert torch.equal(step["negatives"], _negatives(sampler, (0, 1, 2, 3))["negatives"])
    assert not torch.equal(step["negatives"], other["negatives"])
    assert _negatives(None, (0, 1, 2, 3)) == {}
