"""Shared test helpers: tiny synthetic interaction data with a learnable pattern, a local HTTP server,
and one uninterrupted tiny run through every tokenizer stage that several test folders check."""
from __future__ import annotations

import contextlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

TINY_VIT = Path(__file__).parent / "fixtures" / "qbr-tiny-vit.json"  # random-initialised on purpose


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


class QuietHandler(BaseHTTPRequestHandler):
    """Request handler base for test servers: no request log, a helper to send a 200 body."""

    def send_body(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def synth_catalog(tmp_path_factory) -> Path:
    """A small synthetic multimodal catalog (`qbr data synth`): 240 items, 160 users, prebuilt shards."""
    from qbr_dist.data import synth

    out = tmp_path_factory.mktemp("synth")
    synth.synthesize(synth.SynthSpec(items=240, users=160, mean_length=8), out)
    return out


def tokenizer_run_overrides(root: Path, catalog: Path) -> list[str]:
    """A tiny `qbr run` through every stage: a 10 % cold-item split (so retokenization runs), MiniLM
    text and a tiny random-initialised ViT (on purpose), fusion, 2 x 8 codebooks, BERT4Rec and
    Q-BERT4Rec on 2 workers with a checkpoint every 4 steps; fp32, no dropout (fixed randomness)."""
    from qbr_dist.data import synth

    return [
        f"run.root='{root}'", "run.name=tok", "data.dataset=files", "data.cold_fraction=0.1",
        f"data.interactions='{catalog / synth.INTERACTIONS}'", f"data.catalog='{catalog / synth.CATALOG}'",
        "data.text_fields=['title', 'description']", f"shards.prebuilt_dir='{catalog / synth.SHARDS}'",
        "encode.image_model=qbr-tiny-vit", f"encode.image_model_config='{TINY_VIT}'",
        "encode.image_random_init=true", "structure.fields=['category', 'brand']", "structure.dim=8",
        "fusion.dim=16", "fusion.epochs=2", "fusion.batch_size=64", "fusion.warmup_steps=2",
        "quant.levels=2", "quant.codebook_size=8", "quant.iterations=10",
        "model.hidden=16", "model.layers=1", "model.heads=2", "model.max_len=8", "model.dropout=0.0",
        "train.batch_size=32", "train.pretrain_epochs=3", "train.finetune_epochs=1", "train.eval_every=1",
        "train.warmup_steps=2", "train.patience=10",
        "runtime.num_workers=2", "runtime.checkpoint_every=4", "runtime.max_failures=1", "runtime.ray_num_cpus=2",
        "runtime.object_store_mb=256", "runtime.dashboard=false", "obs.enabled=false",
    ]


@pytest.fixture(scope="session")
def tokenized_run(tmp_path_factory, synth_catalog):
    """One uninterrupted run of `tokenizer_run_overrides`, in this process on its own embedded Ray
    (stopped after); returns its config. test_tokenizer checks its artifacts; the reliability tests
    compare interrupted runs of the same config with it."""
    import ray

    from qbr_dist import pipeline
    from qbr_dist.config import load_config

    assert not ray.is_initialized(), "the shared run starts its own Ray"
    cfg = load_config(None, tokenizer_run_overrides(tmp_path_factory.mktemp("tokenized"), synth_catalog))
    try:
        pipeline.run_pipeline(cfg)
    finally:
        ray.shutdown()
    return cfg
