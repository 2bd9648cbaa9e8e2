"""Encoding job on real Ray Data actors: the packaged MiniLM text model and a tiny open_clip ViT
initialised at random on purpose; one clean shard set and one hand-made shard with bad samples."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from prometheus_client import REGISTRY

from qbr_dist.artifacts import file_fingerprint
from qbr_dist.config import load_config
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import INDEX, shard_key, write_shards
from qbr_dist.encode.job import encode_shards, shard_state
from tests.conftest import TINY_VIT

pytestmark = pytest.mark.integration



def jpeg(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (90, 70), color).save(out, format="JPEG")
    return out.getvalue()


def encode_config():
    return load_config(None, [
        "encode.image_model=qbr-tiny-vit", f"encode.image_model_config='{TINY_VIT}'",
        "encode.image_random_init=true", "encode.batch_size=8", "encode.actors=1",
    ]).encode


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """12 clean items (8 with images) written by our writer, plus one hand-made shard of bad samples."""
    root = tmp_path_factory.mktemp("shards")
    ids = [f"item.{i}" for i in range(12)]
    images = [jpeg((20 * i, 40, 90)) if i < 8 else None for i in range(12)]
    catalog = root / "items.parquet"
    pq.write_table(pa.table({"item_id": ids, "text": [f"product {i}" for i in ids],
                             "image": pa.array(images, pa.binary())}), catalog)
    with Quarantine() as quarantine:
        index = write_shards(catalog, root, max_bytes=4096, images_dir=None, image_max_side=64,
                             max_pixels=10**6, jpeg_quality=90, quarantine=quarantine)
    bad = root / "shard-bad.tar"
    with wds.TarWriter(str(bad)) as sink:
        sink.write({"__key__": shard_key("ok"), "txt": "fine", "json": json.dumps({"item_id": "ok"})})
        sink.write({"__key__": shard_key("bad-json"), "txt": "x", "json": b"{not json"})
        sink.write({"__key__": shard_key("bad-text"), "txt": b"\xff\xfe\xfa", "json": json.dumps({"item_id": "bad-text"})})
        sink.write({"__key__": shard_key("bad-jpg"), "txt": "y", "json": json.dumps({"item_id": "bad-jpg"}),
                    "jpg": b"\xff\xd8 truncated"})
        sink.write({"__key__": shard_key("blank"), "txt": " \n", "json": json.dumps({"item_id": "blank"})})
    truncated = root / "shard-truncated.tar"
    with wds.TarWriter(str(truncated)) as sink:
        for key in ("t0", "t1", "t2"):
            sink.write({"__key__": key, "txt": f"text {key}", "json": json.dumps({"item_id": key})})
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[:len(whole) // 3])  # breaks inside t1: t0 is complete
    index["shards"] += [
        {"file": bad.name, "items": 5, "bytes": bad.stat().st_size, "sha256": file_fingerprint(bad)},
        {"file": truncated.name, "items": 3, "bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()},
    ]
    (root / INDEX).write_text(json.dumps(index))
    return root


def run(shard_dir, out):
    with Quarantine(out / "quarantine.jsonl") as quarantine:
        return encode_shards(shard_dir, out, encode_config(), quarantine=quarantine)


def _encoded_items() -> float:
    """The driver's count of items encoded (a run without obs has the empty run label)."""
    return REGISTRY.get_sample_value("qbr_encode_items_total", {"stage": "encode", "run": ""}) or 0.0


def test_encode_job_features_quarantine_and_resume(shard_dir, tmp_path, ray_cluster):
    before = _encoded_items()
    totals = run(shard_dir, tmp_path)
    tables = [pq.read_table(p) for p in sorted(tmp_path.glob("*.parquet"))]
    table = pa.concat_tables(tables)
    by_id = {row["item_id"]: row for row in table.to_pylist()}

    assert set(by_id) == {f"item.{i}" for i in range(12)} | {"ok", "bad-jpg", "blank", "t0"}
    assert table.schema.field("text_emb").type == pa.list_(pa.float32(), 384)
    assert table.schema.field("image_emb").type == pa.list_(pa.float32(), 32)
    assert by_id["item.0"]["has_image"] and len(by_id["item.0"]["image_emb"]) == 32
    assert not by_id["item.9"]["has_image"] and by_id["item.9"]["image_emb"] is None
    assert not by_id["bad-jpg"]["has_image"] and by_id["bad-jpg"]["image_emb"] is None
    assert by_id["blank"]["text_emb"] is None and len(by_id["ok"]["text_emb"]) == 384
    assert totals["items"] == 16 and totals["with_image"] == 8 and totals["with_text"] == 15
    assert totals["read"] == 18  # the 16 kept and the 2 left out; bad-jpg is kept without its image, blank without text
    assert _encoded_items() - before == 16  # the driver counts what the actors encoded and the job kept

    records = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    reasons = " | ".join(r["reason"] for r in records)
    assert "invalid json" in reasons and "not UTF-8" in reasons and "unreadable image" in reasons
    assert "empty text" in reasons
    (broken,) = [r for r in records if r["source"].endswith("shard-truncated.tar")]
    assert broken["where"] == "after sample 1" and "checksum differs" in broken["reason"]
    assert totals["quarantined"] == len(records) == 5

    again = run(shard_dir, tmp_path)  # the salvaged shard, unchanged since, counts as done like the others
    assert again["skipped_shards"] == totals["skipped_shards"] + len(tables) and again["items"] == 0
    state = shard_state(shard_dir, tmp_path)  # what the stage key says of the shards: the same on both runs
    assert list(state) == ["damaged_shards"] and list(state["damaged_shards"]) == ["shard-truncated.tar"]
    assert len((tmp_path / "quarantine.jsonl").read_text().splitlines()) == 5  # kept, not repeated

    fewer = tmp_path / "fewer"  # the bad shard left out of the index, the damaged one changed
    shutil.copytree(shard_dir, fewer)
    index = json.loads((fewer / INDEX).read_text())
    index["shards"] = [shard for shard in index["shards"] if shard["file"] != "shard-bad.tar"]
    (fewer / INDEX).write_text(json.dumps(index))
    (fewer / "shard-truncated.tar").write_bytes((fewer / "shard-truncated.tar").read_bytes() + b"\0")
    third = run(fewer, tmp_path)
    assert third["incomplete_shards"] == ["shard-truncated.tar"] and third["items"] == 1  # salvaged again
    assert shard_state(fewer, tmp_path) != state
    assert not (tmp_path / "shard-bad.parquet").exists() and "shard-bad.tar" not in json.loads(
        (tmp_path / "shards_done.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert [Path(r["source"]).name for r in records] == ["shard-truncated.tar"]
