"""launch/submit.sh against a real `ray start --head` cluster: a tiny `qbr run` job succeeds and reports.

The cluster is this test's own (free ports on 127.0.0.1, its own temp dir) and is stopped by
ending the processes it started; `ray stop` would end every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import tiny_overrides

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PORT_OPTIONS = ("port", "dashboard-port", "node-manager-port", "object-manager-port", "ray-client-server-port",
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                "metrics-export-port")
JOB_TIMEOUT_S = 300
# On top of tiny_overrides (ml100k.toml's cold split would leave 3 of the 30 items out): the least
# training that still writes a checkpoint (the final one only) and a report.
SMALLER = {"data.cold_fraction": 0, "runtime.num_workers": 1, "train.pretrain_epochs": 1, "train.finetune_epochs": 1,
           "runtime.checkpoint_every": 10**6}


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 right now (all held open together, then released)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def cluster_env() -> dict[str, str]:
    """The environment of a cluster node: this venv first on PATH (its `python` and `ray`), no token auth."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return env | {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
                  "RAY_AUTH_MODE": "disabled"}


def head_is_up(address: str, head: subprocess.Popen, log: Path, timeout_s: float = 120) -> bool:
    """Whether `ray start` gets every process of the node up and its dashboard answers in time."""
    deadline = time.time() + timeout_s
    while head.poll() is None and time.time() < deadline:
        if "Ray runtime started." in log.read_text():
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=5):
                    return True
            except OSError:
                pass
        time.sleep(1)
    return False


def stop_cluster(head: subprocess.Popen) -> None:
    try:
        processes = psutil.Process(head.pid).children(recursive=True)
    except psutil.NoSuchProcess:  # it failed to start and took its node's processes down itself
        processes = []
    head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    _, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        process.kill()


def start_head(temp_dir: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` with 2 CPUs on free ports of 127.0.0.1; returns it and its dashboard address."""
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS))))
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               "--num-cpus=2", f"--object-store-memory={256 * 1024**2}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
               *(f"--{option}={port}" for option, port in ports.items())]
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    # Ray's state API (Ray Train calls it from its actors) would otherwise look for "the" local
    # cluster and find every other Ray running on this machine.
    # No drain on SIGTERM: nothing here needs a graceful hand-over, and it waits up to 30 s.
    env = cluster_env() | {"RAY_API_SERVER_ADDRESS": address, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    with open(log, "ab") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return head, address


@pytest.fixture
def ray_head(tmp_path):
    """Dashboard address of this test's own one-node cluster."""
    temp_dir = tempfile.mkdtemp(prefix="qbr-ray-")  # short: Ray's socket paths must stay under 108 bytes
    log = tmp_path / "ray-head.log"
    head, address = start_head(temp_dir, log)
    try:
        if not head_is_up(address, head, log):  # its raylet has 30 s to register, which a loaded machine can miss
            stop_cluster(head)
            head, address = start_head(temp_dir, log)
            assert head_is_up(address, head, log), f"no cluster at {address}:\n{log.read_text()[-3000:]}"
        yield address
    finally:
        stop_cluster(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address: str, submission_id: str, overrides: list[str]) -> subprocess.CompletedProcess:
    sets = [arg for item in overrides for arg in ("--set", item)]
    command = [str(REPO / "launch" / "submit.sh"), "--address", address, "--submission-id", submission_id,
               "--no-wait", "launch/configs/ml100k.toml", *sets]
    # Addresses a shell may have left behind, which Ray's job CLI would prefer to --address: they must not win.
    stray = {"RAY_ADDRESS": "127.0.0.1:9", "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9"}
    return subprocess.run(command, cwd=REPO, env=cluster_env() | stray, capture_output=True, text=True, timeout=120)


def wait_for_job(client, submission_id: str):
    from ray.job_submission import JobStatus

    deadline = time.time() + JOB_TIMEOUT_S
    while (status := client.get_job_status(submission_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                   JobStatus.STOPPED):
        assert time.time() < deadline, f"job still {status}:\n{client.get_job_logs(submission_id)[-3000:]}"
        time.sleep(2)
    return status


def test_submitted_run_succeeds_and_reports(tmp_path, ray_head, interactions_file):
    from ray.job_submission import JobStatus, JobSubmissionClient

    runs = tmp_path / "runs"
    overrides = tiny_overrides(runs, interactions_file, "submitted", **SMALLER)
    submitted = submit(ray_head, "qbr-test-submit", overrides)
    assert submitted.returncode == 0, submitted.stderr
    assert "submission id: qbr-test-submit" in submitted.stdout
    assert "ray job logs --address" in submitted.stdout

    client = JobSubmissionClient(ray_head)
    status = wait_for_job(client, "qbr-test-submit")
    assert status == JobStatus.SUCCEEDED, client.get_job_logs("qbr-test-submit")[-5000:]
    assert client.get_job_info("qbr-test-submit").runtime_env["working_dir"].startswith("gcs://")

    report = json.loads((runs / "submitted" / "report.json").read_text())
    assert {"popularity", "bert4rec"} <= set(report["models"])
    for row in report["models"].values():
        assert 0 <= row["test"]["NDCG@10"] <= 1
