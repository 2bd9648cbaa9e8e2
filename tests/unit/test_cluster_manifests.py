"""cluster/: KubeRay manifests, the `ray up` YAML and the Dockerfile agree with each other and with the code."""
from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from qbr_dist.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
IMAGE = "qbr-dist:latest"
RUNS_CLAIM = "qbr-runs"
RUNS_MOUNT = "/runs"
KUBERAY_API = "ray.io/v1"


class ManifestError(AssertionError):
    pass


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ManifestError(message)


def documents() -> list[tuple[Path, dict]]:
    """Every YAML document under cluster/, with the file it came from."""
    return [(path, doc) for path in sorted(CLUSTER.rglob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def the_one(kind: str) -> dict:
    found = [doc for _, doc in documents() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under cluster/, found {len(found)}"
    return found[0]


def ray_up_config() -> dict:
    found = [doc for _, doc in documents() if "cluster_name" in doc]
    assert len(found) == 1, f"expected one `ray up` config under cluster/, found {len(found)}"
    return found[0]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    lines = [line for line in (CLUSTER / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(op.upper(), args.strip()) for op, args in re.findall(r"^\s*(\w+)\s+(.*)$", joined, flags=re.M)]


def check_worker_group(group: dict) -> None:
    name = group.get("groupName")
    _need(isinstance(name, str) and bool(name), "a worker group has no groupName")
    counts = {key: group.get(key) for key in ("replicas", "minReplicas", "maxReplicas")}
    for key, value in counts.items():
        _need(type(value) is int, f"worker group {name}: {key} must be an integer, got {value!r}")
    _need(counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"],
          f"worker group {name}: expected minReplicas <= replicas <= maxReplicas, got {counts}")


def check_pod(pod: dict) -> None:
    """Every container runs the project image and mounts the shared run directory at /runs."""
    claims = {volume["name"] for volume in pod.get("volumes", [])
              if volume.get("persistentVolumeClaim", {}).get("claimName") == RUNS_CLAIM}
    _need(bool(claims), f"a pod has no volume for the {RUNS_CLAIM} claim")
    for container in pod.get("containers", []):
        _need(container.get("image") == IMAGE, f"container {container.get('name')}: image is not {IMAGE}")
        mounts = {m["name"] for m in container.get("volumeMounts", []) if m.get("mountPath") == RUNS_MOUNT}
        _need(bool(mounts & claims), f"container {container.get('name')}: {RUNS_CLAIM} not mounted at {RUNS_MOUNT}")


def check_cluster_spec(spec: dict) -> None:
    _need("headGroupSpec" in spec, "the cluster spec has no headGroupSpec")
    groups = spec.get("workerGroupSpecs")
    _need(isinstance(groups, list) and bool(groups), "the cluster spec has no workerGroupSpecs")
    for group in groups:
        check_worker_group(group)
    for group in [spec["headGroupSpec"], *groups]:
        check_pod(group["template"]["spec"])


def check_entrypoint(entrypoint: str, workdir: str):
    """A `qbr run` of a repository config (as the image holds it); returns the config it resolves to."""
    _need(bool(entrypoint.strip()), "the RayJob has an empty entrypoint")
    tokens = shlex.split(entrypoint)
    script = next(iter(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]))
    _need(tokens[:2] == [script, "run"], f"the entrypoint does not start with `{script} run`")
    options = list(zip(tokens[2:], tokens[3:]))
    configs = [value for flag, value in options if flag == "--config"]
    _need(len(configs) == 1, "the entrypoint names no --config")
    _need(configs[0].startswith(workdir + "/"), f"{configs[0]} is not under the image's WORKDIR {workdir}")
    in_repo = ROOT / configs[0][len(workdir) + 1:]
    _need(in_repo.is_file(), f"{configs[0]}: no such config in the repository")
    return load_config(in_repo, [value for flag, value in options if flag == "--set"])


def check_ray_up(config: dict) -> None:
    for key in ("cluster_name", "max_workers", "available_node_types", "head_node_type"):
        _need(key in config, f"the `ray up` config has no {key}")
    _need(type(config["max_workers"]) is int, "max_workers must be an integer")
    _need(config["head_node_type"] in config["available_node_types"],
          f"head_node_type {config['head_node_type']!r} is not one of available_node_types")


def check_installs_with_constraints(instructions: list[tuple[str, str]]) -> None:
    copied = " ".join(args for op, args in instructions if op == "COPY").split()
    _need("constraints.txt" in copied, "the Dockerfile does not copy constraints.txt")
    installs = [args for op, args in instructions if op == "RUN" and "pip install" in args]
    _need(any(_constraints_of(run) for run in installs), "no `pip install -c` on constraints.txt in the Dockerfile")


def _constraints_of(run: str) -> bool:
    """`-c constraints.txt`, or `-c FILE` where the same RUN writes FILE from constraints.txt."""
    found = re.search(r"(?:-c|--constraint)[ =](\S+)", run)
    if not found:
        return False
    target = found.group(1)
    return target == "constraints.txt" or bool(re.search(rf"constraints\.txt\b.*>\s*{re.escape(target)}\s", run))


def workdir() -> str:
    return [args for op, args in dockerfile() if op == "WORKDIR"][-1]


def test_every_yaml_under_cluster_is_a_known_object():
    kinds = sorted(doc.get("kind", "ray up") for _, doc in documents())
    assert kinds == ["PersistentVolumeClaim", "RayCluster", "RayJob", "ray up"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_objects_use_the_v1_api(kind):
    assert the_one(kind)["apiVersion"] == KUBERAY_API


def test_raycluster_passes_the_checks():
    check_cluster_spec(the_one("RayCluster")["spec"])


def test_raycluster_head_takes_no_work_and_exports_metrics():
    params = the_one("RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]
    assert params == {"dashboard-host": "0.0.0.0", "metrics-export-port": "8080", "num-cpus": "0"}


def test_rayjob_cluster_passes_the_checks_and_is_deleted_after_the_job():
    spec = the_one("RayJob")["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    assert spec["shutdownAfterJobFinishes"] is True
    assert type(spec["ttlSecondsAfterFinished"]) is int


def test_rayjob_entrypoint_runs_a_repository_config_with_every_path_on_the_shared_volume():
    cfg = check_entrypoint(the_one("RayJob")["spec"]["entrypoint"], workdir())
    for path in (cfg.run.root, cfg.shards.root, cfg.run.cache_dir):
        assert Path(path).is_relative_to(RUNS_MOUNT), path
    assert cfg.obs.bind == "node"  # metrics on the pod IP, where Prometheus can reach them


def test_rayjob_asks_for_no_more_gpus_than_its_workers_have():
    spec = the_one("RayJob")["spec"]
    cfg = check_entrypoint(spec["entrypoint"], workdir())
    gpus = sum(group["replicas"] * c["resources"]["limits"].get("nvidia.com/gpu", 0)
               for group in spec["rayClusterSpec"]["workerGroupSpecs"]
               for c in group["template"]["spec"]["containers"])
    assert cfg.runtime.use_gpu and cfg.runtime.num_workers <= gpus


def test_pvc_is_the_shared_read_write_many_claim():
    pvc = the_one("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == RUNS_CLAIM
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_ray_up_config_passes_the_checks_and_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = ray_up_config()
    check_ray_up(config)
    assert config["docker"]["image"] == IMAGE
    validate_config(prepare_config(copy.deepcopy(config)))


def test_dockerfile_installs_with_the_constraints_file():
    check_installs_with_constraints(dockerfile())


def test_dockerfile_ray_version_matches_the_manifests():
    default = next(args.split("=", 1)[1] for op, args in dockerfile()
                   if op == "ARG" and args.startswith("RAY_VERSION="))
    specs = [the_one("RayCluster")["spec"], the_one("RayJob")["spec"]["rayClusterSpec"]]
    assert [spec["rayVersion"] for spec in specs] == [default, default]


def _without(spec: dict, key: str) -> dict:
    broken = copy.deepcopy(spec)
    del broken["workerGroupSpecs"][0][key]
    return broken


def _with(spec: dict, **values) -> dict:
    broken = copy.deepcopy(spec)
    broken["workerGroupSpecs"][0].update(values)
    return broken


@pytest.mark.parametrize("breaks, message", [
    (lambda s: _without(s, "maxReplicas"), "maxReplicas must be an integer"),
    (lambda s: _with(s, replicas="2"), "replicas must be an integer"),
    (lambda s: _with(s, replicas=5, maxReplicas=4), "minReplicas <= replicas <= maxReplicas"),
    (lambda s: {k: v for k, v in s.items() if k != "headGroupSpec"}, "no headGroupSpec"),
])
def test_cluster_checks_reject_a_broken_spec(breaks, message):
    with pytest.raises(ManifestError, match=re.escape(message)):
        check_cluster_spec(breaks(the_one("RayCluster")["spec"]))


def test_entrypoint_check_rejects_a_config_missing_from_the_repository():
    with pytest.raises(ManifestError, match="no such config"):
        check_entrypoint("qbr run --config /home/ray/qbr/launch/configs/nope.toml", "/home/ray/qbr")


def test_ray_up_check_rejects_an_unknown_head_node_type():
    with pytest.raises(ManifestError, match="not one of available_node_types"):
        check_ray_up({**ray_up_config(), "head_node_type": "missing"})


def test_dockerfile_check_rejects_an_unconstrained_install():
    with pytest.raises(ManifestError, match="pip install -c"):
        check_installs_with_constraints([("COPY", "constraints.txt ./"), ("RUN", "pip install .")])
