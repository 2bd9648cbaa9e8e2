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
    expected = hidden @ m.tokens.table.weight[1:21].T + m.tokens.bias[1:21]
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


def semantic_model(hybrid=False):
    from qbr_dist.seqrec.bert4rec import SemanticTokens

    torch.manual_seed(0)
    codes = torch.tensor([[0, 0, 0], [1, 2, 0], [1, 2, 1], [3, 0, 0], [0, 1, 0]])  # items 1..4: 2 levels + suffix
    tokens = SemanticTokens(codes=codes, code_sizes=[4, 4, 2], hidden=8, hybrid=hybrid)
    return BERT4Rec(num_items=4, hidden=8, layers=1, heads=2, max_len=6, dropout=0.0, tokens=tokens)


def test_semantic_items_are_sums_of_their_code_vectors():
    m = semantic_model()
    tables = m.tokens.tables
    expected = tables[0].weight[1] + tables[1].weight[2] + tables[2].weight[1]
    assert torch.allclose(m.tokens.vectors(torch.arange(1, 5))[1], expected)  # item 2: codes (1, 2, 1)
    vectors = m.tokens(torch.tensor([[0, 2, 5]]))  # pad, item 2, [MASK]
    assert torch.all(vectors[0, 0] == 0) and torch.allclose(vectors[0, 1], expected)
    assert torch.allclose(vectors[0, 2], m.tokens.mask)


def test_items_sharing_codes_differ_only_by_their_suffix_and_hybrid_adds_ids():
    m = semantic_model()
    first, second = m.tokens.vectors(torch.arange(1, 3))
    assert torch.allclose(first - second, m.tokens.tables[2].weight[0] - m.tokens.tables[2].weight[1])
    hybrid = semantic_model(hybrid=True)
    assert torch.allclose(hybrid.tokens.vectors(torch.arange(1, 2))[0] - hybrid.tokens.ids.table.weight[1],
                          sum(t.weight[c] for t, c in zip(hybrid.tokens.tables, (1, 2, 0))))


def test_untrained_hybrid_items_take_the_mean_id_part_of_their_longest_trained_prefix():
    from qbr_dist.seqrec.bert4rec import SemanticTokens

    # items 1..6: 2 levels + suffix; items 5 and 6 untrained (cold)
    codes = torch.tensor([[0, 0, 0], [1, 2, 0], [1, 2, 1], [1, 3, 0], [2, 0, 0], [1, 2, 2], [3, 1, 0]])
    untrained = torch.tensor([False, False, False, False, False, True, True])
    torch.manual_seed(0)
    tokens = SemanticTokens(codes=codes, code_sizes=[4, 4, 3], hidden=4, hybrid=True, untrained=untrained).eval()
    with torch.no_grad():
        tokens.ids.bias.copy_(torch.arange(8, dtype=torch.float32))
    table, bias = tokens.ids.table.weight, tokens.ids.bias
    part = tokens._id_part(table, torch.arange(7))
    assert torch.equal(part[1:5], table[1:5])  # trained items keep their own
    assert torch.allclose(part[5], (table[1] + table[2]) / 2)  # prefix (1, 2): items 1 and 2
    assert torch.allclose(part[6], table[1:5].mean(0))  # no trained item starts with 3: all trained items
    assert torch.allclose(tokens._id_part(bias, torch.tensor([[5, 6]])), torch.tensor([[1.5, 2.5]]))
    codes_only = SemanticTokens(codes=codes, code_sizes=[4, 4, 3], hidden=4, hybrid=False, untrained=untrained)
    assert codes_only.untrained_ids is None


