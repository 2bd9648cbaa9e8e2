"""A process SIGKILLed while it writes a parquet file or a manifest leaves nothing a later run takes as complete.

(Checkpoints: Ray Train lists a checkpoint in its run snapshot only once it is fully persisted,
and restarts read only listed ones; tests/reliability/test_faults.py kills runs at arbitrary
points around checkpoints.)
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq

from qbr_dist import artifacts

OLD_KEY = {"stage": "ingest", "config_hash": "old"}
NEW_KEY = {"stage": "ingest", "config_hash": "new"}

# A stage finishes under OLD_KEY, then reruns under NEW_KEY and is killed while it rewrites its table.
RERUN_KILLED_MID_WRITE = textwrap.dedent("""
    import sys, time
    import pyarrow as pa, pyarrow.parquet as pq
    from qbr_dist import artifacts
    stage = sys.argv[1]
    with artifacts.atomic_path(f"{stage}/items.parquet") as tmp:
        pq.write_table(pa.table({"item": list(range(1000))}), tmp)
    artifacts.write_manifest(stage, {"stage": "ingest", "config_hash": "old"}, outputs=["items.parquet"],
                             rows={"items": 1000})
    artifacts.begin_stage(stage)
    with artifacts.atomic_path(f"{stage}/items.parquet") as tmp:
        with pq.ParquetWriter(tmp, pa.schema([("item", pa.int64())])) as writer:
            writer.write_table(pa.table({"item": list(range(10))}))
            print("writing", flush=True)
            time.sleep(60)
""")

# Rewrites one manifest over and over with payloads of very different sizes.
MANIFEST_REWRITER = textwrap.dedent("""
    import sys
    from qbr_dist import artifacts
    n = 0
    while True:
        artifacts.write_manifest(sys.argv[1], {"n": n}, outputs=[], rows={"pad": "x" * (n % 7) * 200_000})
        n += 1
        if n == 3:
            print("writing", flush=True)
""")


def start(script: str, *args) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    return process


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_a_rerun_killed_mid_write_leaves_no_stage_that_passes_as_finished(tmp_path):
    stage = tmp_path / "ingest"
    kill(start(RERUN_KILLED_MID_WRITE, stage))

    assert not artifacts.stage_is_current(stage, OLD_KEY), "the old manifest vouches for outputs being replaced"
    assert not artifacts.stage_is_current(stage, NEW_KEY)
    assert pq.read_table(stage / "items.parquet").num_rows == 1000, "the last complete table was damaged"
    leftovers = list(stage.glob(".items.parquet.tmp-*"))
    assert leftovers, "the killed write should have left its temporary file"

    artifacts.begin_stage(stage)  # what the next run does first
    assert not list(stage.glob(".*.tmp-*"))


def test_a_manifest_read_after_a_kill_is_always_one_complete_version(tmp_path):
    for attempt in range(5):
        process = start(MANIFEST_REWRITER, tmp_path)
        time.sleep(0.05 * attempt)
        kill(process)
        manifest = json.loads((tmp_path / artifacts.MANIFEST).read_text())
        assert manifest["rows"]["pad"] == "x" * (manifest["key"]["n"] % 7) * 200_000


def test_a_stage_with_a_missing_output_is_not_current(tmp_path):
    with artifacts.atomic_path(tmp_path / "codes.parquet") as tmp:
        pq.write_table(pa.table({"code": [1, 2]}), tmp)
    artifacts.write_manifest(tmp_path, NEW_KEY, outputs=["codes.parquet"], rows={})
    assert artifacts.stage_is_current(tmp_path, NEW_KEY)
    (tmp_path / "codes.parquet").unlink()
    assert not artifacts.stage_is_current(tmp_path, NEW_KEY)
