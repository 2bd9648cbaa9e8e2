"""A real Prometheus (Debian's `prometheus`, installed by `make test`) scrapes a tiny `qbr run`
through the shipped config in ops/ (scrape interval 1 s here): the run's processes found through
their file_sd registrations, Ray's own metrics through the discovery file its dashboard writes.
Then every query of every dashboard panel and every alert rule's signal is evaluated over the
run's time window through Prometheus' HTTP API, and must name a qbr_ or ray_ metric and return
data. `promtool` checks the shipped config and rules."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml

from qbr_dist import pipeline
from qbr_dist.config import load_config
from qbr_dist.data import synth
from qbr_dist.obs import dashboards

pytestmark = pytest.mark.integration

OPS = Path(__file__).resolve().parents[2] / "ops"
RAY_DISCOVERY = Path("/tmp/ray/prom_metrics_service_discovery.json")  # Ray's default temp dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, path: str, **params) -> dict:
    with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def wait_until(check, timeout: float, what: str):
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


def test_promtool_accepts_shipped_config_and_rules():
    for args in (["check", "config", str(OPS / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(OPS / "prometheus" / "alerts.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def ray_with_dashboard():
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def prometheus_config(targets_dir: Path, folder: Path) -> Path:
    """ops/prometheus/prometheus.yml, pointed at this run's targets, scraping every second."""
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(OPS / "prometheus" / "alerts.yml")]
    files = {"qbr": [str(targets_dir / "*.json")], "ray": [str(RAY_DISCOVERY)]}
    for job in config["scrape_configs"]:
        job["file_sd_configs"] = [{"files": files[job["job_name"]], "refresh_interval": "1s"}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path):
    """A Prometheus server on 127.0.0.1 with the shipped config; yields (base URL, targets dir)."""
    assert shutil.which("prometheus"), "Debian package 'prometheus' missing: `make test` installs it"
    targets = tmp_path / "runs" / "prometheus_targets"
    targets.mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen(
        ["prometheus", f"--config.file={prometheus_config(targets, tmp_path)}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, 60, "Prometheus")
        yield base, targets
    finally:
        server.terminate()
        server.wait(timeout=30)


def tiny_run(tmp_path: Path):
    out = tmp_path / "synth"
    # enough items that the encoder actor works for several 1 s scrapes after loading its model
    synth.synthesize(synth.SynthSpec(items=480, users=96, mean_length=8), out)
    return load_config(None, [
        f"run.root='{tmp_path / 'runs'}'", "run.name=prom", "data.dataset=files", "data.cold_fraction=0.1",
        f"data.interactions='{out / synth.INTERACTIONS}'", f"data.catalog='{out / synth.CATALOG}'",
        "data.text_fields=['title', 'description']", "structure.fields=['category', 'brand']", "structure.dim=8",
        "fusion.dim=16", "fusion.epochs=2", "fusion.batch_size=32", "fusion.warmup_steps=2",
        "quant.levels=2", "quant.codebook_size=8", "quant.iterations=10", "quant.retokenize_batch_size=8",
        "encode.batch_size=8", "model.hidden=16", "model.layers=1", "model.max_len=8", "train.batch_size=16",
        "train.pretrain_epochs=3", "train.finetune_epochs=1", "train.eval_every=1", "train.warmup_steps=2",
        "runtime.num_workers=2", "runtime.checkpoint_every=5", "runtime.ray_num_cpus=2",
    ])


def queries() -> list[tuple[str, str]]:
    panels = [(f"{name}: {panel.title}", panel.query.replace("$run", ".*"))
              for name, (_, items) in dashboards.DASHBOARDS.items() for panel in items]
    return panels + [(f"alert {alert.name}", alert.signal) for alert in dashboards.ALERTS]


def test_prometheus_scrapes_a_run_and_every_panel_and_alert_query_returns_data(
        tmp_path, ray_with_dashboard, prometheus):
    base, targets = prometheus
    assert RAY_DISCOVERY.is_file(), "Ray's dashboard did not write its Prometheus discovery file"
    started = time.time()
    report = pipeline.run_pipeline(tiny_run(tmp_path))
    assert "qbert4rec" in report["models"]
    # The driver (this process) still serves; the workers' registrations were retired with their stages.
    assert [json.loads(p.read_text())[0]["labels"]["process"] for p in targets.glob("*.json")] == ["driver"]
    wait_until(lambda: api(base, "/api/v1/query", query="qbr_stage_status")["result"], 30, "a scrape of the driver")
    time.sleep(3)  # a few more scrapes after the run
    window = {"start": started - 5, "end": time.time(), "step": "1s"}

    missing = []
    for title, query in queries():
        assert re.search(r"\b(qbr|ray)_\w+", query), f"{title}: names no qbr_ or ray_ metric: {query}"
        result = api(base, "/api/v1/query_range", query=query, **window)["result"]
        if not any(series["values"] for series in result):
            missing.append(f"{title}: {query}")
    assert not missing, "queries without data:\n" + "\n".join(missing)

    rules = api(base, "/api/v1/rules")["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} == {a.name for a in dashboards.ALERTS}
    assert all(r["health"] == "ok" for g in rules for r in g["rules"])
