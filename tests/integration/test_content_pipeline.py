"""Content pipeline end to end, as `qbr encode` runs it: ingest -> shards -> Ray Data encode.

Three catalogs: a small synthetic one (prebuilt shards from `qbr data synth`), an Amazon 2014
dump with images from a local folder, and an Amazon 2023 dump whose images are fetched from an
HTTP server on 127.0.0.1. Each has bad records among good ones. The text model is the packaged
MiniLM; the image model a tiny open_clip ViT initialised at random on purpose.
"""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qbr_dist.cli import main
from qbr_dist.data import synth
from qbr_dist.data.shards import INDEX, image_path
from qbr_dist.encode.job import SHARDS_DONE
from ..conftest import TINY_VIT, QuietHandler, local_http_server

pytestmark = pytest.mark.integration

ENCODE = ["encode.image_model=qbr-tiny-vit", f"encode.image_model_config='{TINY_VIT}'",
          "encode.image_random_init=true", "encode.batch_size=16", "runtime.ray_num_cpus=2",
          "runtime.object_store_mb=256", "runtime.dashboard=false"]
AMAZON_TEXT = "data.text_fields=['title', 'description', 'features', 'categories', 'brand']"


def jpeg(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 90), colour).save(out, format="JPEG")
    return out.getvalue()


def gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def encode_run(tmp_path: Path, name: str, *overrides: str) -> tuple[dict, pa.Table, list[dict]]:
    args = ["encode", "--set", f"run.root='{tmp_path / 'runs'}'", "--set", f"run.name={name}",
            "--set", f"shards.root='{tmp_path / 'shards'}'", "--set", "shards.max_bytes=20000"]
    for value in (*ENCODE, *overrides):
        args += ["--set", value]
    assert main(args) == 0
    stage = tmp_path / "runs" / name / "encode"
    table = pa.concat_tables([pq.read_table(p) for p in sorted(stage.glob("shard-*.parquet"))])
    quarantine = tmp_path / "runs" / name / "encode" / "quarantine.jsonl"
    records = [json.loads(line) for line in quarantine.read_text().splitlines()] if quarantine.is_file() else []
    return json.loads((stage / SHARDS_DONE).read_text()), table, records


