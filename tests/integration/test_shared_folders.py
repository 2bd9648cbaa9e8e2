"""The shared-folder check on a real two-node Ray cluster (two raylets on this machine, so they share
its file system): every node answers, and the probes are gone after."""
from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from qbr_dist.train.shared_folders import PROBE_PREFIX, check_shared_folders

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


def test_every_node_answers_and_the_probes_are_removed(two_nodes, tmp_path):
    folders = {"run.root": tmp_path / "runs", "shards.root": tmp_path / "shards"}
    assert check_shared_folders(folders) == 2
    assert all(folder.is_dir() and not list(folder.glob(f"{PROBE_PREFIX}*")) for folder in folders.values())


def test_a_node_gone_from_the_cluster_is_not_asked(two_nodes, tmp_path):
    two_nodes.remove_node(two_nodes.list_all_nodes()[1])
    two_nodes.wait_for_nodes()
    assert check_shared_folders({"run.root": tmp_path}) == 1
