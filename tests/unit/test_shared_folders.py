"""What one node reports for a probe: a token file in a folder the run writes, or a file a stage reads."""
from __future__ import annotations

import hashlib

from qbr_dist.train.shared_folders import Probe, answer_path, probe_problem


def probe_of(path, content: str, *, answer: bool = True) -> Probe:
    return Probe("run.root", str(path), hashlib.sha256(content.encode()).hexdigest(), answer=answer)


def test_a_node_that_reads_the_token_writes_its_answer_beside_it(tmp_path):
    (tmp_path / "probe").write_text("abc")
    assert probe_problem(probe_of(tmp_path / "probe", "abc"), "node1") is None
    assert answer_path(tmp_path / "probe", "node1").read_text() == "node1"


def test_a_read_only_input_gets_no_answer(tmp_path):
    (tmp_path / "index.json").write_text("{}")
    assert probe_problem(probe_of(tmp_path / "index.json", "{}", answer=False), "node1") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_node_without_the_folder_says_it_cannot_read_the_probe(tmp_path):
    problem = probe_problem(probe_of(tmp_path / "elsewhere" / "probe", "abc"), "node1")
    assert problem.startswith("cannot read ") and "elsewhere/probe (No such file or directory)" in problem


def test_a_node_that_reads_other_bytes_says_so(tmp_path):
    (tmp_path / "probe").write_text("stale")
    assert "reads other bytes" in probe_problem(probe_of(tmp_path / "probe", "abc"), "node1")


def test_a_node_that_cannot_write_its_answer_says_where(tmp_path):
    (tmp_path / "probe").write_text("abc")
    answer_path(tmp_path / "probe", "node1").mkdir()  # a folder in the answer's place: the write fails, even as root
    assert probe_problem(probe_of(tmp_path / "probe", "abc"), "node1") == f"cannot write in {tmp_path} (Is a directory)"
