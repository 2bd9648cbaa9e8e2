"""Every Ray node must see the run's folders as the driver does: stages hand each other files by path, and
tasks and workers on any node read and write them (launch/README.md, "Storage"). `check_shared_folders`
proves it on the nodes alive when a stage starts Ray, with one task pinned to each node:
- a folder the run writes (`run.root`): the driver writes a random token into it; each node must read the
  token back and write an answer beside it, which the driver must then see;
- a file the stage reads (the shards' index, the features to retokenize): each node must find it with the
  driver's size, first and last bytes (enough to tell two files apart without reading gigabytes); of a long
  list of files (thousands of feature files), every file's size and the bytes of FULLY_READ of them.
A node that misses a mount then stops the run with one line naming the folder, the node and what failed,
instead of failing later inside a stage with a bare FileNotFoundError."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger("qbr.train")

FINGERPRINT_BYTES = 64 * 1024  # read from each end of a file (a parquet footer is at its end)
FULLY_READ = 16  # files of a stage's inputs whose ends are read, spread over the list; the rest by size alone
PROBE_PREFIX = ".node-probe-"  # the token file and the nodes' answers in a written folder (removed after)
MAX_SHOWN = 6  # problems named in the error; the rest counted
STALE_PROBE_S = 24 * 3600  # older probe files were left by a killed driver: the next check removes them
ANSWER_TIMEOUT_S = 300  # a node's first task of a job may first set up the job's runtime environment


@dataclass(frozen=True)
class Probe:
    label: str  # what the message calls it: a config key, or what the file is
    path: str  # the file every node reads
    digest: str  # its fingerprint as the driver reads it
    answer: bool  # whether each node writes an answer beside it (folders the run writes)
    ends: int = FINGERPRINT_BYTES  # bytes the fingerprint reads from each end of the file (0: its size alone)


class NotShared(RuntimeError):
    """A node does not see a run folder or input as the driver does."""


def check_shared_folders(written: dict[str, Path], read: dict[str, Path] | None = None) -> int:
    """Check, on a multi-node cluster, that every node shares the `written` folders ({label: folder}) and
    finds the `read` files ({label: file}) as the driver does; raise NotShared, one line naming each node and
    what failed, where one does not. Returns the number of nodes checked."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    token = uuid.uuid4().hex
    probes = [written_probe(label, Path(folder).resolve(), token) for label, folder in written.items()]
    probes += read_probes(read or {})
    try:
        problems = _node_problems(probes, nodes)
    finally:
        _remove_written(probes, nodes)
    if problems:
        shown = problems[:MAX_SHOWN] + [f"{len(problems) - MAX_SHOWN} more"] * (len(problems) > MAX_SHOWN)
        raise NotShared(f"not the same files on every Ray node: {'; '.join(shown)} (mount them at the same "
                        "path on every node: launch/README.md, 'Storage')")
    log.info("%d run folders and inputs the same on all %d Ray nodes", len(probes), len(nodes))
    return len(nodes)


def written_probe(label: str, folder: Path, token: str) -> Probe:
    path = folder / f"{PROBE_PREFIX}{token}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder)
        path.write_text(token)
    except OSError as error:
        raise NotShared(f"{label} {folder}: the driver cannot write there ({error.strerror or error})") from None
    return Probe(label, str(path), fingerprint(path), answer=True)


def _remove_stale(folder: Path) -> None:
    for leftover in folder.glob(f"{PROBE_PREFIX}*"):
        with contextlib.suppress(OSError):  # another check may remove it first
            if time.time() - leftover.stat().st_mtime > STALE_PROBE_S:
                leftover.unlink()


def read_probes(read: dict[str, Path]) -> list[Probe]:
    """A probe per file; the ends of FULLY_READ of them, spread evenly over the list, the rest by size, so a
    stage reading thousands of files does not read megabytes of each on every node."""
    count = len(read)
    fully = {round(i * (count - 1) / (FULLY_READ - 1)) for i in range(FULLY_READ)} if count > FULLY_READ else None
    return [_read_probe(label, Path(file).resolve(), FINGERPRINT_BYTES if fully is None or i in fully else 0)
            for i, (label, file) in enumerate(read.items())]


def _read_probe(label: str, file: Path, ends: int) -> Probe:
    try:
        return Probe(label, str(file), fingerprint(file, ends), answer=False, ends=ends)
    except OSError as error:
        raise NotShared(f"{label} {file}: the driver cannot read it ({error.strerror or error})") from None


def _node_problems(probes: list[Probe], nodes: list[dict]) -> list[str]:
    """One entry per (node, probe) that failed; nodes that left the cluster meanwhile have no say."""
    refs = {node["NodeID"]: _answer.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(probes)
        for node in nodes}
    done, pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=ANSWER_TIMEOUT_S)
    for ref in pending:
        ray.cancel(ref, force=True)
    still_alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    problems = []
    for node in (node for node in nodes if node["NodeID"] in still_alive):
        ref = refs[node["NodeID"]]
        answers = _answers(ref, probes) if ref in done else [f"gave no answer in {ANSWER_TIMEOUT_S} s"] * len(probes)
        for probe, problem in zip(probes, answers):
            if problem is None and probe.answer and not answer_path(Path(probe.path), node["NodeID"]).is_file():
                problem = "its answer did not reach the driver's folder"
            if problem is not None:
                problems.append(f"{probe.label}: node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) {problem}")
    return problems


def _answers(ref: ray.ObjectRef, probes: list[Probe]) -> list[str | None]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        reason = (str(error).strip().splitlines() or [""])[-1][:200]
        return [f"could not run the probe task ({type(error).__name__}: {reason})"] * len(probes)


def _remove_written(probes: list[Probe], nodes: list[dict]) -> None:
    for probe in (probe for probe in probes if probe.answer):
        path = Path(probe.path)
        for leftover in [path] + [answer_path(path, node["NodeID"]) for node in nodes]:
            leftover.unlink(missing_ok=True)


def fingerprint(path: Path, ends: int = FINGERPRINT_BYTES) -> str:
    """Size and sha256 of the first and last `ends` bytes: the same file, or a copy, on another node."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        digest = hashlib.sha256(handle.read(ends))
        handle.seek(max(size - ends, 0))
        digest.update(handle.read(ends))
    return f"{size}:{digest.hexdigest()}"


def answer_path(probe: Path, node_id: str) -> Path:
    return probe.with_name(f"{probe.name}.{node_id}")


def probe_problem(probe: Probe, node_id: str) -> str | None:
    """On one node: None when it reads `probe`'s file as the driver did (and, for a written folder, can write
    its answer beside it), else why not."""
    path = Path(probe.path)
    try:
        seen = fingerprint(path, probe.ends)
    except OSError as error:
        return f"cannot read {path} ({error.strerror or error})"
    if seen != probe.digest:
        return f"reads another file at {path} (another copy at that path?)"
    if probe.answer:
        try:
            answer_path(path, node_id).write_text(node_id)
        except OSError as error:
            return f"cannot write in {path.parent} ({error.strerror or error})"
    return None


@ray.remote(num_cpus=0, max_retries=0)
def _answer(probes: list[Probe]) -> list[str | None]:
    node_id = ray.get_runtime_context().get_node_id()
    return [probe_problem(probe, node_id) for probe in probes]
