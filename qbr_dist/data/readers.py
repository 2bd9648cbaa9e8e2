"""Readers into the catalog and interaction tables of the design (pyarrow).

Interactions: user_id (string), item_id (string), timestamp (float64).
Catalog: item_id (string), text (string), plus the source's other fields as strings.
A missing or unreadable file, a header without a required field or a parquet column of the wrong
type stops at once with a one-line error naming the file and the field; a malformed row is skipped
and recorded in the quarantine.

Counts reconcile: each reader adds the rows it read to `quarantine.read`, and every row read is
either returned or quarantined. A row is a non-blank line after the header of a text file (a
line of bad bytes included; a CSV row quoted over several lines is one) or a row of a parquet file
(numbered from 1; a text value in it whose bytes are not UTF-8 quarantines the row). A truncated
or corrupt gzip counts the lines decoded before the break, and the break itself as one row read and
one quarantine entry.
"""
from __future__ import annotations

import csv
import datetime
import json
import logging
import math
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from qbr_dist.data import amazon
from qbr_dist.data.quarantine import DataError, Quarantine
from qbr_dist.data.tables import INTERACTION_FIELDS, INTERACTIONS_SCHEMA, is_utf8, item_text

log = logging.getLogger("qbr.data")

# The config key that gives a file's own name for each field the readers need (RecBole and parquet files).
FIELD_SETTINGS = {field: f"data.{field}_field" for field in INTERACTION_FIELDS}


def read_interactions(path: str | Path, quarantine: Quarantine, renames: dict[str, str] | None = None) -> pa.Table:
    """Interactions from a RecBole `.inter`, CSV, parquet or Amazon reviews file, by extension. `renames`: the file's
    own name for those of user_id, item_id and timestamp it calls otherwise (`DataConfig.field_names`)."""
    path, renames = _existing(path), renames or {}
    if amazon.is_amazon_file(path):
        _no_renames(path, renames)
        return amazon.read_amazon_interactions(path, quarantine)
    if path.suffix == ".parquet":
        return _interactions_from_parquet(path, quarantine, renames)
    rows = {name: [] for name in INTERACTION_FIELDS}
    for where, record in _text_records(path, ".inter", "data.interactions", INTERACTION_FIELDS, quarantine, renames):
        timestamp = _as_seconds(record["timestamp"])
        problem = _interaction_problem(record["user_id"], record["item_id"], timestamp)
        if problem:
            field, reason = problem
            quarantine.add(source=str(path), where=where, field=renames.get(field, field), reason=reason,
                           value=record[field] if field == "timestamp" else None)
            continue
        rows["user_id"].append(record["user_id"])
        rows["item_id"].append(record["item_id"])
        rows["timestamp"].append(timestamp)
    return pa.table(rows, schema=INTERACTIONS_SCHEMA)


