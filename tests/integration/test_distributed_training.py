"""Real Ray Train + DeepSpeed ZeRO on CPU: 2 workers equal 1 worker on the same global batches, under
ZeRO-3 (full softmax) and ZeRO-2 (sampled softmax). Checkpoints are kept to the final one: resuming
from mid-run checkpoints is tests/reliability/test_faults.py's subject, and each costs seconds here."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qbr_dist import pipeline
from qbr_dist.config import load_config
from qbr_dist.seqrec.bert4rec import BERT4Rec
from qbr_dist.train.export import WEIGHTS, load_weights
from tests.conftest import synthetic_interactions
from tests.integration.conftest import tiny_overrides

pytestmark = pytest.mark.integration


def final_checkpoint(stage_dir: Path) -> Path:
    checkpoint = Path(pipeline.read_metrics(stage_dir)["checkpoint"])
    assert checkpoint.is_dir()
    return checkpoint


def trained_parameters(stage_dir: Path) -> dict[str, torch.Tensor]:
    """The stage's exported weights: consolidated from its ZeRO checkpoint by DeepSpeed's zero_to_fp32."""
    return load_weights(stage_dir / WEIGHTS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("data") / "interactions.parquet"
    pq.write_table(synthetic_interactions(), path)
    return path


def train(root, data, name, workers, zero_stage=2, **extra):
    overrides = tiny_overrides(root, data, name, **{"runtime.num_workers": workers, "runtime.zero_stage": zero_stage,
                                                    "runtime.checkpoint_every": 10**6}, **extra)
    cfg = load_config(None, overrides)
    run = pipeline.run_dir(cfg)
    return cfg, pipeline.bert4rec(cfg, run, pipeline.ingest(cfg, run))


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, data, ray_cluster):
    return train(tmp_path_factory.mktemp("one"), data, "one", workers=1)[1]


def test_two_zero3_workers_match_one_worker(tmp_path, data, one_worker, ray_cluster):
    cfg, two = train(tmp_path, data, "two-zero3", workers=2, zero_stage=3)

    assert not (two / "item_counts.npy").exists(), "30 items train on the full softmax by default"
    two_ckpt = final_checkpoint(two)
    digests = sorted(p.read_text() for p in two_ckpt.glob("params-rank*.sha256"))
    assert len(digests) == 2 and digests[0] == digests[1], "ranks ended with different parameters"
    assert digests[0].strip() == pipeline.read_metrics(two)["best"]["params_sha256"], \
        "the final weights are not those of the best validation point"

    after_two, after_one = trained_parameters(two), trained_parameters(one_worker)
    torch.manual_seed(cfg.run.seed)
    initial = BERT4Rec(num_items=30, hidden=16, layers=1, heads=2, max_len=8, dropout=0.0).state_dict()
    assert not torch.allclose(initial["tokens.table.weight"], after_two["tokens.table.weight"]), "training changed nothing"
    assert set(after_one) == set(after_two)
    for name, value in after_one.items():
        assert torch.allclose(value, after_two[name], atol=1e-5, rtol=0), name

    two_metrics, one_metrics = pipeline.read_metrics(two), pipeline.read_metrics(one_worker)
    assert two_metrics["steps"] == one_metrics["steps"] > 0
    assert two_metrics["test"]["NDCG@10"] == pytest.approx(one_metrics["test"]["NDCG@10"], abs=1e-6)
    for run in (two_metrics, one_metrics):  # the training steps' own time: less than the whole fit
        assert run["train_sequences"] == run["steps"] * cfg.train.batch_size
        assert 0 < run["train_s"] < run["train_wall_s"]
        assert run["sequences_per_s"] == pytest.approx(run["train_sequences"] / run["train_s"], rel=0.01)


def test_sampled_softmax_two_workers_match_one_worker(tmp_path, data, one_worker, ray_cluster):
    """Every rank draws the same negatives per step, so 2 ZeRO-2 workers still equal 1 worker."""
    sampled = {"train.sampled_softmax_above": 0, "train.negatives": 8}
    _, one = train(tmp_path / "one", data, "sampled-one", workers=1, **sampled)
    _, two = train(tmp_path / "two", data, "sampled-two", workers=2, zero_stage=2, **sampled)
    assert (two / "item_counts.npy").is_file()
    after_one, after_two = trained_parameters(one), trained_parameters(two)
    full_softmax = trained_parameters(one_worker)["tokens.table.weight"]
    assert not torch.allclose(after_one["tokens.table.weight"], full_softmax), "sampled softmax was not used"
    for name, value in after_one.items():
        assert torch.allclose(value, after_two[name], atol=1e-5, rtol=0), name
    assert pipeline.read_metrics(two)["test"]["NDCG@10"] == pytest.approx(
        pipeline.read_metrics(one)["test"]["NDCG@10"], abs=1e-6)
