"""The quantize stage in RQ-VAE mode on two real Ray Train workers with DeepSpeed ZeRO-3 (gloo): codes
are unique, the learned codebooks are kept in one versioned file with the encoder, and
retokenizing the same vectors with that file gives the same codes. ZeRO-3, the stage where the
parameters are partitioned: a forward under its hooks once left the saved encoder empty (the
retokenizer then failed to load it); the other stages read the same weights without a gather."""
from __future__ import annotations

import json

import pytest

from qbr_dist import pipeline
from qbr_dist.config import load_config
from qbr_dist.quant import CODEBOOKS, CODES, STATS
from qbr_dist.quant.codebook import load_codebooks
from qbr_dist.quant.codes import read_codes

pytestmark = pytest.mark.integration


def test_rqvae_mode_trains_saves_and_retokenizes(tmp_path, encode_dir, ray_cluster):
    cfg = load_config(None, [f"run.root='{tmp_path}'", "run.name=rq", "quant.mode=rqvae", "quant.input=text_emb",
                             "quant.levels=2", "quant.codebook_size=6", "quant.iterations=10",
                             "quant.rqvae_hidden=[16]", "quant.rqvae_latent_dim=4", "quant.rqvae_epochs=4",
                             "quant.rqvae_batch_size=64", "quant.retokenize_actors=1", "runtime.num_workers=2",
                             "runtime.checkpoint_every=5", "runtime.dashboard=false", "runtime.zero_stage=3"])
    root = pipeline.run_dir(cfg)
    quantized = pipeline.quantize(cfg, root, encode_dir)

    stats = json.loads((quantized / STATS).read_text())
    assert stats["mode"] == "rqvae" and stats["workers"] == 2 and stats["dim"] == 4
    assert stats["steps"] == 4 * (250 // 32) and len(stats["curve"]) == 4
    assert stats["curve"][-1]["reconstruction"] < stats["curve"][0]["reconstruction"]
    assert [level["level"] for level in stats["levels"]] == [0, 1] and 0 < stats["reconstruction_error"] < 1
    tensors, version, metadata = load_codebooks(quantized / CODEBOOKS)
    assert metadata["mode"] == "rqvae" and json.loads(metadata["encoder_dims"]) == [8, 16, 4]
    assert tensors["codebooks"].shape == (2, 6, 4) and "encoder.0.weight" in tensors

    codes = read_codes(quantized / CODES, expected_version=version)
    assert len({tuple(c) for c in codes.column("codes").to_pylist()}) == 500

    dirs = {"quantize": quantized, "encode": encode_dir}
    again = read_codes(pipeline.retokenize(cfg, root, encode_dir, dirs) / CODES, expected_version=version)
    assert sorted(again.to_pylist(), key=lambda r: r["item_id"]) == sorted(codes.to_pylist(),
                                                                          key=lambda r: r["item_id"])
