"""Fusion model, loss and feature arrays on tiny inputs."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from qbr_dist.fusion import features
from qbr_dist.fusion.loss import fusion_loss, info_nce
from qbr_dist.fusion.model import MODALITIES, CrossModalFusion
from qbr_dist.fusion.train_loop import adjacent_pairs, paired_items
DIMS = {"text": 6, "image": 5, "cooc": 4}

def model(**kw):
    torch.manual_seed(0)
    return CrossModalFusion(num_items=10, input_dims=DIMS, vocab_size=7, dim=8, layers=3, **kw)

def batch(n=4, image=True):
    g = torch.Generator().manual_seed(1)
    out = {name: torch.randn(n, width, generator=g) for name, width in DIMS.items()}
    out |= {f"{name}_present": torch.ones(n, dtype=torch.bool) for name in DIMS}
    out["image_present"][:] = image
    out["tokens"] = torch.tensor([[1, 2, 0]] * (n - 1) + [[0, 0, 0]])
    return out

def test_missing_modalities_get_no_weight():
    out = model()(torch.arange(1, 5), batch(image=False))
    image = MODALITIES.index("image")
    assert torch.all(out["weights"][:, :, image] == 0)
    assert torch.allclose(out["weights"].sum(-1), torch.ones(4, 3))
    tokens = MODALITIES.index("tokens")
    assert not out["present"][3, tokens] and torch.all(out["weights"][3, :, tokens] == 0)
    assert out["fused"].shape == (4, 8) and out["gates"].shape == (4, 3)

def test_items_without_an_id_vector_use_the_content_query():
    fusion = model().eval()
    feats = batch()
    items = torch.arange(1, 5)
    with torch.no_grad():
        with_id = fusion(items, feats)["fused"]
        fusion.id_embedding.weight.add_(1.0)  # only the ID table changes
        cold = fusion(items, feats, use_id=torch.zeros(4, dtype=torch.bool))["fused"]
        warm = fusion(items, feats, use_id=torch.ones(4, dtype=torch.bool))["fused"]
    assert torch.allclose(cold, fusion(items, feats, use_id=torch.zeros(4, dtype=torch.bool))["fused"])
    assert not torch.allclose(warm, with_id)
    assert torch.allclose(cold, model().eval()(items, feats, use_id=torch.zeros(4, dtype=torch.bool))["fused"])

def test_a_closed_gate_stops_fusion_at_inference():
    fusion = model(gate_threshold=0.5).eval()
    with torch.no_grad():
        fusion.layers[0].gate[-1].bias.fill_(50.0)
        fusion.layers[1].gate[-1].bias.fill_(-50.0)  # layer 2 closes for everyone
        fusion.layers[2].gate[-1].bias.fill_(50.0)
        out = fusion(torch.arange(1, 5), batch())
    assert out["depth"].tolist() == [1, 1, 1, 1]  # layer 3 is not applied either once an item stopped
    fusion.train()
    assert "depth" in fusion(torch.arange(1, 5), batch())  # training applies every layer, scaled by its gate

def test_info_nce_prefers_matching_pairs_and_ignores_invalid_rows():
    anchors = torch.eye(4)
    good = info_nce(anchors, anchors, torch.ones(4, dtype=torch.bool), temperature=0.1)
    bad = info_nce(anchors, anchors.roll(1, 0), torch.ones(4, dtype=torch.bool), temperature=0.1)
    assert good < 0.01 < bad
    assert info_nce(anchors, anchors, torch.tensor([True, False, False, False]), temperature=0.1) == 0

def test_a_few_steps_reduce_the_loss():
    fusion = model(dropout=0.0)
    optimizer = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    feats, items = batch(8), torch.arange(1, 9)
    losses = []
    for _ in range(30):
        out = fusion(items, feats)
        half = {k: v[:4] for k, v in out.items()}
        loss, parts = fusion_loss(half, {"fused": out["fused"][4:]}, temperature=0.1, id_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and set(parts) >= {"view_text", "collaborative", "id_head"}

def test_adjacent_pairs_come_from_training_parts_only():
    pairs = adjacent_pairs({"items": [np.array([1, 2, 3, 4, 5]), np.array([7, 8, 9])]}, window=1)
    assert list(zip(pairs["anchor"], pairs["neighbour"])) == [(1, 2), (2, 3)]

def test_only_items_in_some_training_pair_count_as_trained():
    # [7, 8, 9]: training part [7] alone (8 and 9 are the validation and test targets), so 7 is in no pair
    paired = paired_items([np.array([1, 2, 3, 4, 5]), np.array([7, 8, 9])], num_items=9)
    assert np.nonzero(paired)[0].tolist() == [1, 2, 3]

def test_feature_arrays_follow_item_order_and_mark_missing_rows(tmp_path):
    encode = tmp_path / "shard-000000.parquet"
    pq.write_table(pa.table({
        "item_id": ["b", "a", "d"],  # d's text was empty: no text vector
        "text_emb": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 2,
                                                      mask=pa.array([False, False, True])),
        "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(9, np.float32)), 3,
                                                       mask=pa.array([True, False, True])),
        "has_image": [False, True, False],
    }), encode)
    structure = tmp_path / "structure.parquet"
    pq.write_table(pa.table({
        "item_id": ["a", "b", "c"], "struct_tokens": pa.array([[1, 2, 3], [], [2]], pa.list_(pa.int32())),
        "cooc_emb": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 2),
        "has_cooc": [True, False, True],
    }), structure)
    shapes = features.assemble(tmp_path / "f", item_ids=["a", "b", "c", "d"], encode_files=[encode],
                               structure_file=structure, max_tokens=2)
    arrays = features.load(tmp_path / "f")
    assert shapes["text"] == (5, 2) and shapes["image"] == (5, 3)
    assert arrays["text"][1].tolist() == [2, 3] and arrays["text"][2].tolist() == [0, 1]  # a, b
    assert arrays["text_present"].tolist() == [False, True, True, False, False]  # c never encoded, d empty text
    assert arrays["text"][4].tolist() == [0, 0]
    assert arrays["image_present"].tolist() == [False, True, False, False, False]
    assert arrays["tokens"][1].tolist() == [1, 2] and arrays["tokens"][3].tolist() == [2, 0]
    assert arrays["cooc_present"].tolist() == [False, True, False, True, False]
    shared = tmp_path / "reused"  # another run's stage, sharing the files by hard links (pipeline._reuse)
    shared.mkdir()
    for path in (tmp_path / "f").iterdir():
        os.link(path, shared / path.name)
    before = {path.name: path.read_bytes() for path in shared.iterdir()}
    features.assemble(tmp_path / "f", item_ids=["d", "c"], encode_files=[encode], structure_file=structure,
                      max_tokens=1)
    assert {path.name: path.read_bytes() for path in shared.iterdir()} == before
    assert features.load(tmp_path / "f")["tokens"].shape == (3, 1)
    assert not list((tmp_path / "f").glob(".*"))

@pytest.mark.parametrize("n", [1, 3])
def test_batch_features_reads_rows(tmp_path, n):
    arrays = {"x": np.arange(10).reshape(5, 2)}
    assert features.batch_features(arrays, np.arange(n))["x"].shape == (n, 2)

def test_a_bf16_model_fuses_bf16_inputs():
    """What a bf16 DeepSpeed run does: parameters cast to bf16, float inputs cast to match (runtime.on_device)."""
    from qbr_dist.train.runtime import on_device
    bf16 = model().bfloat16()
    out = bf16(torch.arange(1, 5), on_device(batch(), torch.device("cpu"), torch.bfloat16))
    assert out["fused"].dtype == torch.bfloat16 and torch.isfinite(out["fused"].float()).all()
