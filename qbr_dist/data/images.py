"""Item images fetched from their URLs: bounded concurrency, retries with backoff, a timeout.

Each image lands in `<folder>/<key>.jpg` (the shard key of the item id, see `shards.image_path`),
written atomically; an image already there is not fetched again, so an interrupted fetch
resumes. A URL that fails for good (HTTP 4xx, a malformed URL, or still failing after the
retries; a body shorter than its Content-Length is a failure to retry, never a saved image)
leaves the item without an image: counted and listed in the quarantine, never stopping the job.
"""
from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from qbr_dist import artifacts
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import image_path


@dataclass
class FetchSummary:
    fetched: int = 0
    already_there: int = 0
    failed: int = 0


def fetch_images(
    urls: dict[str, str], folder: Path, *, concurrency: int, retries: int, timeout_s: float,
    max_bytes: int, quarantine: Quarantine,
) -> FetchSummary:
    """Download `urls` (item id -> URL) into `folder`; returns what happened to them."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = FetchSummary()
    pending = {}
    longest = _longest_name(folder)
    for item_id, url in urls.items():
        path = image_path(folder, item_id)
        if len(f".{path.name}.tmp-{os.getpid()}".encode()) > longest:  # the name it is written under first
            summary.failed += 1
            quarantine.add(source=url, where=f"item {item_id}", field="image_url",
                           reason=f"image not fetched, item kept without it: its file name would be longer than "
                                  f"the {longest} bytes {folder} allows")
        elif path.is_file():
            summary.already_there += 1
        else:
            pending[item_id] = url
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = pool.map(lambda item: _fetch_one(*item, folder, retries, timeout_s, max_bytes), pending.items())
        for (item_id, url), error in zip(pending.items(), outcomes):
            if error is None:
                summary.fetched += 1
            else:
                summary.failed += 1
                quarantine.add(source=url, where=f"item {item_id}", field="image_url",
                               reason=f"image not fetched, item kept without it: {error}")
    return summary


def _longest_name(folder: Path) -> int:
    """The longest file name `folder`'s file system takes (255 where it does not say)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _fetch_one(item_id: str, url: str, folder: Path, retries: int, timeout_s: float, max_bytes: int) -> str | None:
    """None on success, else the last error as text."""
    error = "not tried"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.2 * 2**attempt, 5.0))
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                announced = response.headers.get("Content-Length")
                data = response.read(max_bytes + 1)
            if len(data) > max_bytes:
                return f"larger than {max_bytes} bytes"
            if announced and announced.isdigit() and len(data) < int(announced):
                error = f"truncated: {len(data)} of {announced} bytes"
                continue
            with artifacts.atomic_path(image_path(folder, item_id)) as tmp:
                tmp.write_bytes(data)
            return None
        except urllib.error.HTTPError as err:
            error = f"HTTP {err.code}"
            if 400 <= err.code < 500 and err.code not in (408, 429):
                return error  # the server said no: retrying will not help
        except (ValueError, http.client.InvalidURL) as err:
            return f"malformed URL: {err}"  # retrying will not help
        except (http.client.HTTPException, OSError) as err:  # unreachable, timed out, reset, cut short
            error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
    return error