def _text_records(path: Path, atomic_suffix: str, setting: str, required: tuple[str, ...], quarantine: Quarantine,
                  renames: dict[str, str], text_fields: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV or RecBole atomic file, by extension: any other name is refused, since a file read with the
    wrong delimiter gives a misleading error."""
    if path.suffix == ".csv":
        return _csv_records(path, required, quarantine, renames, text_fields)
    if path.suffix != atomic_suffix:
        raise DataError(f"{path}: {setting} of an unsupported type '{path.suffix or path.name}' (expected a RecBole "
                        f"atomic {atomic_suffix} file, .csv, .parquet, or Amazon .json/.jsonl, those two optionally "
                        ".gz)")
    return _atomic_records(path, required, quarantine, renames, text_fields)


def read_catalog(path: str | Path, text_fields: list[str], quarantine: Quarantine,
                 renames: dict[str, str] | None = None) -> pa.Table:
    """Catalog from a RecBole `.item`, CSV, parquet or Amazon metadata file; `text` joins the named fields. `renames`:
    as for `read_interactions` (the catalog's item id)."""
    path, renames = _existing(path), {key: name for key, name in (renames or {}).items() if key == "item_id"}
    if amazon.is_amazon_file(path):
        _no_renames(path, renames)
        unknown = [name for name in text_fields if name not in amazon.TEXT_FIELDS]
        if unknown:
            raise DataError(f"{path}: data.text_fields names {unknown[0]!r}, not a field of Amazon metadata "
                            f"(expected some of {', '.join(amazon.TEXT_FIELDS)})")
        return amazon.read_amazon_catalog(path, text_fields, quarantine)
    if path.suffix == ".parquet":
        used = ("item_id", *text_fields)
        table = _read_parquet(path, used, renames, tuple(text_fields))
        columns = {name: _catalog_column(path, table, name, extra=name not in used) for name in table.schema.names}
        columns = {name: values for name, values in columns.items() if name in used or _all_text(path, name, values)}
        quarantine.read += table.num_rows
        records = ((f"row {i + 1}", {k: v[i] for k, v in columns.items()}) for i in range(table.num_rows))
    else:
        records = _text_records(path, ".item", "data.catalog", ("item_id", *text_fields), quarantine, renames,
                                tuple(text_fields))
    seen: set[str] = set()
    rows: list[dict] = []
    id_field = renames.get("item_id", "item_id")
    for where, record in records:
        item_id, bad_text = record["item_id"], next((name for name, value in record.items() if value is NOT_UTF8), None)
        if bad_text:
            quarantine.add(source=str(path), where=where, field=id_field if bad_text == "item_id" else bad_text,
                           reason="not UTF-8 text")
            continue
        if not item_id:
            quarantine.add(source=str(path), where=where, field=id_field, reason="empty item id")
            continue
        if item_id in seen:
            quarantine.add(source=str(path), where=where, field=id_field, reason="duplicate item id",
                           value=item_id)
            continue
        seen.add(item_id)
        record["text"] = item_text(record, text_fields)
        rows.append(record)
    names = ["item_id", "text"] + [n for n in (rows[0] if rows else {}) if n not in ("item_id", "text")]
    return pa.table({n: pa.array([r.get(n) for r in rows], _binary_image(n, rows) or pa.string()) for n in names})


def _catalog_column(path: Path, table: pa.Table, name: str, *, extra: bool) -> list:
    """A catalog parquet column as Python values: image bytes as bytes, an `extra` column (not the id or a text
    field) of lists or structs (tags, attributes) as JSON text, everything else as text."""
    type_ = table.schema.field(name).type
    if name == "image" and (pa.types.is_binary(type_) or pa.types.is_large_binary(type_)):
        return table.column(name).to_pylist()
    if extra and pa.types.is_nested(type_):
        return [None if value is None else json.dumps(value, default=str) for value in table.column(name).to_pylist()]
    return _text_column(path, table, name)


def _all_text(path: Path, name: str, values: list) -> bool:
    """False, with a warning, for a catalog column that is not all UTF-8 text (thumbnails or embeddings as bytes):
    one that is neither the item id nor a text field is then left out of the catalog, not the items with it."""
    if not any(value is NOT_UTF8 for value in values):
        return True
    log.warning("%s: field %r is not UTF-8 text in %d rows; left out of the catalog (bytes are kept only in an "
                "'image' column)", path, name, sum(value is NOT_UTF8 for value in values))
    return False


def _binary_image(name: str, rows: list[dict]) -> pa.DataType | None:
    """Binary for an `image` column of bytes (the catalog's own images), else None (text: a path per item)."""
    return pa.binary() if name == "image" and any(isinstance(r.get(name), bytes) for r in rows) else None


def _interactions_from_parquet(path: Path, quarantine: Quarantine, renames: dict[str, str]) -> pa.Table:
    table = _read_parquet(path, INTERACTION_FIELDS, renames)
    own = {field: renames.get(field, field) for field in INTERACTION_FIELDS}  # for messages
    users = _text_column(path, table, "user_id", shown=own["user_id"])
    items = _text_column(path, table, "item_id", shown=own["item_id"])
    stamps = _timestamps(path, table, shown=own["timestamp"])
    quarantine.read += table.num_rows
    keep = []
    for row, (user, item, stamp) in enumerate(zip(users, items, stamps)):
        problem = _interaction_problem(user, item, stamp)
        if problem:
            found = table.column("timestamp")[row].as_py() if problem[0] == "timestamp" else None
            quarantine.add(source=str(path), where=f"row {row + 1}", field=own[problem[0]],
                           reason=problem[1], value=None if found is None else str(found))
        else:
            keep.append(row)
    return pa.table(
        {
            "user_id": pa.array([users[i] for i in keep], pa.string()),
            "item_id": pa.array([items[i] for i in keep], pa.string()),
            "timestamp": pa.array([stamps[i] for i in keep], pa.float64()),
        }
    )


def _timestamps(path: Path, table: pa.Table, shown: str) -> list:
    """The `timestamp` column as seconds: a timestamp or date type in its own unit, numbers as they are, text
    parsed a row at a time as a number or an ISO 8601 date and time (UTC unless it says otherwise; None, so
    quarantined, where a row holds neither). A text column with no time at all is the wrong field: a DataError."""
    column = table.column("timestamp")
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("ms"))
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[column.type.unit]
        return [None if value is None else value / per_second for value in column.cast(pa.int64()).to_pylist()]
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return _column(path, table, "timestamp", pa.float64(), shown=shown)
    values = column.to_pylist()
    stamps = [None if value is None else _as_seconds(value) for value in values]
    if any(value is not None for value in values) and all(stamp is None for stamp in stamps):
        raise DataError(f"{path}: field '{shown}' holds no time (expected seconds since 1970 as numbers or text, "
                        "ISO 8601 text such as 2024-01-31T12:00:00Z, or a timestamp or date type)")
    return stamps


def _as_seconds(value: str) -> float | None:
    """Seconds since 1970 from a number or an ISO 8601 date and time in text (UTC unless it names a zone)."""
    number = _as_float(value)
    if number is not None:
        return number
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)).timestamp()


