import torch

from qbr_dist.seqrec.masking import last_item_mask, mix_per_sequence, random_item_mask

MASK = 99


def batch():
    return torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])


def test_random_mask_only_touches_real_items_and_labels_them():
    seq = batch()
    inputs, labels = random_item_mask(seq, ratio=0.5, mask_token=MASK, generator=torch.Generator().manual_seed(1))
    masked = inputs == MASK
    assert not masked[seq == 0].any()
    assert torch.equal(labels[masked], seq[masked])
    assert (labels[~masked] == 0).all()
    assert torch.equal(inputs[~masked], seq[~masked])


def test_every_sequence_gets_at_least_one_mask():
    seq = batch()
    inputs, _ = random_item_mask(seq, ratio=1e-9, mask_token=MASK, generator=torch.Generator().manual_seed(0))
    assert (inputs == MASK).any(dim=1).all()


def test_ratio_is_respected_on_average():
    seq = torch.randint(1, 50, (400, 50))
    inputs, _ = random_item_mask(seq, ratio=0.2, mask_token=MASK, generator=torch.Generator().manual_seed(0))
    assert abs((inputs == MASK).float().mean().item() - 0.2) < 0.01


def test_same_generator_seed_same_masks_different_seed_different_masks():
    seq = torch.randint(1, 50, (64, 20))
    a = random_item_mask(seq, ratio=0.3, mask_token=MASK, generator=torch.Generator().manual_seed(5))[0]
    b = random_item_mask(seq, ratio=0.3, mask_token=MASK, generator=torch.Generator().manual_seed(5))[0]
    c = random_item_mask(seq, ratio=0.3, mask_token=MASK, generator=torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_last_item_mask():
    seq = batch()
    inputs, labels = last_item_mask(seq, mask_token=MASK)
    assert (inputs[:, -1] == MASK).all()
    assert torch.equal(labels[:, -1], seq[:, -1])
    assert (labels[:, :-1] == 0).all() and torch.equal(inputs[:, :-1], seq[:, :-1])


def test_mix_per_sequence_picks_rows():
    seq = batch()
    random = random_item_mask(seq, ratio=0.5, mask_token=MASK, generator=torch.Generator().manual_seed(3))
    last = last_item_mask(seq, mask_token=MASK)
    inputs, labels = mix_per_sequence(random, last, torch.tensor([False, True, False]))
    assert torch.equal(inputs[1], last[0][1]) and torch.equal(labels[1], last[1][1])
    assert torch.equal(inputs[[0, 2]], random[0][[0, 2]]) and torch.equal(labels[[0, 2]], random[1][[0, 2]])


from qbr_dist.seqrec.masking import STRATEGIES, mixed_mask, multi_region_mask, span_mask, tail_mask  # noqa: E402


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    out, start = [], None
    for i, value in enumerate(row.tolist() + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            out.append((start, i - start))
            start = None
    return out


def test_span_is_one_contiguous_run_of_real_items_with_geometric_lengths():
    seq = torch.randint(1, 50, (2000, 30))
    seq[:, :10] = 0  # 20 real items each
    inputs, labels = span_mask(seq, mean_span=3.0, mask_token=MASK, generator=torch.Generator().manual_seed(0))
    masked = inputs == MASK
    assert not masked[:, :10].any() and all(len(runs(row)) == 1 for row in masked)
    assert torch.equal(labels[masked], seq[masked])
    assert abs(masked.sum(1).float().mean().item() - 3.0) < 0.3  # geometric mean 3 (rarely capped at 20)


def test_tail_masks_the_last_k_real_items():
    inputs, _ = tail_mask(batch(), k=2, mask_token=MASK)
    assert (inputs == MASK).tolist() == [[False] * 4 + [True] * 2, [False] * 4 + [True] * 2, [False] * 5 + [True]]


def test_multi_region_spans_are_disjoint_and_one_per_segment():
    seq = torch.randint(1, 50, (500, 24))
    inputs, _ = multi_region_mask(seq, regions=3, mean_span=2.0, mask_token=MASK,
                                  generator=torch.Generator().manual_seed(3))
    for row in inputs == MASK:  # 24 real items, 3 segments of 8: exactly one run inside each
        assert all(len(runs(row[segment * 8:(segment + 1) * 8])) == 1 for segment in range(3))


def test_mixture_follows_the_weights_and_reports_the_choice():
    seq = torch.randint(1, 50, (4000, 20))
    g = torch.Generator().manual_seed(0)
    makers = {"random": lambda: random_item_mask(seq, ratio=0.2, mask_token=MASK, generator=g),
              "tail": lambda: tail_mask(seq, k=1, mask_token=MASK)}
    inputs, labels, chosen = mixed_mask(seq, weights={"random": 0.5, "tail": 0.5}, makers=makers,
                                        generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(chosen, minlength=len(STRATEGIES))
    assert counts[STRATEGIES.index("span")] == 0 and abs(counts[0].item() / 4000 - 0.5) < 0.03
    tail_rows = chosen == STRATEGIES.index("tail")
    assert ((inputs[tail_rows] == MASK).sum(1) == 1).all() and (inputs[tail_rows, -1] == MASK).all()
    assert torch.equal(labels[inputs == MASK], seq[inputs == MASK])


def test_mixture_refuses_an_unknown_strategy():
    import pytest

    with pytest.raises(ValueError, match="unknown masking strategies"):
        mixed_mask(batch(), weights={"spam": 1.0}, makers={}, generator=torch.Generator())


def test_training_masks_keep_bert4rec_random_masking_by_default_and_follow_the_weights():
    from qbr_dist.config import TrainConfig
    from qbr_dist.seqrec.train_loop import _mask

    seq = torch.randint(1, 50, (64, 10))
    cfg = TrainConfig()
    inputs, labels, chosen = _mask(seq, "pretrain", cfg, MASK, torch.Generator().manual_seed(3),
                                   torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(3)  # the same stream as before strategies existed
    random = random_item_mask(seq, ratio=cfg.mask_ratio, mask_token=MASK, generator=g)
    expected = mix_per_sequence(random, last_item_mask(seq, mask_token=MASK),
                                torch.rand(len(seq), generator=g) < cfg.pretrain_last_item_prob)
    assert torch.equal(inputs, expected[0]) and torch.equal(labels, expected[1]) and (chosen == 0).all()

    tail_only = TrainConfig(mask_weights=[0.0, 0.0, 1.0, 0.0], mask_tail=3)
    inputs, _, chosen = _mask(seq, "pretrain", tail_only, MASK, torch.Generator(), torch.Generator())
    assert (inputs[:, -3:] == MASK).all() and not (inputs[:, :-3] == MASK).any() and (chosen == 2).all()
    assert _mask(seq, "finetune", cfg, MASK, torch.Generator(), torch.Generator())[2] is None
