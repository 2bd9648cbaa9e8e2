"""A real Prometheus (Debian's `prometheus`, installed by `make test`) scrapes the shared tiny run
(tests/conftest.py) through the shipped config in ops/ (scrape interval 1 s here): the run's
processes found through their file_sd registrations, Ray's own metrics through the discovery
file its dashboard writes. Then every query of every dashboard panel and every alert rule's
signal is evaluated over the run's time window through Prometheus' HTTP API, and must name a
qbr_ or ray_ metric and return data. `promtool` checks the shipped config and rules."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from qbr_dist.obs import dashboards
from tests.conftest import OPS, RAY_DISCOVERY, prometheus_api

pytestmark = pytest.mark.integration


def test_promtool_accepts_shipped_config_and_rules():
    for args in (["check", "config", str(OPS / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(OPS / "prometheus" / "alerts.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def queries() -> list[tuple[str, str]]:
    panels = [(f"{name}: {panel.title}", panel.query.replace("$run", ".*"))
              for name, (_, items) in dashboards.DASHBOARDS.items() for panel in items]
    return panels + [(f"alert {alert.name}", alert.signal) for alert in dashboards.ALERTS]


def test_prometheus_scrapes_a_run_and_every_panel_and_alert_query_returns_data(prometheus, tokenized_run):
    assert RAY_DISCOVERY.is_file(), "Ray's dashboard did not write its Prometheus discovery file"
    assert "qbert4rec" in tokenized_run.report["models"]
    # The driver (this process) still serves; the workers' registrations were retired with their stages.
    registered = [json.loads(p.read_text())[0]["labels"]["process"] for p in prometheus.targets_dir.glob("*.json")]
    assert registered == ["driver"]
    window = {"start": tokenized_run.started - 5, "end": tokenized_run.ended, "step": "1s"}

    missing = []
    for title, query in queries():
        assert re.search(r"\b(qbr|ray)_\w+", query), f"{title}: names no qbr_ or ray_ metric: {query}"
        result = prometheus_api(prometheus.base, "/api/v1/query_range", query=query, **window)["result"]
        if not any(series["values"] for series in result):
            missing.append(f"{title}: {query}")
    assert not missing, "queries without data:\n" + "\n".join(missing)

    rules = prometheus_api(prometheus.base, "/api/v1/rules")["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} == {a.name for a in dashboards.ALERTS}
    assert all(r["health"] == "ok" for g in rules for r in g["rules"])
