"""Shared test helpers: tiny synthetic interaction data with a learnable pattern, a local HTTP server."""
from __future__ import annotations

import contextlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def synthetic_interactions(users: int = 48, items: int = 30, seed: int = 0) -> pa.Table:
    """Each user walks the catalog in steps of 1 or 2 from a random start: a pattern worth learning."""
    rng = np.random.default_rng(seed)
    rows = {"user_id": [], "item_id": [], "timestamp": []}
    for user in range(users):
        current = int(rng.integers(items))
        for t in range(int(rng.integers(6, 16))):
            rows["user_id"].append(f"u{user}")
            rows["item_id"].append(f"i{current}")
            rows["timestamp"].append(float(1000 + t))
            current = (current + int(rng.integers(1, 3))) % items
    return pa.table(rows)


@pytest.fixture
def interactions_file(tmp_path):
    path = tmp_path / "interactions.parquet"
    pq.write_table(synthetic_interactions(), path)
    return path


class QuietHandler(BaseHTTPRequestHandler):
    """Request handler base for test servers: no request log, a helper to send a 200 body."""

    def send_body(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 (a free port) for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