def test_kept_prefix_means_follow_every_change_of_the_table():
    from qbr_dist.seqrec.bert4rec import SemanticTokens

    codes = torch.tensor([[0, 0, 0], [1, 2, 0], [1, 2, 1], [1, 3, 0], [2, 0, 0], [1, 2, 2], [3, 1, 0]])
    untrained = torch.tensor([False, False, False, False, False, True, True])
    tokens = SemanticTokens(codes=codes, code_sizes=[4, 4, 3], hidden=4, hybrid=True, untrained=untrained).eval()
    table = tokens.ids.table.weight
    with torch.no_grad():
        first = tokens._id_part(table, torch.tensor([5]))
        assert torch.equal(tokens._id_part(table, torch.tensor([5])), first)  # kept: the table did not change
        table.mul_(2)  # an in-place change (an optimizer step, load_state_dict) moves the table's version
        assert torch.allclose(tokens._id_part(table, torch.tensor([5])), 2 * first)
        tokens.load_state_dict({name: 3 * value for name, value in tokens.state_dict().items()})
        assert torch.allclose(tokens._id_part(table, torch.tensor([5])), 6 * first)
    assert tokens.untrained_ids._kept and not tokens.train().eval().untrained_ids._kept  # training drops them
    with_grad = tokens._id_part(table, torch.tensor([5]))  # where gradients flow, computed at the call
    assert with_grad.requires_grad and torch.allclose(with_grad, 6 * first)


def test_with_cold_codes_only_untrained_hybrid_items_are_their_codes_alone():
    from qbr_dist.seqrec.bert4rec import SemanticTokens

    codes = torch.tensor([[0, 0, 0], [1, 2, 0], [1, 2, 1], [2, 0, 0]])
    untrained = torch.tensor([False, False, True, False])
    tokens = SemanticTokens(codes=codes, code_sizes=[4, 4, 2], hidden=4, hybrid=True, untrained=untrained,
                            cold_codes_only=True).eval()
    with torch.no_grad():
        tokens.ids.bias.fill_(1.0)
        for table in tokens.code_biases:
            table.weight.fill_(0.5)
    vectors, biases = tokens.weights(torch.arange(1, 4))
    codes_alone = sum(t.weight[c] for t, c in zip(tokens.tables, (1, 2, 1)))
    assert torch.allclose(vectors[1], codes_alone) and biases[1] == 1.5  # item 2: no ID vector, no ID bias
    assert torch.allclose(vectors[0] - tokens.ids.table.weight[1], sum(t.weight[c] for t, c in
                                                                        zip(tokens.tables, (1, 2, 0))))
    assert biases[0] == 2.5 and biases[2] == 2.5  # trained items keep their ID bias
    assert torch.allclose(tokens.train().weights(torch.tensor([1]))[0], vectors[0])  # training: plain lookup


def test_semantic_model_trains_and_scores_the_catalog():
    m = semantic_model()
    seq, labels = torch.tensor([[0, 1, 3, 5]]), torch.tensor([[0, 0, 0, 4]])
    loss = m(seq, labels)
    loss.backward()
    assert loss.item() > 0 and m.tokens.tables[0].weight.grad is not None
    assert m.score_items(torch.randn(2, 8)).shape == (2, 4)


def test_excluded_items_stay_out_of_the_training_softmax_but_are_ranked_at_evaluation():
    excluded = torch.zeros(21, dtype=torch.bool)
    excluded[[3, 7]] = True
    torch.manual_seed(0)
    kept = BERT4Rec(num_items=20, hidden=16, layers=1, heads=2, max_len=8, dropout=0.0, excluded=excluded)
    torch.manual_seed(0)
    plain = BERT4Rec(num_items=20, hidden=16, layers=1, heads=2, max_len=8, dropout=0.0)
    seq = torch.tensor([[1, 2, 4, 21]])
    labels = torch.tensor([[0, 0, 0, 5]])
    hidden = plain.encode(seq)[0, -1:]
    scores = plain.score_items(hidden)[0]
    others = torch.ones(20, dtype=torch.bool)
    others[[2, 6]] = False
    expected = torch.logsumexp(scores[others], 0) - scores[4]
    assert torch.allclose(kept(seq, labels), expected, atol=1e-5)
    loss = kept(seq, labels)
    loss.backward()
    assert kept.tokens.table.weight.grad[[3, 7]].abs().sum() == 0  # no gradient reaches excluded items
    assert kept.score_items(hidden).shape == (1, 20)  # evaluation still ranks every item


