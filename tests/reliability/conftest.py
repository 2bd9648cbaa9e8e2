"""Reliability helpers: `qbr run` as a real child process, and ways to kill it or one of its workers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def qbr_run(overrides: list[str], log: Path) -> subprocess.Popen:
    """`qbr run --set ...` in its own session, its output appended to `log`."""
    command = [sys.executable, "-m", "qbr_dist.cli", "run"]
    for item in overrides:
        command += ["--set", item]
    return subprocess.Popen(command, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def latest_checkpoint_step(stage_dir: Path) -> int:
    """Step of the newest checkpoint Ray Train has listed for a training stage, -1 before the first."""
    snapshots = list((stage_dir / "ray").glob("*/checkpoint_manager_snapshot.json"))
    if not snapshots:
        return -1
    try:
        latest = json.loads(snapshots[0].read_text())["latest_checkpoint_result"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return -1  # being written
    return latest["metrics"]["step"] if latest else -1


def wait_for(condition, process: subprocess.Popen, *, what: str, timeout: float = 1200) -> None:
    """Poll `condition` until it holds; fails if `process` ends first or time runs out."""
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kill_tree(process: subprocess.Popen) -> None:
    """Like a crashed machine: the driver and every process it started (Ray's head, workers) die at once."""
    parent = psutil.Process(process.pid)
    for proc in parent.children(recursive=True) + [parent]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait()


def kill_one_train_worker(process: subprocess.Popen) -> int:
    """SIGKILL one Ray Train worker process started by the run; returns its pid."""
    for proc in psutil.Process(process.pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                proc.send_signal(signal.SIGKILL)
                return proc.pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no Ray Train worker process found")
