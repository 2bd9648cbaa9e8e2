"""Amazon Reviews 2014 / 2018 / 2023 readers on small hand-written fixtures, with bad lines."""
import gzip
import json

import pytest

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.readers import DataError, read_catalog, read_interactions

TEXT_FIELDS = ["title", "description", "features", "categories", "brand"]

META_2014 = [  # one Python-literal dict per line, as the 2014 dump ships
    "{'asin': 'B001', 'title': 'Red Mug', 'categories': [['Home', 'Kitchen', 'Mugs']], 'brand': 'Acme', "
    "'imUrl': 'http://127.0.0.1/b001.jpg', 'description': 'A mug.'}",
    "{'asin': 'B002', 'title': 'Blue Cup', 'categories': [['Home', 'Cups']], 'related': {'also_bought': ['B001']}}",
    "{'asin': 'B001', 'title': 'duplicate of the first'}",
    "__import__('os').system('echo unsafe')",
    "{'title': 'no asin'}",
]
REVIEWS_2014 = [
    json.dumps({"reviewerID": "U1", "asin": "B001", "unixReviewTime": 1400000000, "overall": 5.0}),
    json.dumps({"reviewerID": "U1", "asin": "B002", "unixReviewTime": 1400000100}),
    '{"reviewerID": "U2", "asin": "B001", "unixReviewTime": ',  # malformed
    json.dumps({"reviewerID": "U2", "asin": "B002"}),  # no time
]
META_2023 = [
    json.dumps({"parent_asin": "P1", "title": "Trail Shoe", "features": ["light", "grippy"],
                "description": ["For trails."], "categories": ["Sports", "Running"], "store": "Go",
                "images": [{"thumb": "t.jpg", "large": "l.jpg", "hi_res": None}]}),
    json.dumps({"parent_asin": "P2", "title": "Road Shoe", "images": []}),
]
REVIEWS_2023 = [
    json.dumps({"user_id": "A", "parent_asin": "P1", "asin": "C1", "timestamp": 1588615855070, "rating": 4}),
    json.dumps({"user_id": "A", "parent_asin": "P2", "timestamp": 1588615955070}),
]


def write(tmp_path, name, lines, compress=True):
    path = tmp_path / name
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_2014_metadata_parsed_without_eval(tmp_path, capfd):
    quarantine = Quarantine(tmp_path / "q.jsonl")
    table = read_catalog(write(tmp_path, "meta_Home.json.gz", META_2014), TEXT_FIELDS, quarantine)
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"B001", "B002"}
    assert rows["B001"]["text"] == "Red Mug. A mug.. Home, Kitchen, Mugs. Acme"
    assert rows["B001"]["category"] == "Mugs" and rows["B001"]["brand"] == "Acme"
    assert rows["B001"]["image_url"] == "http://127.0.0.1/b001.jpg"
    assert "unsafe" not in capfd.readouterr().out  # the code-like line was never run
    assert dict(quarantine.counts) == {"duplicate item id": 1, "not a JSON object or Python dict literal": 1,
                                       "missing item id": 1}


def test_a_text_field_amazon_metadata_lacks_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "meta_Home.json.gz", META_2014)
    with pytest.raises(DataError, match=r"meta_Home.json.gz: data.text_fields names 'movie_title', not a field"):
        read_catalog(path, ["title", "movie_title"], Quarantine())


def test_2014_reviews(tmp_path):
    quarantine = Quarantine()
    table = read_interactions(write(tmp_path, "reviews_Home_5.json.gz", REVIEWS_2014), quarantine)
    assert table.to_pylist() == [
        {"user_id": "U1", "item_id": "B001", "timestamp": 1400000000.0},
        {"user_id": "U1", "item_id": "B002", "timestamp": 1400000100.0},
    ]
    assert quarantine.total == 2


def test_a_review_time_before_1970_or_past_1e13_is_quarantined(tmp_path):
    lines = [json.dumps({"reviewerID": user, "asin": "B1", "unixReviewTime": stamp})
             for user, stamp in (("U1", -5), ("U2", 1e30), ("U3", 1400000000))]
    quarantine = Quarantine()
    assert read_interactions(write(tmp_path, "reviews.json", lines, compress=False), quarantine).column(
        "user_id").to_pylist() == ["U3"]
    assert quarantine.counts == {"missing or invalid timestamp": 2}


def test_2023_jsonl_catalog_and_millisecond_reviews(tmp_path):
    catalog = read_catalog(write(tmp_path, "meta_Sports.jsonl", META_2023, compress=False), TEXT_FIELDS, Quarantine())
    rows = {r["item_id"]: r for r in catalog.to_pylist()}
    assert rows["P1"]["text"] == "Trail Shoe. For trails.. light, grippy. Sports, Running. Go"
    assert rows["P1"]["brand"] == "Go" and rows["P1"]["category"] == "Running"
    assert rows["P1"]["image_url"] == "l.jpg" and rows["P2"]["image_url"] is None
    reviews = read_interactions(write(tmp_path, "Sports.jsonl.gz", REVIEWS_2023), Quarantine())
    assert reviews.column("item_id").to_pylist() == ["P1", "P2"]  # parent_asin groups variants
    assert reviews.column("timestamp").to_pylist() == pytest.approx([1588615855.07, 1588615955.07])


def test_truncated_gzip_keeps_what_was_read_and_quarantines_the_break(tmp_path):
    lines = [json.dumps({"reviewerID": f"U{i}", "asin": "B1", "unixReviewTime": 1400000000 + i}) for i in range(2000)]
    path = write(tmp_path, "reviews_x.json.gz", lines)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    quarantine = Quarantine()
    table = read_interactions(path, quarantine)
    assert 0 < table.num_rows < 2000
    assert quarantine.total == 1 and "truncated or corrupt gzip" in next(iter(quarantine.counts))
