"""Amazon Reviews readers: 2014 (`reviews_*_5.json.gz` JSON lines, `meta_*.json.gz` with one
Python-literal dict per line), 2018 and 2023 (JSON lines), gzip or plain.

Fields are mapped onto the design's tables: interactions (user_id, item_id, timestamp seconds)
and catalog rows (item_id, text from the configured fields, category, brand, image_url).
A line that is neither JSON nor a Python literal, or lacks a required field, is quarantined, as is
one whose id is not a string or integer, whose timestamp is not a finite number, or whose output
strings are not valid Unicode (a lone surrogate escape). A truncated gzip keeps the lines decoded
before the break and quarantines the break once. Every non-blank line counts in `quarantine.read`,
and the break as one more, so rows read = rows returned + rows quarantined.
Python literals are parsed with `ast.literal_eval`, which evaluates no code.
"""
from __future__ import annotations

import ast
import gzip
import json
import math
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.tables import INTERACTIONS_SCHEMA, LATEST_TIME, MILLISECONDS_AFTER, is_utf8, item_text

# Source field names, in order of preference, for each field of ours.
REVIEW_FIELDS = {
    "user_id": ("reviewerID", "user_id"),
    "item_id": ("parent_asin", "asin"),  # 2023 metadata is keyed by parent_asin; older dumps have asin only
    "timestamp": ("unixReviewTime", "timestamp"),
}
META_FIELDS = {
    "item_id": ("parent_asin", "asin"),
    "title": ("title",),
    "description": ("description",),
    "features": ("feature", "features"),
    "categories": ("categories", "category", "main_category"),
    "brand": ("brand", "store"),
    "images": ("imageURLHighRes", "imageURL", "imUrl", "images"),
}
TEXT_FIELDS = ("title", "description", "features", "categories", "brand")  # what data.text_fields may name


def is_amazon_file(path: Path) -> bool:
    return path.name.endswith((".json.gz", ".jsonl.gz", ".json", ".jsonl"))


def read_amazon_interactions(path: Path, quarantine: Quarantine) -> pa.Table:
    rows = {"user_id": [], "item_id": [], "timestamp": []}
    for where, record in _records(path, quarantine):
        values = {ours: _first(record, theirs) for ours, theirs in REVIEW_FIELDS.items()}
        row = {"user_id": _id(values["user_id"]), "item_id": _id(values["item_id"]),
               "timestamp": _seconds(values["timestamp"])}
        field = next((name for name, value in row.items() if value is None), None)
        if field:
            quarantine.add(source=str(path), where=where, field=field, reason=f"missing or invalid {field}")
            continue
        for name, value in row.items():
            rows[name].append(value)
    return pa.table(rows, schema=INTERACTIONS_SCHEMA)


def read_amazon_catalog(path: Path, text_fields: list[str], quarantine: Quarantine) -> pa.Table:
    """Catalog rows; `text` joins the named fields (title, description, features, categories, brand)."""
    rows, seen = [], set()
    for where, record in _records(path, quarantine):
        item = {ours: _first(record, theirs) for ours, theirs in META_FIELDS.items()}
        item_id = _id(item["item_id"])
        if item_id is None:
            reason = "missing item id" if item["item_id"] is None else "item id not a string or integer, or not Unicode"
            quarantine.add(source=str(path), where=where, field="item_id", reason=reason)
            continue
        if item_id in seen:
            quarantine.add(source=str(path), where=where, field="item_id", reason="duplicate item id", value=item_id)
            continue
        flat = {name: _flatten(value) for name, value in item.items() if name != "images"}
        row = {
            "item_id": item_id,
            "text": item_text(flat, text_fields),
            "category": _last_category(item["categories"]),
            "brand": flat["brand"] or None,
            "image_url": _image_url(item["images"]),
        }
        bad = next((name for name, value in row.items() if value is not None and not is_utf8(value)), None)
        if bad:
            quarantine.add(source=str(path), where=where, field=bad, reason="not valid Unicode (lone surrogate)")
            continue
        seen.add(item_id)
        rows.append(row)
    names = ("item_id", "text", "category", "brand", "image_url")
    return pa.table({n: pa.array([r[n] for r in rows], pa.string()) for n in names})


def _records(path: Path, quarantine: Quarantine) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue  # a blank line is not a row
                quarantine.read += 1
                record = _parse(raw)
                if record is None:
                    quarantine.add(source=str(path), where=f"line {line_no}", field="*",
                                   reason="not a JSON object or Python dict literal")
                    continue
                yield f"line {line_no}", record
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        quarantine.read += 1  # the break: one row read, one quarantined
        quarantine.add(source=str(path), where=f"after line {line_no}", field="*",
                       reason=f"truncated or corrupt gzip: {err}")


def _parse(raw: bytes) -> dict | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    for parse in (json.loads, _literal):
        try:
            value = parse(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: {[1]: 2}
            continue
        return value if isinstance(value, dict) else None
    return None


def _literal(text: str):
    """`ast.literal_eval` without the compiler's warning on an odd escape (`'\\:'`); where warnings
    are errors, that warning would reject a good line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.literal_eval(text)


def _first(record: dict, names: tuple[str, ...]):
    for name in names:
        if record.get(name) not in (None, "", []):
            return record[name]
    return None


def _id(value) -> str | None:
    """An id as text: a non-empty string or an integer, in valid Unicode; anything else is None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if text and is_utf8(text) else None


def _seconds(value) -> float | None:
    """Seconds since the epoch from a number or numeric string (ms above MILLISECONDS_AFTER); else None, as for a
    number before 1970 or past LATEST_TIME, which is no time in either unit."""
    if isinstance(value, bool):
        return None
    try:
        stamp = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(stamp) or not 0 <= stamp < LATEST_TIME:
        return None
    return stamp / 1000.0 if stamp > MILLISECONDS_AFTER else stamp


def _flatten(value) -> str:
    """Lists (possibly nested, as 2014 categories are) become one comma-separated string."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(part for part in (_flatten(v) for v in value) if part)
    return str(value).strip()


def _last_category(value) -> str | None:
    """The most specific category: the last entry of the first path (2014 nests paths in a list)."""
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        if isinstance(first, (list, tuple)):
            return str(first[-1]) if first else None
        return str(value[-1])
    return str(value) if value else None


def _image_url(value) -> str | None:
    """First image URL: a string, a list of strings (2014/2018) or of dicts with sizes (2023); a
    value of another type is no URL (None)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("hi_res") or value.get("large") or value.get("thumb")
    return value if isinstance(value, str) and value else None
