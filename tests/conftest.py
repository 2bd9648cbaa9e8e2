"""Shared test helpers: tiny synthetic interaction data with a learnable pattern, a local HTTP server,
and one uninterrupted tiny run through every tokenizer stage that several test folders check."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbr_dist.train.runtime import use_embedded_environment

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
use_embedded_environment()  # the tests' own ray.init calls start Ray as `qbr run` does

TINY_VIT = Path(__file__).parent / "fixtures" / "qbr-tiny-vit.json"  # random-initialised on purpose
OPS = Path(__file__).resolve().parents[1] / "ops"
RAY_DISCOVERY = Path("/tmp/ray/prom_metrics_service_discovery.json")  # Ray's default temp dir


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


def broken_png() -> bytes:
    """A PNG whose IDAT length field is 6 short: Pillow's loader raises SyntaxError, not OSError."""
    import struct

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(out, format="PNG")
    data = bytearray(out.getvalue())
    at = data.index(b"IDAT") - 4
    data[at:at + 4] = struct.pack(">I", struct.unpack(">I", data[at:at + 4])[0] - 6)
    return bytes(data)


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
    """A small synthetic multimodal catalog (`qbr data synth`): 480 items, 160 users, prebuilt shards."""
    from qbr_dist.data import synth

    out = tmp_path_factory.mktemp("synth")
    synth.synthesize(synth.SynthSpec(items=480, users=160, mean_length=8), out)
    return out


def tokenizer_run_overrides(root: Path, catalog: Path) -> list[str]:
    """A tiny `qbr run` through every stage: a 10 % cold-item split (so retokenization runs), MiniLM
    text and a tiny random-initialised ViT (on purpose), fusion, 2 x 8 codebooks, BERT4Rec and
    Q-BERT4Rec on 2 workers with a checkpoint every 8 steps; fp32, no dropout (fixed randomness).
    Small encode and retokenize batches keep those actors at work over several 1 s scrapes."""
    from qbr_dist.data import synth

    return [
        f"run.root='{root}'", "run.name=tok", "data.dataset=files", "data.cold_fraction=0.1",
        f"data.interactions='{catalog / synth.INTERACTIONS}'", f"data.catalog='{catalog / synth.CATALOG}'",
        "data.text_fields=['title', 'description']", f"shards.prebuilt_dir='{catalog / synth.SHARDS}'",
        "encode.image_model=qbr-tiny-vit", f"encode.image_model_config='{TINY_VIT}'",
        "encode.image_random_init=true", "encode.batch_size=8", "structure.fields=['category', 'brand']",
        "structure.dim=8", "fusion.dim=16", "fusion.epochs=2", "fusion.batch_size=64", "fusion.warmup_steps=2",
        "quant.levels=2", "quant.codebook_size=8", "quant.iterations=10", "quant.retokenize_batch_size=8",
        "model.hidden=16", "model.layers=1", "model.heads=2", "model.max_len=8", "model.dropout=0.0",
        "train.batch_size=32", "train.pretrain_epochs=3", "train.finetune_epochs=1", "train.eval_every=1",
        "train.warmup_steps=2", "train.patience=10",
        "runtime.num_workers=2", "runtime.checkpoint_every=8", "runtime.max_failures=1", "runtime.ray_num_cpus=2",
        "runtime.object_store_mb=256", "runtime.dashboard=false", "obs.enabled=false",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    """Poll `check` (OSErrors count as not yet) until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def prometheus_config(folder: Path, *, targets_dir: Path | None) -> Path:
    """ops/prometheus/prometheus.yml scraping Ray every second and qbr processes every 250 ms: qbr processes
    registered in `targets_dir`, Ray through its dashboard's discovery file; no scrape jobs without `targets_dir`."""
    import yaml

    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(OPS / "prometheus" / "alerts.yml")]
    if targets_dir is None:
        config["scrape_configs"] = []
    else:
        files = {"qbr": [str(targets_dir / "*.json")], "ray": [str(RAY_DISCOVERY)]}
        for job in config["scrape_configs"]:
            job["file_sd_configs"] = [{"files": files[job["job_name"]], "refresh_interval": "1s"}]
        # The tiny run's encoder actors live a few seconds on an idle machine: scrape qbr processes
        # often enough that each is seen at least twice (rate() needs two samples).
        (qbr,) = [job for job in config["scrape_configs"] if job["job_name"] == "qbr"]
        qbr |= {"scrape_interval": "250ms", "scrape_timeout": "250ms"}
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class PrometheusServer:
    base: str  # http://127.0.0.1:PORT
    targets_dir: Path  # the file_sd folder it watches
    process: subprocess.Popen
    folder: Path

    def stop_scraping(self) -> None:
        """Reload with no scrape jobs (SIGHUP): what was scraped stays queryable."""
        prometheus_config(self.folder, targets_dir=None)
        self.process.send_signal(signal.SIGHUP)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    """A Prometheus server (Debian's `prometheus`) on 127.0.0.1 with the shipped config."""
    assert shutil.which("prometheus"), "Debian package 'prometheus' missing: `make test` installs it"
    folder = tmp_path_factory.mktemp("prometheus")
    targets = folder / "targets"
    targets.mkdir()
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={prometheus_config(folder, targets_dir=targets)}",
         f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(folder / "prometheus.log").open("w"),
    )
    server = PrometheusServer(f"http://127.0.0.1:{port}", targets, process, folder)
    try:
        wait_until(lambda: urllib.request.urlopen(f"{server.base}/-/ready", timeout=2).status == 200, 60,
                   "Prometheus")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class SharedRun:
    cfg: object  # qbr_dist.config.Config
    report: dict
    started: float  # time.time() around the run
    ended: float


@pytest.fixture(scope="session")
def tokenized_run(tmp_path_factory, synth_catalog, prometheus) -> SharedRun:
    """One uninterrupted run of `tokenizer_run_overrides`, in this process on its own embedded Ray
    (dashboard on, so Ray writes its Prometheus discovery file; stopped after), scraped by the
    `prometheus` fixture, which then stops scraping. test_prometheus queries what was scraped,
    test_tokenizer checks the artifacts, the reliability tests compare interrupted runs with it."""
    import ray

    from qbr_dist import pipeline
    from qbr_dist.config import load_config

    assert not ray.is_initialized(), "the shared run starts its own Ray"
    cfg = load_config(None, tokenizer_run_overrides(tmp_path_factory.mktemp("tokenized"), synth_catalog) + [
        "obs.enabled=true", f"obs.targets_dir='{prometheus.targets_dir}'"])
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), _node_ip_address="127.0.0.1", log_to_driver=False)
    started = time.time()
    try:
        report = pipeline.run_pipeline(cfg)
        wait_until(lambda: _scraped(prometheus.base, "qbr_stage_status"), 30, "a scrape of the driver")
        time.sleep(3)  # a few more scrapes after the run
    finally:
        ray.shutdown()
        prometheus.stop_scraping()
    return SharedRun(cfg, report, started, time.time())


def prometheus_api(base: str, path: str, **params) -> dict:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def _scraped(base: str, metric: str) -> list:
    return prometheus_api(base, "/api/v1/query", query=metric)["result"]
