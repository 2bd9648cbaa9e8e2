"""URL image fetcher against a real HTTP server on 127.0.0.1: ok, 404, slow, flaky, too large."""
import io
import json
import time

import pytest
from PIL import Image

from qbr_dist import pipeline
from qbr_dist.config import load_config
from qbr_dist.data.images import fetch_images
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import image_path

from ..conftest import QuietHandler, local_http_server

PAYLOAD = b"\xff\xd8 pretend jpeg bytes \xff\xd9"


def real_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 80), "green").save(out, format="JPEG")
    return out.getvalue()


class Handler(QuietHandler):
    flaky_calls = 0

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/slow.jpg":
            time.sleep(1.5)
        if self.path == "/flaky.jpg":
            Handler.flaky_calls += 1
            if Handler.flaky_calls == 1:
                return self.send_error(503)
        if self.path == "/missing.jpg":
            return self.send_error(404)
        if self.path == "/cut.jpg":  # announces more than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Length", str(10 * len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
            return None
        self.send_body(real_jpeg() if self.path == "/real.jpg" else PAYLOAD * (1000 if self.path == "/huge.jpg" else 1))


@pytest.fixture
def server():
    with local_http_server(Handler) as url:
        yield url


def fetch(urls, folder, quarantine):
    return fetch_images(urls, folder, concurrency=4, retries=2, timeout_s=0.5, max_bytes=10_000, quarantine=quarantine)


def test_fetcher_keeps_going_past_bad_urls(server, tmp_path):
    Handler.flaky_calls = 0
    urls = {name: f"{server}/{name}.jpg" for name in ("ok", "missing", "slow", "flaky", "huge")}
    urls["odd.id/1"] = f"{server}/ok.jpg"
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        summary = fetch(urls, tmp_path / "img", quarantine)
    assert (summary.fetched, summary.failed) == (3, 3)
    assert image_path(tmp_path / "img", "ok").read_bytes() == PAYLOAD
    assert image_path(tmp_path / "img", "flaky").read_bytes() == PAYLOAD  # retried after a 503
    assert image_path(tmp_path / "img", "odd.id/1").is_file()
    text = (tmp_path / "q.jsonl").read_text()
    assert "HTTP 404" in text and "timed out" in text.lower() and "larger than 10000 bytes" in text
    assert not list((tmp_path / "img").glob(".*tmp*"))


def test_malformed_urls_and_cut_bodies_are_quarantined_not_saved(server, tmp_path):
    urls = {"cut": f"{server}/cut.jpg", "words": "not a url", "ipv6": "http://[::1/x.jpg",
            "space": f"{server}/a b.jpg", "ok": f"{server}/ok.jpg", "\u00e9" * 50: f"{server}/ok.jpg"}
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        summary = fetch(urls, tmp_path / "img", quarantine)
    assert (summary.fetched, summary.failed) == (1, 5)
    assert not image_path(tmp_path / "img", "cut").exists()  # a later fetch tries it again
    reasons = {r["where"]: r["reason"] for r in map(json.loads, (tmp_path / "q.jsonl").read_text().splitlines())}
    assert f"truncated: {len(PAYLOAD)} of {10 * len(PAYLOAD)} bytes" in reasons["item cut"]
    assert all("malformed URL" in reasons[f"item {name}"] for name in ("words", "ipv6", "space"))
    assert "file name would be longer than" in reasons["item " + "\u00e9" * 50]  # 300 bytes percent-encoded


def test_second_fetch_skips_images_already_there(server, tmp_path):
    urls = {"ok": f"{server}/ok.jpg"}
    fetch(urls, tmp_path / "img", Quarantine())
    again = fetch(urls, tmp_path / "img", Quarantine())
    assert (again.fetched, again.already_there, again.failed) == (0, 1, 0)


def test_shards_stage_fetches_amazon_image_urls(server, tmp_path):
    meta = [{"parent_asin": "P1", "title": "Shoe", "images": [{"large": f"{server}/real.jpg"}]},
            {"parent_asin": "P2", "title": "Sock", "images": [{"large": f"{server}/missing.jpg"}]},
            {"parent_asin": "P3", "title": "Cap"}]
    reviews = [{"user_id": "u", "parent_asin": p, "timestamp": 1_600_000_000_000 + i}
               for i, p in enumerate(["P1", "P2", "P3"])]
    for name, rows in (("meta.jsonl", meta), ("reviews.jsonl", reviews)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        f"run.root='{tmp_path}'", "run.name=amz", "data.dataset=files",
        f"data.interactions='{tmp_path / 'reviews.jsonl'}'", f"data.catalog='{tmp_path / 'meta.jsonl'}'",
        "data.text_fields=['title']", f"shards.root='{tmp_path / 'shards'}'", "shards.fetch_images=true",
        f"shards.images_dir='{tmp_path / 'img'}'", "shards.fetch_timeout_s=2.0",
    ])
    folder = pipeline.shards(cfg, pipeline.ingest(cfg, pipeline.run_dir(cfg)))
    index = json.loads((folder / "index.json").read_text())
    assert (index["items"], index["with_image"], index["quarantined"]) == (3, 1, 1)
    assert "HTTP 404" in (folder / "quarantine.jsonl").read_text()
