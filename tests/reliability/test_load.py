"""bench/load.py at 20k items: encoding and retokenization, each with 2 actors of which one is
SIGKILLed midway, still put every item in the output exactly once (the bench runs it at 1M)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "bench" / "load.py"


@pytest.fixture
def bench_load(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # as `python bench/load.py` has it: bench/common.py
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def small_ray():
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_every_item_comes_out_exactly_once_when_a_worker_is_killed(tmp_path, small_ray, bench_load):
    result = bench_load.run(20_000, tmp_path / "load", actors=2, kill_after_s=1.0)
    for job in ("encode", "retokenize"):
        outcome = result[job]
        assert outcome["killed_before_the_end"], (job, outcome)
        assert outcome["actor_processes_seen"] > 2, (job, "the killed actor was not replaced", outcome)
        assert outcome["items"] == {"rows": 20_000, "expected": 20_000, "duplicated": 0, "missing": 0,
                                    "unexpected": 0}, job
    assert result["encode"]["quarantined"] == 0
