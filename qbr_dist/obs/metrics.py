"""Every qbr metric, defined once with prometheus-client.

Names start with `qbr_`; labels come only from LABELS (never item ids, never `job`, which
Prometheus sets itself). Serving and discovery build on these objects.
"""
from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("stage", "level", "rank", "run")
TRAIN_LABELS = ("stage", "rank", "run")  # rank: the Ray Train worker rank, or a Ray Data actor's process id
LEVEL_LABELS = ("stage", "level", "run")
STAGE_LABELS = ("stage", "run")

train_loss = Gauge("qbr_train_loss", "Training loss of the latest step", TRAIN_LABELS)
train_samples_per_second = Gauge(
    "qbr_train_samples_per_second",
    "Training examples per second on this worker (sequences; fusion: item pairs; RQ-VAE: items)", TRAIN_LABELS
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
    "qbr_quarantined_records", "Input records skipped and listed in a quarantine file", STAGE_LABELS
)
input_records = Counter("qbr_input_records", "Input records read (each accepted or quarantined)", STAGE_LABELS)

encode_items = Counter("qbr_encode_items", "Items encoded (quarantined ones left out), counted by the job's driver",
                       STAGE_LABELS)
encode_batch_seconds = Histogram(
    "qbr_encode_batch_seconds", "Wall time of one encoder batch on this actor", TRAIN_LABELS,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
retokenized_items = Counter(
    "qbr_retokenized_items", "Rows the retokenize job's actors coded, counted by its driver (the rows of an item id "
    "the table repeats included, which the driver then quarantines)", STAGE_LABELS
)

kmeans_inertia = Gauge("qbr_kmeans_inertia", "Residual k-means inertia of the level's final codebook", LEVEL_LABELS)
codebook_usage = Gauge("qbr_codebook_usage", "Share of the level's codes used by at least one item", LEVEL_LABELS)
codebook_perplexity = Gauge("qbr_codebook_perplexity", "Perplexity of the level's code distribution", LEVEL_LABELS)
codebook_dead_codes = Gauge("qbr_codebook_dead_codes", "Codes of the level no item uses", LEVEL_LABELS)
collision_rate = Gauge("qbr_collision_rate", "Share of items whose level codes collide, before the suffix",
                       STAGE_LABELS)

stage_start = Gauge("qbr_stage_start_timestamp_seconds", "When the stage last started (Unix time)", STAGE_LABELS)
stage_end = Gauge("qbr_stage_end_timestamp_seconds", "When the stage last ended (Unix time)", STAGE_LABELS)
stage_status = Gauge("qbr_stage_status", "0 running, 1 succeeded, 2 skipped (up to date), 3 failed", STAGE_LABELS)
RUNNING, SUCCEEDED, SKIPPED, FAILED = 0, 1, 2, 3


class TrainMeter:
    """Training metrics of one worker, bound to its labels."""

    def __init__(self, *, stage: str, rank: int, run: str, epoch: int = 0):
        """`epoch`: epochs already finished (a restarted worker shows where it resumed, not 0)."""
        labels = self.labels = {"stage": stage, "rank": str(rank), "run": run}
        self.loss = train_loss.labels(**labels)
        self.samples_per_second = train_samples_per_second.labels(**labels)
        self.step_seconds = train_step_seconds.labels(**labels)
        self.steps = train_steps.labels(**labels)
        self.learning_rate = train_learning_rate.labels(**labels)
        self.grad_norm = train_grad_norm.labels(**labels)
        self.epoch = train_epoch.labels(**labels)
        self.checkpoint_seconds = checkpoint_seconds.labels(**labels)
        self.epoch.set(epoch)

    def validated(self, ndcg10: float) -> None:
        """Set on the first evaluation: a series made with the others would show 0 for stages that never evaluate."""
        valid_ndcg10.labels(**self.labels).set(ndcg10)

    def step(self, *, loss: float, samples: int, seconds: float, lr: float, grad_norm: float | None) -> None:
        self.loss.set(loss)
        self.samples_per_second.set(samples / seconds if seconds > 0 else 0.0)
        self.step_seconds.observe(seconds)
        self.steps.inc()
        self.learning_rate.set(lr)
        if grad_norm is not None:
            self.grad_norm.set(grad_norm)


def actor_labels(spec, *, stage: str) -> dict:
    """Labels of a Ray Data actor's metrics (`spec`: its obs Endpoint or None); its process id stands in for a rank."""
    import os

    return {"stage": stage, "rank": str(os.getpid()), "run": spec.run if spec else ""}


def stage_began(run: str, stage: str, *, skipped: bool) -> None:
    now = time.time()
    stage_start.labels(stage=stage, run=run).set(now)
    if skipped:
        stage_end.labels(stage=stage, run=run).set(now)
    stage_status.labels(stage=stage, run=run).set(SKIPPED if skipped else RUNNING)


def stage_ended(run: str, stage: str, *, failed: bool = False) -> None:
    stage_end.labels(stage=stage, run=run).set(time.time())
    stage_status.labels(stage=stage, run=run).set(FAILED if failed else SUCCEEDED)


def running_stages(run: str) -> list[str]:
    """Stages of `run` whose status is still running in this process."""
    return [sample.labels["stage"] for metric in stage_status.collect() for sample in metric.samples
            if sample.labels["run"] == run and sample.value == RUNNING]


def record_tokenizer(stats: dict, *, stage: str, run: str) -> None:
    """Per-level codebook health and the collision rate, from a quantize stage's statistics."""
    for level in stats["levels"]:
        labels = {"stage": stage, "level": str(level["level"]), "run": run}
        codebook_usage.labels(**labels).set(level["usage"])
        codebook_perplexity.labels(**labels).set(level["perplexity"])
        codebook_dead_codes.labels(**labels).set(level["dead_codes"])
        if "inertia" in level:
            kmeans_inertia.labels(**labels).set(level["inertia"])
    collision_rate.labels(stage=stage, run=run).set(stats["collision_rate"])
