"""Fusion's inference pass under a real DeepSpeed ZeRO-3 engine (one gloo rank in a subprocess, no Ray):
ZeRO-3's module hooks release a layer's gathered parameters after its forward, so a forward inside a
`GatheredParameters` block once left the ID rows and the saved model empty (size-0 tensors)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import sys
    from dataclasses import asdict
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist

    from qbr_dist.config import FusionConfig, RuntimeConfig
    from qbr_dist.fusion.export import MODEL, load_model
    from qbr_dist.fusion.train_loop import build_model, fused_part, write_fused
    from qbr_dist.train.engine import init_engine

    out, items = Path(sys.argv[1]), 6
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    arrays = {"text": rng.normal(size=(items + 1, 4)).astype(np.float32), "text_present": np.ones(items + 1, bool),
              "image": np.zeros((items + 1, 1), np.float32), "image_present": np.zeros(items + 1, bool),
              "cooc": rng.normal(size=(items + 1, 3)).astype(np.float32), "cooc_present": np.ones(items + 1, bool),
              "tokens": rng.integers(1, 5, (items + 1, 3)).astype(np.int32)}
    np.save(out / "seen.npy", np.array([False] + [True] * items))
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(items)]}), out / "items.parquet")
    cfg = FusionConfig(dim=8)
    model = build_model(cfg, arrays, items, 5)
    engine = init_engine(model, runtime=RuntimeConfig(zero_stage=3, num_workers=1), micro_batch=2, lr=1e-3,
                         weight_decay=0.0)
    write_fused(model, arrays, {"fusion": asdict(cfg), "num_items": items, "seen_file": str(out / "seen.npy"),
                                "items_file": str(out / "items.parquet"), "vocab_size": 5},
                out, rank=0, world=1, device=engine.device)
    table = pq.read_table(fused_part(out, 0))
    loaded, _ = load_model(out / MODEL)
    print("rows", table.num_rows, "id_vectors", sum(v is not None for v in table.column("id_vector").to_pylist()),
          "model_ok", all(t.numel() for t in loaded.state_dict().values()))
""")


def test_fusion_writes_its_vectors_and_model_under_zero3(tmp_path):
    env = os.environ | {"DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                        "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "rows 6 id_vectors 6 model_ok True"
