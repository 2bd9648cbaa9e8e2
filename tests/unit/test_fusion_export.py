"""The exported fusion model: it round-trips without its ID table, fuses Arrow batches with the
same result as the training-time model, and treats null or absent columns as missing modalities."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from qbr_dist.fusion.export import ID_VECTOR, batch_inputs, fuse_batch, load_model, save_model
from qbr_dist.fusion.model import CrossModalFusion

ARGUMENTS = {"input_dims": {"text": 6, "image": 4, "cooc": 3}, "vocab_size": 10, "dim": 8, "layers": 2,
             "temperature": 0.1, "gate_threshold": 0.5, "dropout": 0.0}


def vectors(rows, width, nulls=()):
    values = np.arange(len(rows) * width, dtype=np.float32).reshape(len(rows), width) / 10
    mask = pa.array([i in nulls for i in range(len(rows))])
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width, mask=mask)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CrossModalFusion(num_items=5, **ARGUMENTS).eval()


def table(model, rows=("a", "b", "c")):
    ids = model.id_embedding.weight[1:1 + len(rows)].detach().numpy()
    return pa.table({
        "item_id": list(rows), "text_emb": vectors(rows, 6), "image_emb": vectors(rows, 4, nulls=(1,)),
        "has_image": [True, False, True], "struct_tokens": pa.array([[1, 2, 3], [], None], pa.list_(pa.int32())),
        ID_VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), 8, mask=pa.array([False, False, True])),
    })


def test_round_trip_keeps_every_weight_but_the_id_table(tmp_path, model):
    save_model(tmp_path / "m.safetensors", model, arguments=ARGUMENTS, max_tokens=2)
    loaded, max_tokens = load_model(tmp_path / "m.safetensors")
    assert max_tokens == 2 and not loaded.training and loaded.id_embedding.num_embeddings == 1
    for name, tensor in model.state_dict().items():
        if not name.startswith("id_embedding."):
            assert torch.equal(loaded.state_dict()[name], tensor)


def test_batch_inputs_mark_nulls_and_absent_columns_missing(model):
    inputs = batch_inputs(table(model), model, max_tokens=2)
    assert inputs["text_present"].tolist() == [True, True, True]
    assert inputs["image_present"].tolist() == [True, False, True] and inputs["image"][1].abs().sum() == 0
    assert inputs["cooc_present"].tolist() == [False] * 3 and inputs["cooc"].shape == (3, 3)
    assert inputs["tokens"].tolist() == [[1, 2], [0, 0], [0, 0]]


def test_vectors_of_another_width_are_an_error_not_a_missing_modality(model):
    rows = ("a", "b", "c")
    with pytest.raises(ValueError, match=r"column 'text_emb': expected vectors of 6 floats each, got fixed_size_list"):
        batch_inputs(table(model).set_column(1, "text_emb", vectors(rows, 384)), model, max_tokens=2)
    uneven = pa.array([[0.0] * 6, [0.0] * 5, None], pa.list_(pa.float64()))
    with pytest.raises(ValueError, match=r"expected vectors of 6 floats each, got list<.*> with other lengths"):
        batch_inputs(table(model).set_column(1, "text_emb", uneven), model, max_tokens=2)
    all_null = pa.array([None] * 3, pa.list_(pa.float32()))  # the encode stage's image column without an image model
    inputs = batch_inputs(table(model).set_column(2, "image_emb", all_null), model, max_tokens=2)
    assert inputs["image_present"].tolist() == [False] * 3


def test_vectors_as_variable_lists_of_the_right_width_are_taken_as_they_are(model):
    """A feature table written through pandas holds plain lists, not fixed-size ones."""
    plain = table(model).to_pandas()
    assert batch_inputs(pa.Table.from_pandas(plain), model, max_tokens=2)["text"].tolist() == \
        batch_inputs(table(model), model, max_tokens=2)["text"].tolist()


def test_fused_batch_matches_the_training_model(tmp_path, model):
    save_model(tmp_path / "m.safetensors", model, arguments=ARGUMENTS, max_tokens=3)
    loaded, max_tokens = load_model(tmp_path / "m.safetensors")
    batch = table(model)
    fused, has_id, content = fuse_batch(loaded, batch, max_tokens)
    assert has_id.tolist() == [True, True, False] and content.all()
    expected = model(torch.tensor([1, 2, 3]), batch_inputs(batch, model, 3),
                     use_id=torch.tensor([True, True, False]))["fused"].detach().numpy()
    np.testing.assert_allclose(fused, expected, rtol=1e-6, atol=1e-6)  # item c: query from the content head


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path, model):
    from safetensors import safe_open
    from safetensors.torch import save_file

    save_model(tmp_path / "m.safetensors", model, arguments=ARGUMENTS, max_tokens=2)
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors | {"surplus": torch.zeros(1)}, str(tmp_path / "m.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="fusion weights do not fit"):
        load_model(tmp_path / "m.safetensors")


def test_a_row_with_nothing_fusion_reads_is_marked_without_content(tmp_path, model):
    save_model(tmp_path / "m.safetensors", model, arguments=ARGUMENTS, max_tokens=3)
    loaded, max_tokens = load_model(tmp_path / "m.safetensors")
    batch = table(model)
    nothing = pa.table({field.name: pa.nulls(1, field.type) for field in batch.schema}).set_column(
        0, "item_id", pa.array(["d"]))
    tokens_only = nothing.set_column(0, "item_id", pa.array(["e"])).set_column(
        4, "struct_tokens", pa.array([[2]], pa.list_(pa.int32())))
    _, has_id, content = fuse_batch(loaded, pa.concat_tables([batch, nothing, tokens_only]), max_tokens)
    assert has_id.tolist() == [True, True, False, False, False]
    assert content.tolist() == [True, True, True, False, True]
