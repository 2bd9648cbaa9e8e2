"""Faults during a whole `qbr run` with the semantic tokenizer, against the uninterrupted shared
tiny run of the same config and seed (tests/conftest.py) under another root:

1. the driver (with its embedded Ray and every worker) is SIGKILLed during fusion training;
2. the rerun is SIGKILLed during retokenization;
3. in the next rerun one Ray Train worker is SIGKILLed during Q-BERT4Rec training, and
   FailureConfig restarts the worker group from the latest checkpoint.

Each rerun skips the stages already finished (manifest match) and resumes the interrupted one.
The run ends with byte-identical codes; fusion and Q-BERT4Rec, though resumed mid-epoch, end with
the same step counts, identical metrics and loss curves, and parameters within 1e-5; and every
model stage that was never interrupted (popularity, content-knn, BERT4Rec) has identical metrics:
the same config and seed give the same results. Ray Train's snapshot of each interrupted stage lists
exactly the checkpoint folders left behind (those a kill left unrecorded are removed on the resume).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from qbr_dist import artifacts, pipeline
from qbr_dist.data.tables import column_matrix
from qbr_dist.fusion import STATS as FUSION_STATS
from qbr_dist.quant import CODES
from qbr_dist.train.export import WEIGHTS, load_weights
from qbr_dist.train.runtime import recorded_checkpoints
from tests.conftest import tokenizer_run_overrides
from tests.reliability.conftest import (kill_one_train_worker, kill_tree, latest_checkpoint_step, qbr_run,
                                        wait_for)

pytestmark = pytest.mark.integration

FUSION_KILL_STEP, QBERT_KILL_STEP = 8, 8
RUN_TIMEOUT_S = 1200  # generous: a loaded 2-core machine runs these several times slower


def finished(process, log) -> None:
    assert process.wait(timeout=RUN_TIMEOUT_S) == 0, log.read_text()[-4000:]


def metrics(run, stage: str) -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


def test_a_run_survives_killed_drivers_and_a_dead_worker(tmp_path, synth_catalog, tokenized_run):
    straight = pipeline.run_dir(tokenized_run.cfg)
    crashed = tmp_path / straight.name
    overrides = tokenizer_run_overrides(tmp_path, synth_catalog)  # obs off, dashboard off: results unchanged
    logs = [tmp_path / f"attempt{n}.log" for n in (1, 2, 3)]

    attempt = qbr_run(overrides, logs[0])
    wait_for(lambda: latest_checkpoint_step(crashed / "fusion") >= FUSION_KILL_STEP, attempt,
             what="a fusion checkpoint")
    kill_tree(attempt)
    assert artifacts.read_manifest(crashed / "fusion") is None, "fusion had finished before the kill"

    attempt = qbr_run(overrides, logs[1])
    wait_for(lambda: "stage retokenize: running" in logs[1].read_text(), attempt, what="retokenization")
    time.sleep(1.0)  # its actors are starting or quantizing
    kill_tree(attempt)
    assert artifacts.read_manifest(crashed / "retokenize") is None, "retokenization had finished before the kill"

    attempt = qbr_run(overrides, logs[2])
    wait_for(lambda: latest_checkpoint_step(crashed / "qbert4rec") >= QBERT_KILL_STEP, attempt,
             what="a Q-BERT4Rec checkpoint")
    kill_one_train_worker(attempt)
    finished(attempt, logs[2])

    second, third = logs[1].read_text(), logs[2].read_text()
    for stage in ("ingest", "encode", "structure"):
        assert f"stage {stage}: up to date, skipped" in second, stage
    fusion_stats = json.loads((crashed / "fusion" / FUSION_STATS).read_text())
    assert len(fusion_stats["resumed_at"]) == 1 and fusion_stats["resumed_at"][0] >= FUSION_KILL_STEP
    for stage in ("ingest", "encode", "structure", "fusion", "quantize"):
        assert f"stage {stage}: up to date, skipped" in third, stage
    assert "stage retokenize: running" in third

    for stage in ("quantize", "retokenize"):
        assert (crashed / stage / CODES).read_bytes() == (straight / stage / CODES).read_bytes(), stage

    fusion_expected = json.loads((straight / "fusion" / FUSION_STATS).read_text())
    assert without_run_facts(fusion_stats) == without_run_facts(fusion_expected)  # loss curve included
    fused = [pq.read_table(pipeline.feature_files(run / "fusion")) for run in (straight, crashed)]
    assert fused[0].column("item_id") == fused[1].column("item_id")
    assert np.allclose(column_matrix(fused[0].column("fused")), column_matrix(fused[1].column("fused")), atol=1e-5)

    expected, resumed = metrics(straight, "qbert4rec"), metrics(crashed, "qbert4rec")
    assert expected["resumed_at"] == [] and len(resumed["resumed_at"]) == 1
    assert resumed["resumed_at"][0] >= QBERT_KILL_STEP and resumed["steps"] == expected["steps"]
    assert without_run_facts(resumed) == without_run_facts(expected)  # every metric, the curve, the best epoch
    expected_params, resumed_params = load_weights(straight / "qbert4rec" / WEIGHTS), load_weights(
        crashed / "qbert4rec" / WEIGHTS)
    assert set(expected_params) == set(resumed_params)
    for name, value in expected_params.items():
        assert torch.allclose(value, resumed_params[name], atol=1e-5, rtol=0), name

    for stage in ("popularity", "content-knn", "bert4rec"):  # never interrupted: run twice, same results
        assert without_run_facts(metrics(crashed, stage)) == without_run_facts(metrics(straight, stage)), stage

    for stage in ("fusion", "qbert4rec"):  # the killed driver's unrecorded checkpoints went when the stage resumed
        for run_folder in (crashed / stage / "ray").iterdir():
            recorded = recorded_checkpoints(run_folder)
            kept = {path.name for path in run_folder.glob("checkpoint_*") if path.is_dir()}
            assert recorded and recorded == kept, (stage, recorded, kept)


def without_run_facts(stats: dict) -> dict:
    """Everything but how this particular run went: wall time, where its checkpoint lies, its restarts."""
    return {k: v for k, v in stats.items() if k not in ("train_wall_s", "train_s", "sequences_per_s", "checkpoint",
                                                      "resumed_at")}
