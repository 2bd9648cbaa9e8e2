"""Integration fixtures: a small real Ray cluster in this process, stopped after the module."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from qbr_dist import artifacts


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encode_dir(tmp_path_factory):
    """An encode-stage artifact: 500 items in two files, clustered text vectors (3 x 4 planted blobs)."""
    folder = tmp_path_factory.mktemp("encode")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 8)) * 4
    vectors = (centres[rng.integers(12, size=500)] + rng.normal(scale=0.2, size=(500, 8))).astype(np.float32)
    for part, rows in enumerate((slice(0, 230), slice(230, 500))):
        ids = [f"item{i}" for i in range(500)][rows]
        pq.write_table(pa.table({
            "item_id": ids,
            "text_emb": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), 8),
            "image_emb": pa.nulls(len(ids), pa.list_(pa.float32())), "has_image": [False] * len(ids),
        }), folder / f"shard-{part:06d}.parquet")
    artifacts.write_manifest(folder, {"stage": "encode"}, outputs=["shard-000000.parquet", "shard-000001.parquet"],
                             rows={"items": 500, "with_text": 500, "with_image": 0})
    return folder


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
