import torch

from qbr_dist.seqrec.bert4rec import BERT4Rec


def model(**kw):
    torch.manual_seed(0)
    return BERT4Rec(num_items=20, hidden=16, layers=1, heads=2, max_len=6, dropout=0.0, **kw)


def test_chunked_item_scores_match_full_scores():
    m = model()
    hidden = m.encode(torch.tensor([[0, 1, 2, 3, 4, 21]]))[:, -1]
    full = m.score_items(hidden)
    assert full.shape == (1, 20)
    parts = torch.cat([m.score_items(hidden, s, min(s + 7, 21)) for s in range(1, 21, 7)], dim=1)
    assert torch.allclose(full, parts)


def test_scores_use_the_tied_item_table():
    m = model()
    hidden = torch.randn(2, 16)
    expected = hidden @ m.item_emb.weight[1:21].T + m.item_bias[1:21]
    assert torch.allclose(m.score_items(hidden), expected)


def test_loss_sums_over_masked_positions_and_trains():
    m = model()
    seq = torch.tensor([[0, 1, 2, 3, 4, 21], [5, 6, 7, 21, 9, 10]])
    labels = torch.tensor([[0, 0, 0, 0, 0, 5], [0, 0, 0, 8, 0, 0]])
    loss = m(seq, labels)
    assert loss.ndim == 0 and loss.item() > 0
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        m(seq, labels).backward()
        opt.step()
    assert m(seq, labels).item() < loss.item() / 4


def test_padding_does_not_change_the_last_position():
    m = model().eval()
    short = m.encode(torch.tensor([[0, 0, 0, 3, 4, 21]]))[:, -1]
    other_pad = m.encode(torch.tensor([[0, 0, 0, 3, 4, 21]]))[:, -1]
    assert torch.allclose(short, other_pad)
