"""The shared-folder check on a real two-node Ray cluster (two raylets on this machine, so they share its
file system): every node answers and the probes are gone after; the failures it reports, one line each."""
from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from qbr_dist.train import shared_folders
from qbr_dist.train.shared_folders import PROBE_PREFIX, NotShared, check_shared_folders

pytestmark = pytest.mark.integration

NODE = {"num_cpus": 1, "object_store_memory": 96 * 1024**2, "include_dashboard": False}


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args=NODE)
    cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def folders(tmp_path):
    index = tmp_path / "shards" / "index.json"
    index.parent.mkdir()
    index.write_text('{"shards": []}')
    return {"run.root": tmp_path / "runs"}, {"the shards index": index}


def test_every_node_answers_and_the_probes_are_removed(two_nodes, folders):
    written, read = folders
    assert check_shared_folders(written, read) == 2
    assert written["run.root"].is_dir() and not list(written["run.root"].glob(f"{PROBE_PREFIX}*"))


def test_answers_the_driver_cannot_see_name_every_node(two_nodes, folders, monkeypatch):
    # The driver looks for the answers elsewhere; the nodes' tasks still write theirs where they belong.
    monkeypatch.setattr(shared_folders, "answer_path", lambda probe, node: probe.with_name("nowhere"))
    with pytest.raises(NotShared) as raised:
        check_shared_folders(*folders)
    message = str(raised.value)
    assert "\n" not in message and message.count("its answer did not reach the driver's folder") == 2
    assert all(f"({node['NodeID'][:8]})" in message for node in ray.nodes())
    assert message.startswith("not the same files on every Ray node: run.root: node ")
    monkeypatch.setattr(shared_folders, "MAX_SHOWN", 1)
    with pytest.raises(NotShared, match=r"did not reach the driver's folder; 1 more \(mount them"):
        check_shared_folders(*folders)


def test_a_node_that_cannot_run_the_probe_is_named_and_one_that_left_is_not(two_nodes, folders, monkeypatch):
    real_nodes = ray.nodes()
    ghost = dict(real_nodes[0], NodeID="ab" * 28, NodeManagerAddress="10.9.9.9")
    monkeypatch.setattr(ray, "nodes", lambda: real_nodes + [ghost])
    with pytest.raises(NotShared, match=r"run\.root: node 10\.9\.9\.9 \(abababab\) could not run the probe task"):
        check_shared_folders(*folders)
    calls = iter([real_nodes + [ghost], real_nodes])  # alive when asked, gone when the answers are read
    monkeypatch.setattr(ray, "nodes", lambda: next(calls))
    assert check_shared_folders(*folders) == 3


def test_an_input_the_driver_cannot_read_stops_before_any_node_is_asked(two_nodes, folders, tmp_path):
    with pytest.raises(NotShared, match="the shards index .*missing.json: the driver cannot read it"):
        check_shared_folders(folders[0], {"the shards index": tmp_path / "missing.json"})
