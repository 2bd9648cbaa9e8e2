"""Metrics endpoints, file_sd registration, job stage metrics and the generated ops files."""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from qbr_dist.config import load_config
from qbr_dist.obs import dashboards, metrics, serve

OPS = Path(__file__).resolve().parents[2] / "ops"


def test_endpoint_follows_config(tmp_path):
    cfg = load_config(None, [f"run.root='{tmp_path}'", "run.name=r1", "obs.port=9123"])
    spec = serve.endpoint(cfg)
    assert spec == serve.Endpoint(run="r1", targets_dir=str(tmp_path / "prometheus_targets"), port=9123)
    assert serve.endpoint(load_config(None, ["obs.enabled=false"])) is None


def test_with_a_fixed_port_each_process_of_a_node_takes_the_first_free_one_from_it():
    import socket

    with socket.socket() as taken:  # the port another process of the node (the driver) already serves on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        servers = []
        try:
            servers.append(serve._start_server("127.0.0.1", port))
            servers.append(serve._start_server("127.0.0.1", port))
            assert port < servers[0].server_port < servers[1].server_port <= port + serve.PORTS_TRIED
            with urllib.request.urlopen(f"http://127.0.0.1:{servers[1].server_port}/metrics", timeout=5) as page:
                assert page.status == 200
        finally:
            for server in servers:
                server.shutdown()
                server.server_close()


def test_serve_registers_a_scrapeable_target_and_unregisters(tmp_path):
    spec = serve.Endpoint(run="unit-serve", targets_dir=str(tmp_path))
    target = serve.serve(spec, process="driver")
    assert serve.serve(spec, process="driver") == target  # once per process and run
    (path,) = tmp_path.glob("unit-serve--*.json")
    assert json.loads(path.read_text()) == [{"labels": {"process": "driver", "run": "unit-serve"},
                                             "targets": [target]}]
    assert target.startswith("127.0.0.1:")
    metrics.stage_began("unit-serve", "ingest", skipped=False)
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert 'qbr_stage_status{run="unit-serve",stage="ingest"} 0.0' in body
    serve.unregister()
    assert not path.exists()


def test_retire_removes_only_the_named_process_kind(tmp_path):
    spec = serve.Endpoint(run="unit-retire", targets_dir=str(tmp_path))
    for name, process in (("a", "train-worker"), ("b", "train-worker"), ("c", "driver")):
        (tmp_path / f"unit-retire--host--{name}.json").write_text(json.dumps(
            [{"targets": ["127.0.0.1:1"], "labels": {"run": "unit-retire", "process": process}}]))
    (tmp_path / "other-run--host--d.json").write_text(json.dumps(
        [{"targets": ["127.0.0.1:2"], "labels": {"run": "other-run", "process": "train-worker"}}]))
    serve.count_registrations(spec)
    assert REGISTRY.get_sample_value("qbr_registered_targets", {"run": "unit-retire"}) == 3
    assert serve.retire(spec, "train-worker") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-run--host--d.json", "unit-retire--host--c.json"]
    assert REGISTRY.get_sample_value("qbr_registered_targets", {"run": "unit-retire"}) == 1


def test_a_run_whose_name_prefixes_another_or_holds_glob_characters_counts_only_its_own(tmp_path):
    for run in ("unit-exp", "unit-exp--b", "unit-grid[1]"):
        (tmp_path / f"{run}--host--1.json").write_text(json.dumps(
            [{"targets": ["127.0.0.1:1"], "labels": {"run": run, "process": "train-worker"}}]))
    for run in ("unit-exp", "unit-grid[1]"):
        serve.count_registrations(serve.Endpoint(run=run, targets_dir=str(tmp_path)))
        assert REGISTRY.get_sample_value("qbr_registered_targets", {"run": run}) == 1
    assert serve.retire(serve.Endpoint(run="unit-exp", targets_dir=str(tmp_path)), "train-worker") == 1
    assert (tmp_path / "unit-exp--b--host--1.json").exists()


def test_stage_metrics_track_running_skipped_and_failed():
    run = "unit-stages"
    metrics.stage_began(run, "ingest", skipped=True)
    metrics.stage_began(run, "fusion", skipped=False)
    assert metrics.running_stages(run) == ["fusion"]
    metrics.stage_ended(run, "fusion", failed=True)
    status = {s: REGISTRY.get_sample_value("qbr_stage_status", {"stage": s, "run": run}) for s in ("ingest", "fusion")}
    assert status == {"ingest": metrics.SKIPPED, "fusion": metrics.FAILED} and metrics.running_stages(run) == []
    start = REGISTRY.get_sample_value("qbr_stage_start_timestamp_seconds", {"stage": "fusion", "run": run})
    assert REGISTRY.get_sample_value("qbr_stage_end_timestamp_seconds", {"stage": "fusion", "run": run}) >= start


def test_record_tokenizer_sets_per_level_gauges():
    stats = {"collision_rate": 0.25, "levels": [
        {"level": 0, "usage": 1.0, "perplexity": 7.5, "dead_codes": 0, "inertia": 12.0},
        {"level": 1, "usage": 0.5, "perplexity": 3.0, "dead_codes": 4},  # RQ-VAE levels have no inertia
    ]}
    metrics.record_tokenizer(stats, stage="quantize", run="unit-tok")
    level = {"stage": "quantize", "run": "unit-tok"}
    assert REGISTRY.get_sample_value("qbr_codebook_dead_codes", level | {"level": "1"}) == 4
    assert REGISTRY.get_sample_value("qbr_kmeans_inertia", level | {"level": "0"}) == 12.0
    assert REGISTRY.get_sample_value("qbr_kmeans_inertia", level | {"level": "1"}) is None
    assert REGISTRY.get_sample_value("qbr_collision_rate", level) == 0.25


def test_committed_ops_files_are_what_the_module_writes():
    for path, text in dashboards.render(OPS).items():
        assert path.read_text() == text, f"{path} is stale: run `python -m qbr_dist.obs.dashboards`"


@pytest.mark.parametrize("query", [p.query for _, ps in dashboards.DASHBOARDS.values() for p in ps]
                         + [a.signal for a in dashboards.ALERTS])
def test_every_query_names_a_known_metric(query):
    names = set(re.findall(r"\b((?:qbr|ray)_[a-z0-9_]+)", query))
    assert names, query
    ours = {collector._name for collector in vars(metrics).values() if hasattr(collector, "_name")}
    ours |= {"qbr_registered_targets"}
    for name in names:
        if name.startswith("qbr_"):
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert base in ours, f"{name} is not defined in qbr_dist/obs/metrics.py"


def test_every_panel_of_a_run_dashboard_selects_the_run():
    for name, (_, panels) in dashboards.DASHBOARDS.items():
        for panel in panels:
            if "qbr_" in panel.query:
                assert '$run' in panel.query, f"{name}: {panel.title}"


def test_alert_rule_is_its_signal_and_condition():
    rules = dashboards.alert_rules()["groups"][0]["rules"]
    for alert, rule in zip(dashboards.ALERTS, rules):
        assert rule["expr"].startswith(f"({alert.signal})") and rule["alert"] == alert.name
