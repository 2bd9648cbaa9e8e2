"""What one node reports for a probe: a token file in a folder the run writes, or a file a stage reads."""
from __future__ import annotations

import os
import time

from qbr_dist.train.shared_folders import (FINGERPRINT_BYTES, FULLY_READ, PROBE_PREFIX, STALE_PROBE_S, Probe,
                                           answer_path, fingerprint, probe_problem, read_probes, written_probe)


def probe_of(path, content: str, *, answer: bool = True) -> Probe:
    """The probe the driver would send after reading `content` at `path`."""
    driver_copy = path.with_name(path.name + ".driver")
    driver_copy.write_text(content)
    digest = fingerprint(driver_copy)
    driver_copy.unlink()
    return Probe("run.root", str(path), digest, answer=answer)


def test_a_node_that_reads_the_token_writes_its_answer_beside_it(tmp_path):
    (tmp_path / "probe").write_text("abc")
    assert probe_problem(probe_of(tmp_path / "probe", "abc"), "node1") is None
    assert answer_path(tmp_path / "probe", "node1").read_text() == "node1"


def test_a_read_only_input_gets_no_answer(tmp_path):
    (tmp_path / "index.json").write_text("{}")
    assert probe_problem(probe_of(tmp_path / "index.json", "{}", answer=False), "node1") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_node_without_the_folder_says_it_cannot_read_the_probe(tmp_path):
    problem = probe_problem(Probe("run.root", str(tmp_path / "elsewhere" / "probe"), "3:abc", answer=True), "node1")
    assert problem.startswith("cannot read ") and "elsewhere/probe (No such file or directory)" in problem


def test_a_node_that_reads_another_file_says_so(tmp_path):
    (tmp_path / "probe").write_text("stale")
    assert "reads another file" in probe_problem(probe_of(tmp_path / "probe", "abc"), "node1")


def test_the_fingerprint_tells_files_apart_by_size_head_and_tail_only(tmp_path):
    middle = 3 * FINGERPRINT_BYTES
    base = b"h" * FINGERPRINT_BYTES + b"m" * middle + b"t" * FINGERPRINT_BYTES
    variants = {"same": base, "middle": base[:FINGERPRINT_BYTES] + b"x" * middle + base[-FINGERPRINT_BYTES:],
                "tail": base[:-1] + b"x", "head": b"x" + base[1:], "size": base + b"t"}
    prints = {}
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
        prints[name] = fingerprint(tmp_path / name)
    assert prints["middle"] == prints["same"]  # not read: the cost stays flat with the file's size
    assert len({prints[name] for name in ("same", "tail", "head", "size")}) == 4


def test_a_node_that_cannot_write_its_answer_says_where(tmp_path):
    (tmp_path / "probe").write_text("abc")
    answer_path(tmp_path / "probe", "node1").mkdir()  # a folder in the answer's place: the write fails, even as root
    assert probe_problem(probe_of(tmp_path / "probe", "abc"), "node1") == f"cannot write in {tmp_path} (Is a directory)"


def test_a_new_probe_removes_what_a_killed_driver_left_long_ago_and_nothing_newer(tmp_path):
    stale, recent, other = tmp_path / f"{PROBE_PREFIX}old", tmp_path / f"{PROBE_PREFIX}busy", tmp_path / "old-run"
    for path in (stale, recent, other):
        path.write_text("x")
    long_ago = time.time() - STALE_PROBE_S - 60
    os.utime(stale, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    probe = written_probe("run.root", tmp_path, "abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, other.name, probe.path.rsplit("/", 1)[1]])


def test_of_many_input_files_only_a_spread_sample_is_read_beyond_its_size(tmp_path):
    files = {}
    for n in range(FULLY_READ * 4):
        files[f"the features part-{n}"] = tmp_path / f"part-{n}.parquet"
        files[f"the features part-{n}"].write_bytes(bytes([n]) * 100)
    probes = read_probes(files)
    read = [n for n, probe in enumerate(probes) if probe.ends]
    assert len(read) == FULLY_READ and read[0] == 0 and read[-1] == len(files) - 1
    assert all(probe_problem(probe, "node1") is None for probe in probes)
    (tmp_path / "part-1.parquet").write_bytes(b"x" * 100)  # same size, not read: its content is not compared
    (tmp_path / "part-2.parquet").write_bytes(b"x" * 101)
    (tmp_path / "part-0.parquet").write_bytes(b"x" * 100)  # read: a change of content is found
    assert [n for n, probe in enumerate(probes[:3]) if probe_problem(probe, "node1")] == [0, 2]
    assert all(probe.ends for probe in read_probes(dict(list(files.items())[:FULLY_READ])))
