"""What one node reports when it probes a folder the driver wrote a token into."""
from __future__ import annotations

from qbr_dist.train.shared_folders import answer_path, probe_problem


def test_a_node_that_reads_the_token_writes_its_answer_beside_it(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("abc")
    assert probe_problem(probe, "abc", "node1") is None
    assert answer_path(probe, "node1").read_text() == "abc"


def test_a_node_without_the_folder_says_it_cannot_read_the_probe(tmp_path):
    problem = probe_problem(tmp_path / "elsewhere" / "probe", "abc", "node1")
    assert problem.startswith("cannot read ") and "elsewhere/probe" in problem


def test_a_node_that_reads_other_content_says_so(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("stale")
    assert "reads other content" in probe_problem(probe, "abc", "node1")


def test_a_node_that_cannot_write_its_answer_says_where(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("abc")
    answer_path(probe, "node1").mkdir()  # a folder in the answer's place: the write fails, even as root
    assert probe_problem(probe, "abc", "node1") == f"cannot write in {tmp_path} (Is a directory)"
