"""Grafana dashboards and Prometheus alert rules: every query of every panel and rule, written once.

`python -m qbr_dist.obs.dashboards [OPS_DIR]` writes `grafana/dashboards/<name>.json` and
`prometheus/alerts.yml` under OPS_DIR (default `ops/`); a test checks the committed files are what
this module writes, and evaluates each query against a real Prometheus scraping a real run.
Panels select a run with the Grafana variable `$run`; Ray's own metrics have no run label.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

RUN = 'run=~"$run"'  # the dashboards' run selector


@dataclass(frozen=True)
class Panel:
    title: str
    query: str
    unit: str = "short"
    legend: str = ""


@dataclass(frozen=True)
class Alert:
    name: str
    signal: str  # what the rule watches; the test checks that it returns data
    condition: str  # appended to the signal: the rule fires where the result is non-empty
    wait: str  # how long the condition must hold (`for`)
    summary: str
    severity: str = "warning"

    @property
    def expr(self) -> str:
        return f"({self.signal}) {self.condition}"


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{RUN}}}[1m])))"


def _mean(metric: str, by: str, window: str = "5m") -> str:
    return (f"sum by ({by}) (increase({metric}_sum{{{RUN}}}[{window}])) / "
            f"sum by ({by}) (increase({metric}_count{{{RUN}}}[{window}]))")


DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "training": ("qbr: training health", [
        Panel("Loss", f"qbr_train_loss{{{RUN}}}", legend="{{stage}} rank {{rank}}"),
        Panel("Samples/s (all workers)", f"sum by (run, stage) (qbr_train_samples_per_second{{{RUN}}})",
              unit="ops", legend="{{stage}}"),
        # every rank counts each optimizer step: the rate of one rank, not the sum
        Panel("Optimizer steps/s", f"max by (run, stage) (rate(qbr_train_steps_total{{{RUN}}}[1m]))",
              unit="ops", legend="{{stage}}"),
        Panel("Step seconds p95", _quantile(0.95, "qbr_train_step_seconds", "run, stage"), unit="s",
              legend="{{stage}}"),
        Panel("Gradient norm", f"qbr_train_grad_norm{{{RUN}}}", legend="{{stage}} rank {{rank}}"),
        Panel("Learning rate", f"max by (run, stage) (qbr_train_learning_rate{{{RUN}}})", legend="{{stage}}"),
        Panel("Epoch", f"max by (run, stage) (qbr_train_epoch{{{RUN}}})", legend="{{stage}}"),
        Panel("Validation NDCG@10", f"max by (run, stage) (qbr_valid_ndcg_at_10{{{RUN}}})", legend="{{stage}}"),
        Panel("Checkpoint seconds (mean)", _mean("qbr_checkpoint_seconds", "run, stage"), unit="s",
              legend="{{stage}}"),
        Panel("Stage status (0 running, 1 done, 2 skipped, 3 failed)", f"qbr_stage_status{{{RUN}}}",
              legend="{{stage}}"),
        Panel("Stage seconds", f"qbr_stage_end_timestamp_seconds{{{RUN}}} - "
                               f"qbr_stage_start_timestamp_seconds{{{RUN}}}", unit="s", legend="{{stage}}"),
        Panel("Processes registered", f"qbr_registered_targets{{{RUN}}}", legend="{{run}}"),
    ]),
    "encoding": ("qbr: encoding throughput", [
        Panel("Items/s", f"sum by (run) (rate(qbr_encode_items_total{{{RUN}}}[1m]))", unit="ops", legend="{{run}}"),
        Panel("Items encoded", f"sum by (run) (qbr_encode_items_total{{{RUN}}})", legend="{{run}}"),
        Panel("Batch seconds per actor (mean)", _mean("qbr_encode_batch_seconds", "run, rank", "1m"), unit="s",
              legend="actor {{rank}}"),
        Panel("Batch seconds p95", _quantile(0.95, "qbr_encode_batch_seconds", "run"), unit="s", legend="{{run}}"),
        Panel("Quarantined records", f"sum by (run, stage) (qbr_quarantined_records_total{{{RUN}}})",
              legend="{{stage}}"),
        Panel("Records read", f"sum by (run, stage) (qbr_input_records_total{{{RUN}}})", legend="{{stage}}"),
    ]),
    "tokenizer": ("qbr: tokenizer health", [
        Panel("k-means inertia per level", f"qbr_kmeans_inertia{{{RUN}}}", legend="level {{level}}"),
        Panel("Codebook usage per level", f"qbr_codebook_usage{{{RUN}}}", unit="percentunit",
              legend="level {{level}}"),
        Panel("Codebook perplexity per level", f"qbr_codebook_perplexity{{{RUN}}}", legend="level {{level}}"),
        Panel("Dead codes per level", f"qbr_codebook_dead_codes{{{RUN}}}", legend="level {{level}}"),
        Panel("Collision rate before the suffix", f"qbr_collision_rate{{{RUN}}}", unit="percentunit",
              legend="{{run}}"),
        Panel("Retokenized items/s", f"sum by (run) (rate(qbr_retokenized_items_total{{{RUN}}}[1m]))", unit="ops",
              legend="{{run}}"),
        Panel("Items retokenized", f"sum by (run) (qbr_retokenized_items_total{{{RUN}}})", legend="{{run}}"),
    ]),
    "cluster": ("qbr: cluster resources (Ray)", [
        Panel("Active nodes", "max(ray_cluster_active_nodes)"),
        Panel("CPU utilization per node", "avg by (ip) (ray_node_cpu_utilization)", unit="percent", legend="{{ip}}"),
        Panel("Memory used per node", "sum by (ip) (ray_node_mem_used)", unit="bytes", legend="{{ip}}"),
        Panel("Resources in use (CPU, GPU, memory)", 'sum by (Name, NodeAddress) (ray_resources{State="USED"})',
              legend="{{Name}} {{NodeAddress}}"),
        Panel("Object store memory", "sum by (NodeAddress, Location) (ray_object_store_memory)", unit="bytes",
              legend="{{NodeAddress}} {{Location}}"),
        Panel("Actors by state", "sum by (State) (ray_actors)", legend="{{State}}"),
    ]),
}

CODEBOOK_USAGE_MIN = 0.5  # share of a level's codes in use below which the codebook has collapsed
QUARANTINE_RATE_MAX = 0.01  # share of input records quarantined above which the input needs a look

ALERTS = [
    Alert("QbrTrainingStalled", "sum by (run, stage) (increase(qbr_train_steps_total[10m]))",
          "== 0 and on (run, stage) (qbr_stage_status == 0)", "5m",
          "No optimizer step in 10 minutes while the stage is running"),
    Alert("QbrLossNaN", "qbr_train_loss", "!= qbr_train_loss", "1m",  # only NaN differs from itself
          "Training loss is NaN", severity="critical"),
    Alert("QbrCodebookCollapse", "min by (run, stage, level) (qbr_codebook_usage)", f"< {CODEBOOK_USAGE_MIN}", "0m",
          f"Fewer than {CODEBOOK_USAGE_MIN:.0%} of a level's codes are used"),
    Alert("QbrQuarantineRate",
          "sum by (run, stage) (qbr_quarantined_records_total) / "
          "clamp_min(sum by (run, stage) (qbr_input_records_total), 1)",
          f"> {QUARANTINE_RATE_MAX}", "0m", f"More than {QUARANTINE_RATE_MAX:.0%} of input records were quarantined"),
    Alert("QbrWorkerDown", 'max by (run) (qbr_registered_targets) - sum by (run) (up{job="qbr"})', "> 0", "2m",
          "A registered qbr process does not answer scrapes", severity="critical"),
]


def grafana_dashboard(name: str) -> dict:
    """One dashboard as Grafana's JSON model, two panels per row."""
    title, panels = DASHBOARDS[name]
    source = {"type": "prometheus", "uid": "${datasource}"}
    variables = [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
    if any("$run" in panel.query for panel in panels):
        variables.append({"name": "run", "type": "query", "datasource": source, "label": "run", "refresh": 2,
                          "query": {"query": "label_values(qbr_stage_status, run)", "refId": "runs"},
                          "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}})
    return {
        "uid": f"qbr-{name}", "title": title, "tags": ["qbr"], "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "templating": {"list": variables},
        "panels": [
            {"id": i + 1, "type": "timeseries", "title": panel.title, "datasource": source,
             "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
             "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
             "targets": [{"refId": "A", "datasource": source, "expr": panel.query, "legendFormat": panel.legend}]}
            for i, panel in enumerate(panels)
        ],
    }


def alert_rules() -> dict:
    return {"groups": [{"name": "qbr", "rules": [
        {"alert": a.name, "expr": a.expr, "for": a.wait, "labels": {"severity": a.severity},
         "annotations": {"summary": a.summary}}
        for a in ALERTS
    ]}]}


def render(ops_dir: Path) -> dict[Path, str]:
    """Every generated file under `ops_dir` and its text."""
    files = {ops_dir / "grafana" / "dashboards" / f"{name}.json": json.dumps(grafana_dashboard(name), indent=2) + "\n"
             for name in DASHBOARDS}
    header = "# Written by `python -m qbr_dist.obs.dashboards`; edit qbr_dist/obs/dashboards.py instead.\n"
    files[ops_dir / "prometheus" / "alerts.yml"] = header + yaml.safe_dump(alert_rules(), sort_keys=False, width=120)
    return files


def main(argv: list[str]) -> int:
    ops_dir = Path(argv[0] if argv else "ops")
    for path, text in render(ops_dir).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
