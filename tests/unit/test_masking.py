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
