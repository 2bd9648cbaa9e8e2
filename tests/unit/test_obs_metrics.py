from prometheus_client import REGISTRY

from qbr_dist.obs import metrics
from qbr_dist.obs.metrics import TrainMeter


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_train_meter_reports_through_prometheus():
    labels = {"stage": "unit", "rank": "3", "run": "meter-test"}
    meter = TrainMeter(stage="unit", rank=3, run="meter-test")
    meter.step(loss=1.5, samples=64, seconds=0.5, lr=1e-3, grad_norm=2.0)
    meter.step(loss=1.25, samples=64, seconds=0.25, lr=1e-3, grad_norm=None)
    assert value("qbr_train_loss", **labels) == 1.25
    assert value("qbr_train_samples_per_second", **labels) == 256
    assert value("qbr_train_steps_total", **labels) == 2
    assert value("qbr_train_step_seconds_count", **labels) == 2
    assert value("qbr_train_step_seconds_sum", **labels) == 0.75
    assert value("qbr_train_grad_norm", **labels) == 2.0
    assert value("qbr_valid_ndcg_at_10", **labels) is None  # no evaluation yet: no series, not a 0 on a dashboard
    meter.validated(0.0625)
    assert value("qbr_valid_ndcg_at_10", **labels) == 0.0625


def test_every_metric_is_prefixed_and_uses_only_allowed_labels():
    collectors = [obj for obj in vars(metrics).values() if hasattr(obj, "_labelnames") and hasattr(obj, "_name")]
    assert collectors
    for collector in collectors:
        assert collector._name.startswith("qbr_")
        assert set(collector._labelnames) <= set(metrics.LABELS)
        assert "job" not in collector._labelnames
