"""SIGKILL `qbr run` (driver, embedded Ray and workers) after a checkpoint; the rerun resumes from it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.integration.conftest import tiny_overrides

pytestmark = pytest.mark.integration

KILL_AFTER_STEP = 8
EPOCHS = {"train.pretrain_epochs": 6, "train.finetune_epochs": 2}


def qbr_run(tmp_path, interactions, name) -> subprocess.Popen:
    """`qbr run` of run `name` under its own root (runs under one root would share finished stages)."""
    command = [sys.executable, "-m", "qbr_dist.cli", "run"]
    for item in tiny_overrides(tmp_path / name, interactions, name, **EPOCHS):
        command += ["--set", item]
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def latest_checkpoint_step(run_dir: Path) -> int:
    snapshots = list((run_dir / "bert4rec" / "ray").glob("*/checkpoint_manager_snapshot.json"))
    if not snapshots:
        return -1
    try:
        latest = json.loads(snapshots[0].read_text())["latest_checkpoint_result"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return -1  # being written
    return latest["metrics"]["step"] if latest else -1


def kill_tree(process: subprocess.Popen) -> None:
    """Like a crashed machine: the driver and every process it started (Ray's head, workers) die at once."""
    parent = psutil.Process(process.pid)
    for proc in parent.children(recursive=True) + [parent]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait()


def final_parameters(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "bert4rec" / "metrics.json").read_text())
    states = torch.load(Path(metrics["checkpoint"]) / "state" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)  # written by this test's own run
    return metrics, states["module"]


def test_killed_driver_resumes_from_its_checkpoint(tmp_path, interactions_file):
    straight = qbr_run(tmp_path, interactions_file, "straight")
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    crashed = qbr_run(tmp_path, interactions_file, "crashed")
    deadline = time.time() + 600
    while latest_checkpoint_step(tmp_path / "crashed" / "crashed") < KILL_AFTER_STEP:
        assert crashed.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    kill_tree(crashed)
    killed_at = latest_checkpoint_step(tmp_path / "crashed" / "crashed")
    assert not (tmp_path / "crashed" / "crashed" / "bert4rec" / "metrics.json").exists()

    rerun = qbr_run(tmp_path, interactions_file, "crashed")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "crashed.log").read_text()[-3000:]
    log = (tmp_path / "crashed.log").read_text()
    assert "stage ingest: up to date, skipped" in log

    expected, expected_params = final_parameters(tmp_path / "straight" / "straight")
    resumed, resumed_params = final_parameters(tmp_path / "crashed" / "crashed")
    assert resumed["resumed_at"] == [killed_at]
    assert expected["resumed_at"] == []
    assert resumed["steps"] == expected["steps"]
    for name, value in expected_params.items():
        assert torch.allclose(value, resumed_params[name], atol=1e-5, rtol=0), name
    assert resumed["test"] == pytest.approx(expected["test"], abs=1e-6)