def _interaction_problem(user, item, timestamp) -> tuple[str, str] | None:
    for field, value in (("user_id", user), ("item_id", item)):
        if value is NOT_UTF8:
            return field, "not UTF-8 text"
    if not user:
        return "user_id", "empty user id"
    if not item:
        return "item_id", "empty item id"
    if timestamp is None or not math.isfinite(timestamp):
        return "timestamp", "timestamp is neither a finite number nor an ISO 8601 time"
    return None


def _atomic_records(path: Path, required: tuple[str, ...], quarantine: Quarantine, renames: dict[str, str],
                    text_fields: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """Rows of a RecBole atomic file (tab-separated, header `name:type`), as string dicts by field name (the
    `renames`d fields under their own names)."""
    with open(path, "rb") as handle:
        try:
            header = handle.readline().decode("utf-8").rstrip("\r\n").split("\t")
        except UnicodeDecodeError:
            raise DataError(f"{path}: header is not UTF-8 text (expected fields {', '.join(required)})") from None
        names = _own_names(path, [column.split(":", 1)[0] for column in header], required, renames, text_fields)
        for line_no, raw in enumerate(handle, start=2):
            if not raw.rstrip(b"\r\n"):
                continue  # a blank line is not a row
            quarantine.read += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                quarantine.add(source=str(path), where=f"line {line_no}", field="*", reason="not UTF-8 text")
                continue
            values = line.rstrip("\r\n").split("\t")
            if len(values) != len(names):
                quarantine.add(
                    source=str(path), where=f"line {line_no}", field="*",
                    reason=f"expected {len(names)} tab-separated fields, got {len(values)}",
                )
                continue
            yield f"line {line_no}", dict(zip(names, values))


CSV_DELIMITERS = ",;\t|"


def _csv_records(path: Path, required: tuple[str, ...], quarantine: Quarantine, renames: dict[str, str],
                 text_fields: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV file with a header line, quoted as spreadsheets and pandas write them (a quoted field may hold
    the delimiter, doubled quotes or line breaks), as string dicts by field name. The delimiter is the one of
    `CSV_DELIMITERS` the header holds most (`;` in many European exports; a comma on a tie); a byte-order mark and
    spaces after a delimiter are ignored. A row with bad bytes, the wrong number of fields, quotes out of place
    (`"Weird" Al`) or a field past csv's limit (131,072 characters) is quarantined. A row that fails over several
    lines (a quote never closed, which would make the rest of the file one field; csv's limit bounds it) quarantines
    its first line only, and the lines after it are read again."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        header = handle.readline()
        if not header.strip():
            raise DataError(f"{path}: no header line (expected fields {', '.join(required)})")
        if not is_utf8(header):
            raise DataError(f"{path}: header is not UTF-8 text (expected fields {', '.join(required)})")
        delimiter = max(CSV_DELIMITERS, key=header.count)
        found = [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]
        names = _own_names(path, found, required, renames, text_fields)
        lines = _CsvLines(handle)
        reader = csv.reader(lines, delimiter=delimiter, skipinitialspace=True, strict=True)
        while True:
            first = lines.next_row()
            try:
                values, problem = next(reader), None
            except StopIteration:
                return
            except csv.Error as err:
                values, problem = None, ("a quote opened here is never closed" if "end of data" in str(err)
                                         else f"not a CSV row ({err})")
            if values == []:
                continue  # a blank line is not a row
            quarantine.read += 1
            if values is not None:
                problem = (None if is_utf8(delimiter.join(values)) else "not UTF-8 text") or (
                    None if len(values) == len(names) else
                    f"expected {len(names)} {delimiter!r}-separated fields, got {len(values)}")
            if problem and lines.number > first:
                lines.read_again_after_first()
                problem += " (the lines after it are read again)"
            where = f"line {first}" if lines.number == first else f"lines {first}-{lines.number}"
            if problem:
                quarantine.add(source=str(path), where=where, field="*", reason=problem)
                continue
            yield where, dict(zip(names, values))


class _CsvLines:
    """The lines of a CSV file for `csv.reader`, numbered, keeping those of the row being read so that the lines
    after its first can be read again."""

    def __init__(self, handle):
        self.handle, self.again, self.row, self.number = handle, [], [], 1  # line 1: the header

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.again.pop() if self.again else next(self.handle)
        self.row.append(line)
        self.number += 1
        return line

    def next_row(self) -> int:
        """Starts a row; returns the number of its first line."""
        self.row = []
        return self.number + 1

    def read_again_after_first(self) -> None:
        self.again.extend(reversed(self.row[1:]))
        self.number -= len(self.row) - 1


def _as_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _read_parquet(path: Path, required: tuple[str, ...], renames: dict[str, str],
                  text_fields: tuple[str, ...] = ()) -> pa.Table:
    """The whole table, with the required fields present (the `renames`d ones under their own names); a damaged
    file is a DataError."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file (expected fields {', '.join(required)}; {err})") from None
    return table.rename_columns(_own_names(path, table.schema.names, required, renames, text_fields))


def _own_names(path: Path, names: list[str], required: tuple[str, ...], renames: dict[str, str],
               text_fields: tuple[str, ...]) -> list[str]:
    """The file's field names, checked to hold the required fields as the file calls them, with the renamed ones
    under their own names (user_id, ...). A file with a field of that own name besides the renamed one is
    ambiguous: a DataError."""
    named_by = {name: "data.text_fields" for name in text_fields} | {
        name: FIELD_SETTINGS[field] for field, name in renames.items()}
    _require(path, names, tuple(renames.get(field, field) for field in required), named_by)
    clash = [field for field, name in renames.items() if field in names and name != field]
    if clash:
        raise DataError(f"{path}: field '{clash[0]}' besides '{renames[clash[0]]}', which {FIELD_SETTINGS[clash[0]]} "
                        f"names as the {clash[0]}: drop or rename one of them")
    own = {name: field for field, name in renames.items()}
    return [own.get(name, name) for name in names]


def _no_renames(path: Path, renames: dict[str, str]) -> None:
    if renames:
        raise DataError(f"{path}: {FIELD_SETTINGS[next(iter(renames))]} renames a field, but Amazon files have "
                        "fixed fields; leave it empty")


def _column(path: Path, table: pa.Table, name: str, type_: pa.DataType, shown: str | None = None) -> list:
    """The column as Python values of `type_` (nulls stay None); a column that cannot be cast is a DataError."""
    try:
        return table.column(name).cast(type_).to_pylist()
    except (pa.ArrowException, KeyError) as err:
        raise DataError(f"{path}: field '{shown or name}' cannot be read as {type_} ({err})") from None


NOT_UTF8 = object()  # a text value whose bytes are not UTF-8: its row is quarantined


def _text_column(path: Path, table: pa.Table, name: str, shown: str | None = None) -> list:
    """The column as text (nulls stay None), with `NOT_UTF8` for a string or binary value that is not UTF-8 (parquet
    writers need not check their strings); a column of another type that cannot be cast is a DataError."""
    column = table.column(name)
    if not any(check(column.type) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                                 pa.types.is_large_binary)):
        return _column(path, table, name, pa.string(), shown=shown)
    try:
        return column.cast(pa.string()).to_pylist()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return [None if value is None else _decoded(value) for value in column.cast(pa.binary()).to_pylist()]


def _decoded(value: bytes):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8


def _require(path: Path, names, required, named_by: dict[str, str] | None = None) -> None:
    """`named_by`: {required field: the config key that named it}, which the message then points to."""
    missing = [field for field in required if field not in names]
    if missing:
        setting = f"; {named_by[missing[0]]} names it" if missing[0] in (named_by or {}) else ""
        raise DataError(
            f"{path}: missing field '{missing[0]}' (expected fields {', '.join(required)}; "
            f"found {', '.join(map(repr, names))}{setting})"
        )


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path
