import json
import os
import subprocess
import sys

import pytest

from qbr_dist import __version__, artifacts
from qbr_dist.artifacts import (atomic_path, code_version, key_digest, stage_is_current, stage_key, why_not_current,
                                write_json, write_manifest)


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_path_leaves_nothing_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_save_array_never_writes_into_a_file_another_stage_shares_by_a_hard_link(tmp_path):
    import numpy as np

    artifacts.save_array(tmp_path / "a" / "codes.npy", np.arange(3))
    (tmp_path / "b").mkdir()
    os.link(tmp_path / "a" / "codes.npy", tmp_path / "b" / "codes.npy")
    artifacts.save_array(tmp_path / "a" / "codes.npy", np.arange(5))
    assert np.load(tmp_path / "b" / "codes.npy").tolist() == [0, 1, 2]
    assert np.load(tmp_path / "a" / "codes.npy").tolist() == [0, 1, 2, 3, 4]


def test_write_json_round_trips(tmp_path):
    payload = {"b": [1, 2.5, None], "a": {"nested": "ü"}}
    write_json(tmp_path / "x.json", payload)
    assert json.loads((tmp_path / "x.json").read_text()) == payload


def finished_stage(tmp_path, key):
    stage = tmp_path / "stage"
    (stage / "part").mkdir(parents=True)
    (stage / "a.txt").write_text("a")
    (stage / "part" / "b.txt").write_text("b")
    write_manifest(stage, key, outputs=["a.txt", "part/b.txt"], rows={"a.txt": 1})
    return stage


def test_stage_is_current_when_key_matches_and_outputs_exist(tmp_path):
    settings = {"train": {"lr": 0.001, "epochs": 4, "masks": [1, 0]}, "seed": 0}
    key = stage_key("split", settings, {"inter": "abc"})
    stage = finished_stage(tmp_path, key)
    assert stage_is_current(stage, key) and why_not_current(stage, key) is None
    changed = {"train": {"lr": 0.003, "epochs": 4, "masks": [0, 1]}, "seed": 0, "loop": 2}
    assert why_not_current(stage, stage_key("split", changed, {"inter": "abc"})) == (
        "computed with other settings (loop (none) -> 2, train.lr 0.001 -> 0.003, train.masks [1, 0] -> [0, 1])")
    assert why_not_current(stage, stage_key("split", settings, {"inter": "xyz"})) == "computed with another 'inter' input"
    assert why_not_current(stage, dict(key, package="0.0.1")).startswith("computed with another version (split of")
    (stage / "part" / "b.txt").unlink()
    assert not stage_is_current(stage, key) and why_not_current(stage, key) == "outputs missing: part/b.txt"


def test_stage_without_manifest_is_not_current(tmp_path):
    (tmp_path / "stage").mkdir()
    assert not stage_is_current(tmp_path / "stage", stage_key("split", {}, {}))
    assert not stage_is_current(tmp_path / "missing", stage_key("split", {}, {}))


def test_a_manifest_from_before_keys_kept_their_settings_is_still_current_and_keeps_its_digest(tmp_path):
    key = stage_key("split", {"seed": 0}, {"inter": "abc"})
    older = {name: value for name, value in key.items() if name != "settings"}
    stage = finished_stage(tmp_path, older)
    assert why_not_current(stage, key) is None and key_digest(key) == key_digest(older)
    assert why_not_current(stage, stage_key("split", {"seed": 1}, {"inter": "abc"})) == (
        "computed with other settings (or stage code)")  # which setting changed is unknown


def test_code_version_names_the_package_and_the_checkouts_commit():
    version = code_version()  # the tests run from a git checkout
    assert version["package"] == __version__
    assert len(version["git"]) == 40 and isinstance(version["dirty"], bool)


def test_a_run_directory_held_by_another_process_is_refused_until_that_process_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from qbr_dist import artifacts\n"
        f"with artifacts.exclusive({str(tmp_path)!r}):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"\.lock: this run directory is in use by pid {holder.pid} on "):
            with artifacts.exclusive(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with artifacts.exclusive(tmp_path):  # the kernel dropped the killed holder's lock
        assert (tmp_path / artifacts.LOCK).read_text().startswith(f"pid {os.getpid()} ")


def test_a_stage_run_again_makes_the_files_it_shares_with_another_run_its_own(tmp_path):
    """A stage reused by hard links, then run again under the same key: in-place writes (DeepSpeed's) must not reach
    the run it was reused from."""
    first, second = tmp_path / "a" / "bert4rec", tmp_path / "b" / "bert4rec"
    (first / "ckpt").mkdir(parents=True)
    (first / "ckpt" / "mp_rank_00_model_states.pt").write_bytes(b"trained")
    (first / "metrics.json").write_text("{}")
    (second / "ckpt").mkdir(parents=True)
    for name in ("ckpt/mp_rank_00_model_states.pt", "metrics.json"):
        os.link(first / name, second / name)
    (second / "ckpt" / ".x.tmp-own").write_bytes(b"half a copy")  # left by a killed process
    artifacts.begin_stage(second)
    with open(second / "ckpt" / "mp_rank_00_model_states.pt", "r+b") as handle:  # written in place
        handle.write(b"RETRAIN")
    assert (first / "ckpt" / "mp_rank_00_model_states.pt").read_bytes() == b"trained"
    assert (second / "metrics.json").read_text() == "{}" and (first / "metrics.json").stat().st_nlink == 1
    assert sorted(p.name for p in second.rglob("*")) == ["ckpt", "metrics.json", "mp_rank_00_model_states.pt"]
