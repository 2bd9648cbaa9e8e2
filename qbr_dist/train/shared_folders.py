"""Every Ray node must see the run's folders (`run.root`, `shards.root`) as the same folders: stages
hand each other files by path, and tasks and workers on any node read and write them (launch/README.md,
"Storage"). `check_shared_folders` proves it on the nodes alive when a stage starts Ray: the driver
writes a random token into each folder, a task pinned to every node reads it back and writes an answer
beside it, and the driver reads the answers. A node that misses the mount then stops the run in seconds,
by name, instead of failing later inside a stage with a bare FileNotFoundError. Nodes that join later
are not covered."""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

PROBE_PREFIX = ".node-probe-"  # the probe and its answers, files in each checked folder (removed after)
ANSWER_TIMEOUT_S = 120


def check_shared_folders(folders: dict[str, Path]) -> int:
    """Raise a one-line error naming the config key, folder and node where a node of a multi-node cluster
    does not share `folders` ({config key: folder}) with the driver; returns the number of nodes checked."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    problems = []
    for key, folder in folders.items():
        problems += [f"{key} {folder}: {problem}" for problem in _folder_problems(Path(folder).resolve(), nodes)]
    if problems:
        raise RuntimeError(f"not one shared folder on every Ray node: {'; '.join(problems)} (mount it at the same "
                           "path on every node: launch/README.md, 'Storage')")
    log.info("%s: the same folders on all %d Ray nodes", ", ".join(folders), len(nodes))
    return len(nodes)


def _folder_problems(folder: Path, nodes: list[dict]) -> list[str]:
    """What keeps each node from sharing `folder` with the driver, one entry per node that does not."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = folder / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    try:
        answers = {node["NodeID"]: _answer.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(probe), token)
            for node in nodes}
        done, _ = ray.wait(list(answers.values()), num_returns=len(answers), timeout=ANSWER_TIMEOUT_S)
        still_alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}  # one that left has no say
        problems = []
        for node in (node for node in nodes if node["NodeID"] in still_alive):
            ref = answers[node["NodeID"]]
            problem = _result(ref) if ref in done else f"gave no answer in {ANSWER_TIMEOUT_S} s"
            if problem is None and not answer_path(probe, node["NodeID"]).is_file():
                problem = "its answer did not reach the driver's folder"
            if problem is not None:
                problems.append(f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) {problem}")
        return problems
    finally:
        for path in folder.glob(f"{probe.name}*"):
            path.unlink(missing_ok=True)


def _result(ref: ray.ObjectRef) -> str | None:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        return f"could not run the probe task ({type(error).__name__})"


def answer_path(probe: Path, node_id: str) -> Path:
    return probe.with_name(f"{probe.name}.{node_id}")


def probe_problem(probe: Path, token: str, node_id: str) -> str | None:
    """On one node: None when `probe` holds `token` and an answer can be written beside it, else why not."""
    try:
        seen = probe.read_text()
    except OSError as error:
        return f"cannot read {probe} ({error.strerror or error})"
    if seen != token:
        return f"reads other content at {probe} (a different folder at that path?)"
    try:
        answer_path(probe, node_id).write_text(token)
    except OSError as error:
        return f"cannot write in {probe.parent} ({error.strerror or error})"
    return None


@ray.remote(num_cpus=0, max_retries=0)
def _answer(probe: str, token: str) -> str | None:
    return probe_problem(Path(probe), token, ray.get_runtime_context().get_node_id())
