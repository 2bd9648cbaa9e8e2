import pytest

from qbr_dist.config import load_config
from qbr_dist.seqrec.train_loop import learning_rate, phases


def train_cfg(*overrides):
    return load_config(None, ["train.lr=1.0", "train.finetune_lr=0.5", "train.warmup_steps=10",
                              "train.pretrain_epochs=10", "train.finetune_epochs=2", *overrides]).train


def rate(cfg, phase_name, step, steps_per_epoch):
    phase = {p.name: p for p in phases(cfg)}[phase_name]
    return learning_rate(cfg, phase, step, steps_per_epoch)


def test_linear_warmup_then_linear_decay_to_zero():
    cfg = train_cfg()
    assert rate(cfg, "pretrain", 0, steps_per_epoch=10) == pytest.approx(0.1)
    assert rate(cfg, "pretrain", 9, steps_per_epoch=10) == pytest.approx(1.0 * (1 - 9 / 100))
    assert rate(cfg, "pretrain", 50, steps_per_epoch=10) == pytest.approx(0.5)
    assert rate(cfg, "pretrain", 100, steps_per_epoch=10) == 0.0


def test_finetune_uses_its_own_rate_and_budget():
    cfg = train_cfg()
    assert rate(cfg, "finetune", 10, steps_per_epoch=10) == pytest.approx(0.5 * 0.5)


def test_constant_schedule_only_warms_up():
    cfg = train_cfg("train.lr_schedule='constant'")
    assert rate(cfg, "pretrain", 4, steps_per_epoch=10) == pytest.approx(0.5)
    assert rate(cfg, "pretrain", 99, steps_per_epoch=10) == 1.0


def test_stream_seeds_differ_per_step_and_repeat_per_stream():
    from qbr_dist.train.runtime import stream_seed

    seeds = {stream_seed(0, phase, epoch, batch) for phase in range(2) for epoch in range(5) for batch in range(100)}
    assert len(seeds) == 1000 and all(0 <= s < 2**62 for s in seeds)
    assert stream_seed(3, 1, 4) == stream_seed(3, 1, 4)
