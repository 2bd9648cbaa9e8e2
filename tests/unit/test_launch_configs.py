"""launch/: every run config loads and validates; submit.sh parses and refuses to guess an address."""
import os
import subprocess
from pathlib import Path

import pytest

from qbr_dist.config import load_config

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
CONFIGS = sorted((LAUNCH / "configs").glob("*.toml"))
SUBMIT = LAUNCH / "submit.sh"


def test_the_cluster_configs_are_there():
    names = {path.stem for path in CONFIGS}
    assert {"ml100k", "amazon2014-beauty", "amazon2023-beauty", "synthetic-1m"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.run.name == path.stem


@pytest.mark.parametrize("name", ["amazon2014-beauty", "amazon2023-beauty", "synthetic-1m"])
def test_cluster_configs_use_shared_absolute_paths(name):
    cfg = load_config(LAUNCH / "configs" / f"{name}.toml")
    assert cfg.runtime.use_gpu and cfg.runtime.precision == "bf16"
    inputs = [cfg.run.root, cfg.data.interactions, cfg.data.catalog, cfg.shards.prebuilt_dir or cfg.shards.root]
    assert all(Path(p).is_absolute() for p in inputs), inputs  # the job's working directory is a per-node copy


def test_one_million_items_train_on_sampled_softmax():
    cfg = load_config(LAUNCH / "configs" / "synthetic-1m.toml")
    assert cfg.train.sampled_softmax_above < 1_000_000


def test_submit_script_parses():
    subprocess.run(["bash", "-n", str(SUBMIT)], check=True)


def test_submit_without_an_address_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")}
    done = subprocess.run([str(SUBMIT), str(LAUNCH / "configs" / "ml100k.toml")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "RAY_API_SERVER_ADDRESS" in lines[0], done.stderr


def test_submit_refuses_a_config_outside_the_repository(tmp_path):
    outside = tmp_path / "elsewhere.toml"
    outside.write_text("")
    done = subprocess.run([str(SUBMIT), "--address", "http://127.0.0.1:1", str(outside)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "inside the repository" in done.stderr


def test_runtime_env_is_valid_for_ray():
    import yaml
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**yaml.safe_load((LAUNCH / "runtime_env.yaml").read_text()))
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "/.venv" in env["excludes"] and "/runs" in env["excludes"]
