"""Real Ray Train + DeepSpeed ZeRO-2 on CPU: 2 workers equal 1 worker on the same global batches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qbr_dist import pipeline
from qbr_dist.config import load_config
from qbr_dist.seqrec.bert4rec import BERT4Rec
from tests.integration.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def final_checkpoint(stage_dir: Path) -> Path:
    checkpoint = Path(pipeline.read_metrics(stage_dir)["checkpoint"])
    assert checkpoint.is_dir()
    return checkpoint


def trained_parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    # DeepSpeed's model-state file, written by this test's own run.
    states = torch.load(checkpoint / "state" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return states["module"]


def train(tmp_path, interactions_file, name, workers):
    cfg = load_config(None, tiny_overrides(tmp_path, interactions_file, name,
                                           **{"runtime.num_workers": workers, "runtime.zero_stage": 2}))
    root = pipeline.run_dir(cfg)
    ingest_dir = pipeline.ingest(cfg, root)
    return cfg, pipeline.bert4rec(cfg, root, ingest_dir)


def test_two_zero2_workers_match_one_worker(tmp_path, interactions_file, ray_cluster):
    cfg, two = train(tmp_path, interactions_file, "two", workers=2)
    _, one = train(tmp_path, interactions_file, "one", workers=1)

    two_ckpt, one_ckpt = final_checkpoint(two), final_checkpoint(one)
    digests = sorted(p.read_text() for p in two_ckpt.glob("params-rank*.sha256"))
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with different parameters"

    after_two, after_one = trained_parameters(two_ckpt), trained_parameters(one_ckpt)
    torch.manual_seed(cfg.run.seed)
    initial = BERT4Rec(num_items=30, hidden=16, layers=1, heads=2, max_len=8, dropout=0.0).state_dict()
    assert not torch.allclose(initial["item_emb.weight"], after_two["item_emb.weight"]), "training changed nothing"
    for name, value in after_one.items():
        assert torch.allclose(value, after_two[name], atol=1e-5, rtol=0), name

    two_metrics, one_metrics = pipeline.read_metrics(two), pipeline.read_metrics(one)
    assert two_metrics["steps"] == one_metrics["steps"] > 0
    assert two_metrics["test"]["NDCG@10"] == pytest.approx(one_metrics["test"]["NDCG@10"], abs=1e-6)
