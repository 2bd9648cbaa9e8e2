"""Amazon Reviews readers: 2014 (`reviews_*_5.json.gz` JSON lines, `meta_*.json.gz` with one
Python-literal dict per line), 2018 and 2023 (JSON lines), gzip or plain.

Fields are mapped onto the design's tables: interactions (user_id, item_id, timestamp seconds)
and catalog rows (item_id, text from the configured fields, category, brand, image_url).
A line that is neither JSON nor a Python literal, or lacks a required field, is quarantined;
a truncated gzip keeps the lines decoded before the break and quarantines the break once.
Python literals are parsed with `ast.literal_eval`, which evaluates no code.
"""
from __future__ import annotations

import ast
import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.tables import INTERACTIONS_SCHEMA

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
MILLISECONDS_AFTER = 10**11  # 2023 timestamps are in ms; seconds stay below this until year 5138


def is_amazon_file(path: Path) -> bool:
    return path.name.endswith((".json.gz", ".jsonl.gz", ".json", ".jsonl"))


def read_amazon_interactions(path: Path, quarantine: Quarantine) -> pa.Table:
    rows = {"user_id": [], "item_id": [], "timestamp": []}
    for where, record in _records(path, quarantine):
        values = {ours: _first(record, theirs) for ours, theirs in REVIEW_FIELDS.items()}
        missing = [name for name, value in values.items() if value in (None, "")]
        stamp = _seconds(values["timestamp"])
        if missing or stamp is None:
            field = missing[0] if missing else "timestamp"
            quarantine.add(source=str(path), where=where, field=field, reason=f"missing or invalid {field}")
            continue
        rows["user_id"].append(str(values["user_id"]))
        rows["item_id"].append(str(values["item_id"]))
        rows["timestamp"].append(stamp)
    return pa.table(rows, schema=INTERACTIONS_SCHEMA)


def read_amazon_catalog(path: Path, text_fields: list[str], quarantine: Quarantine) -> pa.Table:
    """Catalog rows; `text` joins the named fields (title, description, features, categories, brand)."""
    rows, seen = [], set()
    for where, record in _records(path, quarantine):
        item = {ours: _first(record, theirs) for ours, theirs in META_FIELDS.items()}
        item_id = item["item_id"]
        if not item_id:
            quarantine.add(source=str(path), where=where, field="item_id", reason="missing item id")
            continue
        if item_id in seen:
            quarantine.add(source=str(path), where=where, field="item_id", reason="duplicate item id")
            continue
        seen.add(item_id)
        flat = {name: _flatten(value) for name, value in item.items() if name != "images"}
        rows.append({
            "item_id": str(item_id),
            "text": ". ".join(flat[f] for f in text_fields if flat.get(f)),
            "category": _last_category(item["categories"]),
            "brand": flat["brand"] or None,
            "image_url": _image_url(item["images"]),
        })
    names = ("item_id", "text", "category", "brand", "image_url")
    return pa.table({n: pa.array([r[n] for r in rows], pa.string()) for n in names})


def _records(path: Path, quarantine: Quarantine) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    line_no = 0
    try:
        with opener(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                record = _parse(raw)
                if record is None:
                    quarantine.add(source=str(path), where=f"line {line_no}", field="*",
                                   reason="not a JSON object or Python dict literal")
                    continue
                yield f"line {line_no}", record
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        quarantine.add(source=str(path), where=f"after line {line_no}", field="*",
                       reason=f"truncated or corrupt gzip: {err}")


def _parse(raw: bytes) -> dict | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        return value if isinstance(value, dict) else None
    return None


def _first(record: dict, names: tuple[str, ...]):
    for name in names:
        if record.get(name) not in (None, "", []):
            return record[name]
    return None


def _seconds(value) -> float | None:
    try:
        stamp = float(value)
    except (TypeError, ValueError):
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
    """First image URL: a string, a list of strings (2014/2018) or of dicts with sizes (2023)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        if isinstance(first, dict):
            return first.get("hi_res") or first.get("large") or first.get("thumb")
        return str(first)
    return None
