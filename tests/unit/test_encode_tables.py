"""Feature table layout of the encoding job, without Ray."""
import numpy as np
import pyarrow as pa

from qbr_dist.encode.job import _feature_table, decode_batch

from ..conftest import broken_png


def raw(image_dim):
    return pa.table({
        "item_id": ["a", "b"], "text_emb": list(np.ones((2, 4), np.float32)),
        "image_emb": list(np.ones((2, image_dim), np.float32)), "has_image": [True, False],
        "has_text": [True, True],
    })


def test_image_vectors_are_fixed_size_and_null_without_an_image():
    table = _feature_table(raw(3))
    assert table.schema.field("text_emb").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("image_emb").type == pa.list_(pa.float32(), 3)
    assert table.column("image_emb").to_pylist() == [[1.0, 1.0, 1.0], None]


def test_text_only_encoding_gives_an_all_null_image_column():
    table = _feature_table(raw(0).set_column(3, "has_image", pa.array([False, False])))
    assert table.column("image_emb").null_count == 2


def test_decode_flags_bad_samples_and_keeps_missing_members_as_absent():
    batch = {"__key__": np.array(["a", "b", "c"], dtype=object),
             "json": np.array([b'{"item_id": "a"}', b"{oops", b'{"item_id": "c"}'], dtype=object),
             "txt": np.array([b"fine", b"x", b"\xff\xfe"], dtype=object),
             "jpg": np.array([float("nan"), b"not a jpeg", float("nan")], dtype=object)}
    out = decode_batch(batch, image_size=8, max_pixels=10**6)
    assert out["fatal"].tolist() == [False, True, True]
    assert out["problem"][0] == "" and "invalid json" in out["problem"][1] and "UTF-8" in out["problem"][2]
    assert out["image"].shape == (3, 8, 8, 3) and not out["has_image"].any()


def test_decode_keeps_an_item_whose_image_decoder_raises_anything():
    batch = {"__key__": np.array(["a"], dtype=object), "json": np.array([b'{"item_id": "a"}'], dtype=object),
             "txt": np.array([b"fine"], dtype=object), "jpg": np.array([broken_png()], dtype=object)}
    out = decode_batch(batch, image_size=8, max_pixels=10**6)
    assert out["fatal"].tolist() == [False] and not out["has_image"].any()
    assert "unreadable image" in out["problem"][0] and "SyntaxError" in out["problem"][0]


def test_empty_text_is_flagged_and_gives_a_null_text_vector():
    batch = {"__key__": np.array(["a", "b", "c"], dtype=object),
             "json": np.array([b'{"item_id": "a"}', b'{"item_id": "b"}', b'{"item_id": "c"}'], dtype=object),
             "txt": np.array([b"fine", b" \n ", float("nan")], dtype=object),  # c: no txt member at all
             "jpg": np.array([None, None, None], dtype=object)}
    out = decode_batch(batch, image_size=8, max_pixels=10**6)
    assert out["has_text"].tolist() == [True, False, False] and not out["fatal"].any()
    assert "empty text" in out["problem"][1] and out["problem"][0] == out["problem"][2] == ""  # c is not bad data
    table = _feature_table(raw(0).set_column(4, "has_text", pa.array([True, False])))
    assert table.column("text_emb").to_pylist() == [[1.0] * 4, None]
