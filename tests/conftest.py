"""Shared test helpers: tiny synthetic interaction data with a learnable pattern."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def synthetic_interactions(users: int = 48, items: int = 30, seed: int = 0) -> pa.Table:
    """Each user walks the catalog in steps of 1 or 2 from a random start: a pattern worth learning."""
    rng = np.random.default_rng(seed)
    rows = {"user_id": [], "item_id": [], "timestamp": []}
    for user in range(users):
        current = int(rng.integers(items))
        for t in range(int(rng.integers(6, 16))):
            rows["user_id"].append(f"u{user}")
            rows["item_id"].append(f"i{current}")
            rows["timestamp"].append(float(1000 + t))
            current = (current + int(rng.integers(1, 3))) % items
    return pa.table(rows)


@pytest.fixture
def interactions_file(tmp_path):
    path = tmp_path / "interactions.parquet"
    pq.write_table(synthetic_interactions(), path)
    return path
