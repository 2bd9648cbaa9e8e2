"""Integration fixtures: a small real Ray cluster in this process, stopped after the module."""
from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_overrides(root, interactions, name: str, **extra) -> list[str]:
    """A config small enough to train in seconds on 2 CPUs, fp32, no dropout (fixed randomness)."""
    values = {
        "run.root": f"'{root}'", "run.name": name, "data.dataset": "files", "data.interactions": f"'{interactions}'",
        "model.hidden": 16, "model.layers": 1, "model.heads": 2, "model.max_len": 8, "model.dropout": 0.0,
        "train.batch_size": 16, "train.window_stride": 4, "train.pretrain_epochs": 2, "train.finetune_epochs": 1,
        "train.eval_every": 1, "eval.batch_size": 47,  # 48 users: the last batch leaves rank 1 empty
        "train.patience": 10, "runtime.checkpoint_every": 4, "runtime.ray_num_cpus": 2,
        "runtime.object_store_mb": 256, "runtime.dashboard": "false", "run.tokenize": "false", **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]