def shard_quarantine(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / "shards" / name / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def assert_feature_shapes(table: pa.Table) -> None:
    assert table.schema.field("text_emb").type == pa.list_(pa.float32(), 384)
    assert table.schema.field("image_emb").type == pa.list_(pa.float32(), 32)
    for row in table.to_pylist():
        assert (row["image_emb"] is not None) == row["has_image"]


def test_synthetic_catalog_through_prebuilt_shards(tmp_path, ray_cluster):
    out = tmp_path / "synth"
    summary = synth.synthesize(synth.SynthSpec(items=300, users=120, shard_bytes=300_000), out)
    overrides = ["data.dataset=files", f"data.interactions='{out / synth.INTERACTIONS}'",
                 f"data.catalog='{out / synth.CATALOG}'", "data.text_fields=['title', 'description']",
                 f"shards.prebuilt_dir='{out / synth.SHARDS}'"]
    done, table, records = encode_run(tmp_path, "synth", *overrides)
    assert summary["shards"] > 1 and len(done) == summary["shards"]
    assert table.num_rows == 300 and all(table.column("has_image").to_pylist()) and not records
    assert_feature_shapes(table)
    assert sorted(table.column("item_id").to_pylist()) == pq.read_table(out / synth.CATALOG).column("item_id").to_pylist()

    encode_run(tmp_path, "synth", *overrides)
    again = json.loads((tmp_path / "runs" / "synth" / "encode" / SHARDS_DONE).read_text())
    assert again == done  # every shard skipped: nothing re-encoded, no entry rewritten


def test_amazon_2014_with_local_images(tmp_path, ray_cluster):
    meta = gz(tmp_path / "meta_Home.json.gz", [
        "{'asin': 'B001', 'title': 'Red Mug', 'categories': [['Home', 'Mugs']], 'brand': 'Acme', 'description': 'Tall.'}",
        "{'asin': 'B002', 'title': 'Blue Cup', 'categories': [['Home', 'Cups']]}",
        "{'asin': 'B003', 'title': 'Green Bowl', 'categories': [['Home', 'Bowls']], 'brand': 'Acme'}",
        "{'asin': 'B004', 'title': 'Plain Plate'",  # malformed
        "{'asin': 'B005', 'title': 'Black Tray', 'categories': [['Home', 'Trays']]}",
    ])
    reviews = gz(tmp_path / "reviews_Home_5.json.gz", [
        json.dumps({"reviewerID": f"U{u}", "asin": f"B00{i}", "unixReviewTime": 1400000000 + 100 * i + u})
        for u in range(4) for i in (1, 2, 3, 5)
    ])
    images = tmp_path / "images"
    images.mkdir()
    image_path(images, "B001").write_bytes(jpeg("red"))
    image_path(images, "B002").write_bytes(b"\xff\xd8 this is no jpeg")  # broken
    image_path(images, "B003").write_bytes(jpeg("green"))
    done, table, records = encode_run(tmp_path, "amazon14", "data.dataset=files", f"data.interactions='{reviews}'",
                                      f"data.catalog='{meta}'", AMAZON_TEXT, f"shards.images_dir='{images}'")
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"B001", "B002", "B003", "B005"}
    assert [i for i, r in sorted(rows.items()) if r["has_image"]] == ["B001", "B003"]
    assert_feature_shapes(table)
    (broken,) = shard_quarantine(tmp_path, "amazon14")
    assert broken["field"] == "image" and broken["where"] == "item B002"
    ingest_quarantine = (tmp_path / "runs" / "amazon14" / "ingest" / "quarantine.jsonl").read_text()
    assert "not a JSON object or Python dict literal" in ingest_quarantine  # the malformed line


class Images(QuietHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/missing.jpg":
            return self.send_error(404)
        self.send_body(jpeg("blue") if self.path == "/good.jpg" else b"<html>not an image</html>")


@pytest.fixture
def image_server():
    with local_http_server(Images) as url:
        yield url


def test_amazon_2023_with_fetched_images(tmp_path, ray_cluster, image_server):
    def item(asin, title, image):
        return json.dumps({"parent_asin": asin, "title": title, "features": ["light"], "store": "Go",
                           "categories": ["Sports", "Running"],
                           "images": [{"large": f"{image_server}/{image}"}] if image else []})

    meta = tmp_path / "meta_Sports.jsonl"
    meta.write_text("\n".join([item("P1", "Trail Shoe", "good.jpg"), item("P2", "Road Shoe", "missing.jpg"),
                               '{"parent_asin": "P3", "title": ', item("P4", "Sock", "html.jpg"),
                               item("P5", "Cap", None)]) + "\n")
    reviews = tmp_path / "Sports.jsonl"
    reviews.write_text("\n".join(
        json.dumps({"user_id": f"A{u}", "parent_asin": p, "timestamp": 1588615855070 + 1000 * i + u})
        for u in range(3) for i, p in enumerate(("P1", "P2", "P4", "P5"))) + "\n")
    done, table, records = encode_run(
        tmp_path, "amazon23", "data.dataset=files", f"data.interactions='{reviews}'", f"data.catalog='{meta}'",
        AMAZON_TEXT, f"shards.images_dir='{tmp_path / 'fetched'}'", "shards.fetch_images=true",
        "shards.fetch_retries=0")
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"P1", "P2", "P4", "P5"}
    assert [i for i, r in sorted(rows.items()) if r["has_image"]] == ["P1"]
    assert_feature_shapes(table)
    problems = {r["where"]: r["field"] for r in shard_quarantine(tmp_path, "amazon23")}
    assert set(problems) == {"item P2", "item P4"}  # the 404 and the page that is not an image
    assert json.loads((tmp_path / "shards" / "amazon23" / INDEX).read_text())["with_image"] == 1
