"""Each qbr process serves `/metrics` and registers itself for Prometheus file-based discovery.

Registration is one JSON file per process and run, `<targets_dir>/<run>--<host>--<pid>.json`,
holding one `file_sd` target group. One file per process, rather than one shared file, means
processes on many nodes never edit the same file (no locks on shared storage), and one
`file_sd_configs` glob (`<targets_dir>/*.json`) finds them all. A process removes its files when
it exits normally; the driver retires the files of a stage's workers when the stage ends. A
process killed outright leaves its file behind until then, and Prometheus reports it down
(`up == 0`), which the worker-down alert watches.
"""
from __future__ import annotations

import atexit
import errno
import glob
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily

from qbr_dist import artifacts


@dataclass(frozen=True)
class Endpoint:
    """How the processes of one run serve and register (plain values: it travels to Ray workers)."""

    run: str
    targets_dir: str
    bind: str = "127.0.0.1"
    port: int = 0


def endpoint(cfg) -> Endpoint | None:
    """The run's Endpoint from its Config, or None with `obs.enabled = false`."""
    if not cfg.obs.enabled:
        return None
    targets = cfg.obs.targets_dir or str(Path(cfg.run.root).resolve() / "prometheus_targets")
    return Endpoint(run=cfg.run.name, targets_dir=targets, bind=cfg.obs.bind, port=cfg.obs.port)


_server: tuple[str, int] | None = None  # this process's (address, port) once serving
_registered: set[Path] = set()


def serve(spec: Endpoint | None, *, process: str) -> str | None:
    """Serve this process's metrics (once per process) and register it for `spec.run`; returns host:port."""
    global _server
    if spec is None:
        return None
    if _server is None:
        address = bind_address(spec.bind)
        server = _start_server(address, spec.port)
        _server = (address, server.server_port)
        atexit.register(unregister)
    target = f"{_server[0]}:{_server[1]}"
    path = Path(spec.targets_dir) / f"{spec.run}--{socket.gethostname()}--{os.getpid()}.json"
    if path not in _registered:
        artifacts.write_json(path, [{"targets": [target], "labels": {"run": spec.run, "process": process}}])
        _registered.add(path)
    return target


PORTS_TRIED = 64  # with a fixed obs.port: the ports from it up that a process tries (one per process of a node)


def _start_server(address: str, port: int):
    """The metrics server on a free port (`port` 0), or on the first free one from `port` up: the driver and the
    workers of a node share its address, so a fixed port serves only the first of them."""
    if port == 0:
        return start_http_server(0, addr=address)[0]
    for candidate in range(port, min(port + PORTS_TRIED, 65536)):
        try:
            return start_http_server(candidate, addr=address)[0]
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"obs.port: ports {port} to {candidate} on {address} are all in use")


def bind_address(bind: str) -> str:
    """`node` is this Ray node's address (what other nodes reach); anything else is used as given."""
    if bind != "node":
        return bind
    import ray.util

    return ray.util.get_node_ip_address()


def unregister() -> None:
    """Remove every registration of this process (its server stops with the process)."""
    for path in list(_registered):
        path.unlink(missing_ok=True)
        _registered.discard(path)


def retire(spec: Endpoint | None, process: str) -> int:
    """Remove the registrations of `process` kind for spec.run, on every node (a stage's workers are
    done once the stage returns); returns how many were removed."""
    removed = 0
    for path, group in _registrations(spec):
        if group["labels"].get("process") == process:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _registrations(spec: Endpoint | None):
    """(file, target group) of every process registered for spec.run: the file name narrows the search (the
    run name escaped, as it may hold glob characters), the group's own run label decides (run `exp` is a
    prefix of run `exp--b`'s files)."""
    folder = Path(spec.targets_dir) if spec else None
    if folder is None or not folder.is_dir():
        return
    for path in sorted(folder.glob(f"{glob.escape(spec.run)}--*.json")):
        try:
            (group,) = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed or being replaced meanwhile
        if group.get("labels", {}).get("run") == spec.run:
            yield path, group


class RegisteredTargets:
    """`qbr_registered_targets{run}`: processes registered for each watched run, counted at scrape
    time; with Prometheus' `up` it tells registered processes that stopped answering."""

    def __init__(self):
        self.runs: dict[str, Endpoint] = {}

    def collect(self):
        family = GaugeMetricFamily("qbr_registered_targets", "Processes registered for discovery", labels=["run"])
        for run, spec in self.runs.items():
            family.add_metric([run], float(sum(1 for _ in _registrations(spec))))
        yield family


_targets = RegisteredTargets()
REGISTRY.register(_targets)


def count_registrations(spec: Endpoint | None) -> None:
    """Export qbr_registered_targets for spec.run from this process (the driver)."""
    if spec is not None:
        _targets.runs[spec.run] = spec