def test_semantic_items_take_their_bias_from_their_codes():
    from qbr_dist.seqrec.bert4rec import SemanticTokens

    tokens = SemanticTokens(codes=torch.tensor([[0, 0], [1, 0], [1, 1], [2, 0]]), code_sizes=[3, 2], hidden=4)
    with torch.no_grad():
        tokens.code_biases[0].weight[:, 0] = torch.tensor([0.0, 1.0, 2.0])
        tokens.code_biases[1].weight[:, 0] = torch.tensor([10.0, 20.0])
    assert tokens.weights(torch.tensor([1, 2, 3]))[1].tolist() == [11.0, 21.0, 12.0]


def test_id_dropout_leaves_out_vector_and_bias_together_and_only_in_training():
    from qbr_dist.seqrec.bert4rec import SemanticTokens

    codes = torch.tensor([[0, 0], [1, 0], [1, 1], [2, 0]])
    torch.manual_seed(0)
    tokens = SemanticTokens(codes=codes, code_sizes=[3, 2], hidden=4, hybrid=True, id_dropout=0.5)
    with torch.no_grad():
        tokens.ids.table.weight.fill_(100.0)
        tokens.ids.bias.fill_(100.0)
    items = torch.randint(1, 4, (4000,))
    vectors, biases = tokens.weights(items)
    with_id = biases > 50
    assert torch.equal(with_id, (vectors > 50).all(-1))  # one draw per lookup covers vector and bias
    assert 0.45 < with_id.float().mean() < 0.55
    assert ((vectors < 50).all(-1) == ~with_id).all()
    torch.manual_seed(1)
    inputs = tokens.vectors(items)  # the input side: vectors only, the same draw
    torch.manual_seed(1)
    assert torch.equal(inputs, tokens.weights(items)[0])
    tokens.eval()
    assert (tokens.weights(items)[1] > 50).all()  # scoring outside training always has the ID part


def test_codebook_rows_keep_each_items_centroid_sum_up_to_one_scale():
    from qbr_dist.seqrec.code_init import INIT_STD, codebook_rows

    torch.manual_seed(0)
    basis = torch.randn(4, 12)  # 12-dim centroids that span 4 directions: a width-4 projection loses nothing
    codebooks = torch.randn(2, 5, 4) @ basis * torch.tensor([1.0, 0.3]).view(2, 1, 1)
    codes = torch.tensor([[0, 3], [4, 1], [2, 2]])
    rows = codebook_rows(codebooks, hidden=4)
    assert rows.shape == (2, 5, 4)
    assert torch.isclose(rows[0].pow(2).mean().sqrt(), torch.tensor(INIT_STD))
    items, projected = (codebooks[0][codes[:, 0]] + codebooks[1][codes[:, 1]],
                        rows[0][codes[:, 0]] + rows[1][codes[:, 1]])
    ratio = (projected @ projected.T) / (items @ items.T)
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), rtol=1e-4)  # one scale: geometry kept
    assert rows[1].norm() < rows[0].norm()  # the residual level stays the smaller one


def test_narrow_codebooks_are_padded_and_start_the_level_tables_only():
    from qbr_dist.seqrec.bert4rec import SemanticTokens
    from qbr_dist.seqrec.code_init import codebook_rows

    rows = codebook_rows(torch.randn(2, 3, 2), hidden=4)
    assert (rows[..., 2:] == 0).all()
    tokens = SemanticTokens(codes=torch.tensor([[0, 0, 0], [1, 2, 0]]), code_sizes=[3, 3, 1], hidden=4,
                            hybrid=True, level_rows=rows)
    assert torch.equal(tokens.tables[0].weight, rows[0]) and torch.equal(tokens.tables[1].weight, rows[1])
    assert tokens.tables[2].weight.abs().sum() > 0  # the disambiguation table starts random
    assert (tokens.ids.table.weight == 0).all()  # an item's ID vector adds nothing at the start
