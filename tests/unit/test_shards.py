"""Shard writer: real WebDataset tars read back with webdataset itself."""
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import INDEX, item_id_of, make_sample, salvage_shard, shard_key, write_shards

from ..conftest import broken_png

IDS = ["B00.1/x", "plain", "with space", "ünï.cödé", "a%2Eb"]


def jpeg(size=(300, 200), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def catalog(tmp_path):
    images = [jpeg(), None, b"not a jpeg", jpeg((40, 40)), None]
    table = pa.table({
        "item_id": IDS, "text": [f"item {i}" for i in IDS], "category": ["c1", "c2", None, "c1", "c3"],
        "image": pa.array(images, pa.binary()),
    })
    path = tmp_path / "items.parquet"
    pq.write_table(table, path)
    return path


def write(catalog, folder, **overrides):
    kw = dict(max_bytes=1 << 30, images_dir=None, image_max_side=64, max_pixels=10**6, jpeg_quality=90)
    with Quarantine(folder / "quarantine.jsonl") as quarantine:
        return write_shards(catalog, folder, quarantine=quarantine, **(kw | overrides)), quarantine


@pytest.mark.parametrize("item_id", IDS)
def test_keys_are_reversible_and_webdataset_safe(item_id):
    key = shard_key(item_id)
    assert "." not in key and "/" not in key
    assert item_id_of(key) == item_id


def test_samples_round_trip_through_webdataset(catalog, tmp_path):
    index, quarantine = write(catalog, tmp_path / "s")
    assert index["items"] == 5 and index["with_image"] == 2
    assert quarantine.total == 1  # the broken image: item kept without one
    record = json.loads((tmp_path / "s" / "quarantine.jsonl").read_text())
    assert record["field"] == "image" and "B00" not in record["where"]
    urls = [str(tmp_path / "s" / s["file"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [json.loads(s["json"])["item_id"] for s in samples] == IDS
    by_id = {json.loads(s["json"])["item_id"]: s for s in samples}
    assert by_id["with space"]["txt"] == b"item with space"
    assert json.loads(by_id["plain"]["json"])["category"] == "c2"
    assert "jpg" not in by_id["plain"] and "jpg" not in by_id["with space"]
    with Image.open(io.BytesIO(by_id["B00.1/x"]["jpg"])) as image:
        assert max(image.size) == 64 and image.size == (64, 43)


def test_same_input_same_bytes(catalog, tmp_path):
    first, _ = write(catalog, tmp_path / "a")
    second, _ = write(catalog, tmp_path / "b")
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]


def test_shards_close_at_the_size_bound_and_the_index_adds_up(catalog, tmp_path):
    index, _ = write(catalog, tmp_path / "s", max_bytes=600)
    assert len(index["shards"]) > 1
    assert sum(s["items"] for s in index["shards"]) == 5
    for shard in index["shards"]:
        path = tmp_path / "s" / shard["file"]
        assert path.stat().st_size == shard["bytes"]
        with tarfile.open(path) as tar:
            assert len({m.name.split(".", 1)[0] for m in tar.getmembers()}) == shard["items"]
    assert json.loads((tmp_path / "s" / INDEX).read_text()) == index
    assert not list((tmp_path / "s").glob("*.partial"))


def test_images_over_the_pixel_bound_are_refused(catalog, tmp_path):
    index, quarantine = write(catalog, tmp_path / "s", max_pixels=50 * 50)
    assert index["with_image"] == 1  # only the 40x40 one is under the bound
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "s" / "quarantine.jsonl").read_text().splitlines()]
    assert sum("exceeds the 2500-pixel bound" in r for r in reasons) == 1


def test_images_from_a_folder_by_item_id(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "text": ["x", "y"]}), path)
    images = tmp_path / "img"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg((20, 20)))  # the key of a plain id is the id itself
    index, _ = write(path, tmp_path / "s", images_dir=images)
    assert index["with_image"] == 1


def test_any_image_failure_is_the_items_problem_not_the_jobs(tmp_path):
    """A decoder's SyntaxError, a path that names no file and an id too long for a file name each leave
    their item without an image, listed in the quarantine; the items themselves are all written."""
    path = tmp_path / "items.parquet"
    long_id = "\u00e9" * 50  # percent-encoded to a 300-character key: longer than a file name may be
    (tmp_path / "broken.png").write_bytes(broken_png())
    pq.write_table(pa.table({"item_id": ["png", "gone", long_id, "fine"], "text": ["a", "b", "c", "d"],
                             "image": [str(tmp_path / "broken.png"), str(tmp_path / "nowhere.jpg"), None, None]}), path)
    images = tmp_path / "img"
    images.mkdir()
    (images / "fine.jpg").write_bytes(jpeg((20, 20)))
    index, quarantine = write(path, tmp_path / "s", images_dir=images)
    assert index["items"] == 4 and index["with_image"] == 1
    records = [json.loads(line) for line in (tmp_path / "s" / "quarantine.jsonl").read_text().splitlines()]
    reasons = {r["where"]: r["reason"] for r in records}
    assert "SyntaxError" in reasons["item png"] and "FileNotFoundError" in reasons["item gone"]
    assert "File name too long" in reasons[f"item {long_id}"]


def text_shard(path, keys):
    with wds.TarWriter(str(path)) as sink:
        for key in keys:
            sink.write({"__key__": key, "txt": f"text {key}" * 50, "json": json.dumps({"item_id": key})})
    return path.read_bytes()


def keys_in(path):
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})


def test_salvage_keeps_the_complete_samples_before_a_break(tmp_path):
    whole = text_shard(tmp_path / "s.tar", ["a", "b", "c", "d"])
    (tmp_path / "s.tar").write_bytes(whole[: len(whole) * 5 // 8])  # inside "c"
    copied, problem = salvage_shard(tmp_path / "s.tar", tmp_path / "out.tar", expected_items=4)
    assert copied == 2 and problem is not None
    assert keys_in(tmp_path / "out.tar") == ["a", "b"]


def test_salvage_reports_a_tar_that_ends_cleanly_but_early(tmp_path):
    text_shard(tmp_path / "s.tar", ["a", "b"])
    copied, problem = salvage_shard(tmp_path / "s.tar", tmp_path / "out.tar", expected_items=3)
    assert copied == 1 and "ends after 2 of the 3 samples" in problem  # "b" may be missing files
    assert salvage_shard(tmp_path / "s.tar", tmp_path / "again.tar", expected_items=2) == (2, None)


def test_an_item_without_text_has_no_txt_member_and_empty_text_is_kept_as_given():
    assert "txt" not in make_sample("a", None, {}, None) and make_sample("b", "", {}, None)["txt"] == ""
