"""Every qbr metric, defined once with prometheus-client.

Names start with `qbr_`; labels come only from LABELS (never item ids, never `job`, which
Prometheus sets itself). Serving and discovery build on these objects.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("stage", "level", "rank", "run")
TRAIN_LABELS = ("stage", "rank", "run")

train_loss = Gauge("qbr_train_loss", "Training loss of the latest step", TRAIN_LABELS)
train_samples_per_second = Gauge(
    "qbr_train_samples_per_second", "Training sequences per second on this worker", TRAIN_LABELS
)
train_step_seconds = Histogram(
    "qbr_train_step_seconds", "Wall time of one optimizer step", TRAIN_LABELS,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
train_steps = Counter("qbr_train_steps", "Optimizer steps taken", TRAIN_LABELS)
train_learning_rate = Gauge("qbr_train_learning_rate", "Current learning rate", TRAIN_LABELS)
train_grad_norm = Gauge("qbr_train_grad_norm", "Global gradient norm before clipping", TRAIN_LABELS)
train_epoch = Gauge("qbr_train_epoch", "Epochs finished in the current phase", TRAIN_LABELS)
valid_ndcg10 = Gauge("qbr_valid_ndcg_at_10", "Validation NDCG@10 of the latest evaluation", TRAIN_LABELS)
checkpoint_seconds = Histogram(
    "qbr_checkpoint_seconds", "Wall time to save and report a checkpoint", TRAIN_LABELS,
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
quarantined_records = Counter(
    "qbr_quarantined_records", "Input records skipped and listed in a quarantine file", ("stage", "run")
)


class TrainMeter:
    """Training metrics of one worker, bound to its labels."""

    def __init__(self, *, stage: str, rank: int, run: str):
        labels = {"stage": stage, "rank": str(rank), "run": run}
        self.loss = train_loss.labels(**labels)
        self.samples_per_second = train_samples_per_second.labels(**labels)
        self.step_seconds = train_step_seconds.labels(**labels)
        self.steps = train_steps.labels(**labels)
        self.learning_rate = train_learning_rate.labels(**labels)
        self.grad_norm = train_grad_norm.labels(**labels)
        self.epoch = train_epoch.labels(**labels)
        self.valid_ndcg10 = valid_ndcg10.labels(**labels)
        self.checkpoint_seconds = checkpoint_seconds.labels(**labels)

    def step(self, *, loss: float, samples: int, seconds: float, lr: float, grad_norm: float | None) -> None:
        self.loss.set(loss)
        self.samples_per_second.set(samples / seconds if seconds > 0 else 0.0)
        self.step_seconds.observe(seconds)
        self.steps.inc()
        self.learning_rate.set(lr)
        if grad_norm is not None:
            self.grad_norm.set(grad_norm)
