"""Readers into the catalog and interaction tables of the design (pyarrow).

Interactions: user_id (string), item_id (string), timestamp (float64).
Catalog: item_id (string), text (string), plus the source's other fields as strings.
A missing or unreadable file, a header without a required field or a parquet column of the wrong
type stops at once with a one-line error naming the file and the field; a malformed row is skipped
and recorded in the quarantine.

Counts reconcile: each reader adds the rows it read to `quarantine.read`, and every row read is
either returned or quarantined. A row is a non-blank line after the header of a text file (a
line of bad bytes included; a CSV row quoted over several lines is one; a line ends at a line feed,
a carriage return and line feed, or a carriage return alone) or a row of a parquet file (numbered
from 1). A value the reader keeps whose bytes are not UTF-8 quarantines its row, naming its field
(a CSV catalog row with such bytes anywhere: its line); interactions keep only their three fields, so bad
bytes elsewhere (a rating) do not count. A RecBole `.inter` file's columns are read by Arrow (`data.atomic`),
and so are a CSV file of interactions' where Arrow splits its lines as Python's csv module does (no quote but
around a whole field with no delimiter, line break or quote in it, no space starting a field, no line past
csv's field limit); any other CSV file is read a row at a time by the csv module. A truncated
or corrupt gzip counts the lines decoded before the break, and the break itself as one row read and
one quarantine entry. Interactions are checked column by column once a file is read, so a text file's
quarantine lists the lines that could not be split into fields first, then those whose fields fail.
"""
from __future__ import annotations

import csv
import datetime
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qbr_dist.data import amazon
from qbr_dist.data.atomic import AtomicColumns, read_atomic_columns, scan_lines, splits_as_written
from qbr_dist.data.quarantine import DataError, Quarantine
from qbr_dist.data.tables import (INTERACTION_FIELDS, INTERACTIONS_SCHEMA, LATEST_TIME, MILLISECONDS_AFTER, is_utf8,
                                  item_text, utf8_values)

log = logging.getLogger("qbr.data")

# The config key that gives a file's own name for each field the readers need (RecBole and parquet files).
FIELD_SETTINGS = {field: f"data.{field}_field" for field in INTERACTION_FIELDS}


def read_interactions(path: str | Path, quarantine: Quarantine, renames: dict[str, str] | None = None) -> pa.Table:
    """Interactions from a RecBole `.inter`, CSV, parquet or Amazon reviews file, by extension. `renames`: the file's
    own name for those of user_id, item_id and timestamp it calls otherwise (`DataConfig.field_names`)."""
    path, renames = existing_file(path), renames or {}
    if amazon.is_amazon_file(path):
        _no_renames(path, renames)
        return amazon.read_amazon_interactions(path, quarantine)
    if path.suffix == ".parquet":
        table = _read_parquet(path, INTERACTION_FIELDS, renames)
        quarantine.read += table.num_rows
        return _checked_interactions(path, table, quarantine, renames)
    if path.suffix == ".inter":
        names = _atomic_names(path, INTERACTION_FIELDS, renames)
        return _checked_atomic(path, read_atomic_columns(path, names, list(INTERACTION_FIELDS)), quarantine, renames,
                               lambda got: f"expected {len(names)} tab-separated fields, got {got}")
    if path.suffix == ".csv":
        return _csv_interactions(path, quarantine, renames)
    raise _unsupported(path, ".inter", "data.interactions")


def _checked_atomic(path: Path, columns: AtomicColumns, quarantine: Quarantine, renames: dict[str, str],
                    miscount: Callable[[int], str]) -> pa.Table:
    """The interactions of a file read by Arrow, its rows that did not split quarantined first (`miscount` of the
    number of fields found says why)."""
    quarantine.read += columns.table.num_rows + len(columns.unsplit)
    for line, found in columns.unsplit:
        quarantine.add(source=str(path), where=f"line {line}", field="*", reason=miscount(found))
    return _checked_interactions(path, columns.table, quarantine, renames, lambda row: f"line {columns.lines_of(row)}")


def _text_records(path: Path, atomic_suffix: str, setting: str, required: tuple[str, ...], quarantine: Quarantine,
                  renames: dict[str, str], text_fields: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV or RecBole atomic file, by extension: any other name is refused, since a file read with the
    wrong delimiter gives a misleading error."""
    if path.suffix == ".csv":
        return _csv_records(path, required, quarantine, renames, text_fields)
    if path.suffix != atomic_suffix:
        raise _unsupported(path, atomic_suffix, setting)
    return _atomic_records(path, required, quarantine, renames, text_fields)


def _unsupported(path: Path, atomic_suffix: str, setting: str) -> DataError:
    return DataError(f"{path}: {setting} of an unsupported type '{path.suffix or path.name}' (expected a RecBole "
                     f"atomic {atomic_suffix} file, .csv, .parquet, or Amazon .json/.jsonl, those two optionally .gz)")


def read_catalog(path: str | Path, text_fields: list[str], quarantine: Quarantine,
                 renames: dict[str, str] | None = None) -> pa.Table:
    """Catalog from a RecBole `.item`, CSV, parquet or Amazon metadata file; `text` joins the named fields. `renames`:
    as for `read_interactions` (the catalog's item id)."""
    path, renames = existing_file(path), {key: name for key, name in (renames or {}).items() if key == "item_id"}
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
                           reason=NOT_UTF8_TEXT)
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


def _checked_interactions(path: Path, table: pa.Table, quarantine: Quarantine, renames: dict[str, str],
                          where: Callable[[int], str] | None = None) -> pa.Table:
    """The interactions of `table` (a file's user_id, item_id and timestamp columns, of any type) whose ids are
    present and UTF-8 and whose time is a finite number or an ISO 8601 time, checked column by column; every other
    row quarantined with its first problem, placed by `where` (a text file's lines) or its row number (parquet)."""
    own = {field: renames.get(field, field) for field in INTERACTION_FIELDS}  # for messages
    users, users_utf8 = _text_array(path, table, "user_id", shown=own["user_id"])
    items, items_utf8 = _text_array(path, table, "item_id", shown=own["item_id"])
    stamps_utf8 = np.ones(table.num_rows, bool)
    if pa.types.is_binary(table.schema.field("timestamp").type):  # bytes that should be text, as Arrow reads text files
        texts, stamps_utf8 = _text_array(path, table, "timestamp", shown=own["timestamp"])
        table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", texts)
    stamps, numbers = _timestamps(path, table, shown=own["timestamp"], typed=where is None)
    problems = [  # in the order a row's first problem is named
        ("user_id", NOT_UTF8_TEXT, ~users_utf8), ("item_id", NOT_UTF8_TEXT, ~items_utf8),
        ("timestamp", NOT_UTF8_TEXT, ~stamps_utf8),
        ("user_id", "empty user id", _empty(users)), ("item_id", "empty item id", _empty(items)),
        ("timestamp", BAD_TIMESTAMP, ~np.isfinite(stamps)),
        ("timestamp", TIME_OUT_OF_RANGE, numbers & np.isfinite(stamps) & ((stamps < 0) | (stamps >= LATEST_TIME)))]
    first = np.full(table.num_rows, -1)  # per row, its first problem
    for number, (_, _, rows) in reversed(list(enumerate(problems))):
        first[rows] = number
    for row in np.flatnonzero(first >= 0):
        field, reason, _ = problems[first[row]]
        found = table.column("timestamp")[int(row)].as_py() if field == "timestamp" else None
        quarantine.add(source=str(path), where=where(int(row)) if where is not None else f"row {row + 1}",
                       field=own[field], reason=reason, value=None if found is None else str(found))
    keep = pa.array(first < 0)
    _warn_of_mixed_units(path, stamps[first < 0], own["timestamp"])
    return pa.table({"user_id": users.filter(keep), "item_id": items.filter(keep),
                     "timestamp": pa.array(stamps).filter(keep)}, schema=INTERACTIONS_SCHEMA)


def _warn_of_mixed_units(path: Path, stamps: np.ndarray, shown: str) -> None:
    """Times in seconds and in milliseconds in one file are ordered as numbers, so the events of a user who has
    both are out of order: said, with how many of each. Only a bare number reaches 1e11; a time type or ISO 8601
    text is read as seconds."""
    later = int((stamps >= MILLISECONDS_AFTER).sum())
    if 0 < later < len(stamps):
        log.warning("%s: field '%s': %d of %d times are past 1e11, which only milliseconds since 1970 reach, and the "
                    "others below (seconds?); times are ordered as numbers, so mixed units put events out of order",
                    path, shown, later, len(stamps))


def _empty(texts: pa.Array) -> np.ndarray:
    """Null or empty text (a value that was not UTF-8 is null here too, named by its own problem first)."""
    return pc.fill_null(pc.equal(pc.binary_length(texts), 0), True).to_numpy(zero_copy_only=False)


def _timestamps(path: Path, table: pa.Table, shown: str, typed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The `timestamp` column as seconds (NaN where a row has none), and which rows gave a bare number (of no
    stated unit, unlike a time type or ISO 8601 text): a timestamp or date type in its own unit, numbers as they
    are, text as numbers, or else a row at a time as a number or an ISO 8601 date and time (UTC unless it says
    otherwise). In a `typed` file (parquet), a column that cannot be read as numbers, or text with no time at all,
    is the wrong field: a DataError (a text file's rows are quarantined, and ingest then refuses a file none of
    whose rows could be read, with an example)."""
    column = table.column("timestamp")
    numbers = np.ones(len(column), bool)
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("ms"))
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}[column.type.unit]
        ticks = column.cast(pa.int64())
        whole = pc.fill_null(ticks, 0).to_numpy()
        seconds = whole / per_second  # exact where the ticks fit a float's 53 bits; beyond, whole seconds first
        beyond = np.abs(whole) > 2**53
        seconds[beyond] = (whole[beyond] // per_second).astype(np.float64) + (whole[beyond] % per_second) / per_second
        seconds[ticks.is_null().to_numpy()] = np.nan
        return seconds, ~numbers
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return _floats(_cast(path, column, pa.float64(), shown=shown)), numbers
    try:
        return _floats(column.cast(pa.float64())), numbers
    except pa.ArrowInvalid:  # not all numbers: ISO 8601 times, or text that is no time, a row at a time
        values = column.to_pylist()
    stamps = [None if value is None else _as_seconds(value) for value in values]
    if typed and any(value is not None for value in values) and all(stamp is None for stamp in stamps):
        raise DataError(f"{path}: field '{shown}' holds no time (expected seconds since 1970 as numbers or text, "
                        "ISO 8601 text such as 2024-01-31T12:00:00Z, or a timestamp or date type)")
    numbers = np.array([value is not None and _as_float(value) is not None for value in values], dtype=bool)
    return np.array([np.nan if stamp is None else stamp for stamp in stamps], dtype=np.float64), numbers


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.float64()).to_numpy().astype(np.float64, copy=True) if len(column) else np.zeros(0)


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


BAD_TIMESTAMP = "timestamp is neither a finite number nor an ISO 8601 time"
TIME_OUT_OF_RANGE = "timestamp is a number before 1970 or past 1e13 (the year 2286 in milliseconds since 1970)"


def _atomic_records(path: Path, required: tuple[str, ...], quarantine: Quarantine, renames: dict[str, str],
                    text_fields: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """Rows of a RecBole atomic file (tab-separated, header `name:type`), as string dicts by field name (the
    `renames`d fields under their own names; `NOT_UTF8` for a value that is not UTF-8); lines end as
    `data.atomic` reads them."""
    names = _atomic_names(path, required, renames, text_fields)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        handle.readline()
        for line_no, line in enumerate(handle, start=2):
            values = line.rstrip("\r\n").split("\t")
            if values == [""]:
                continue  # a blank line is not a row
            quarantine.read += 1
            if len(values) != len(names):
                quarantine.add(
                    source=str(path), where=f"line {line_no}", field="*",
                    reason=f"expected {len(names)} tab-separated fields, got {len(values)}",
                )
                continue
            yield f"line {line_no}", {name: value if is_utf8(value) else NOT_UTF8 for name, value in zip(names, values)}


def _atomic_names(path: Path, required: tuple[str, ...], renames: dict[str, str],
                  text_fields: tuple[str, ...] = ()) -> list[str]:
    """The field names of a RecBole atomic file's header line (`name:type`), as `_own_names` gives them."""
    with open(path, "rb") as handle:
        first = handle.readline(HEADER_BYTES).split(b"\r")[0].rstrip(b"\n")
    try:
        header = first.decode("utf-8").split("\t")
    except UnicodeDecodeError:
        raise DataError(f"{path}: header is not UTF-8 text (expected fields {_own(required, renames)})") from None
    return _own_names(path, [column.split(":", 1)[0] for column in header], required, renames, text_fields)


CSV_DELIMITERS = ",;\t|"
HEADER_BYTES = 1 << 20  # read for an atomic file's header line: a file of lone-CR line ends has no line feed


def _csv_records(path: Path, required: tuple[str, ...], quarantine: Quarantine, renames: dict[str, str],
                 text_fields: tuple[str, ...] = (), all_utf8: bool = True) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV file with a header line, quoted as spreadsheets and pandas write them (a quoted field may hold
    the delimiter, doubled quotes or line breaks), as string dicts by field name. The delimiter is the one of
    `CSV_DELIMITERS` the header holds most (`;` in many European exports; a comma on a tie); a byte-order mark and
    spaces after a delimiter are ignored. A row with bad bytes (unless not `all_utf8`: the reader then checks the
    values it keeps, undecodable bytes coming as surrogate escapes), the wrong number of fields, quotes out of place
    (`"Weird" Al`) or a field past csv's limit (131,072 characters) is quarantined. A row that fails over several
    lines (a quote never closed, which would make the rest of the file one field; csv's limit bounds it) quarantines
    its first line only, and the lines after it are read again; so does a row whose quote, closed lines later, put
    a line break into an id or a time (only text fields hold one)."""
    with _csv_file(path) as handle:
        delimiter, found, names = _csv_header(handle, path, required, renames, text_fields)
        single_line = [at for at, name in enumerate(names) if name in required and name not in text_fields]
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
                counted = len(values) == len(names)
                problem = (None if not all_utf8 or is_utf8(delimiter.join(values)) else NOT_UTF8_TEXT) or (
                    None if counted else _csv_field_count(len(names), delimiter, len(values))) or next(
                    (f"a line break inside field '{found[at]}', which holds an id or a time" for at in single_line
                     if "\n" in values[at] or "\r" in values[at]), None)
            if problem and lines.number > first:
                lines.read_again_after_first()
                problem += " (the lines after it are read again)"
            where = f"line {first}" if lines.number == first else f"lines {first}-{lines.number}"
            if problem:
                quarantine.add(source=str(path), where=where, field="*", reason=problem)
                continue
            yield where, dict(zip(names, values))


def _csv_file(path: Path):
    return open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")


def _csv_header(handle, path: Path, required: tuple[str, ...], renames: dict[str, str],
                text_fields: tuple[str, ...] = ()) -> tuple[str, list[str], list[str]]:
    """The delimiter, the field names as the header line gives them and as `_own_names` does."""
    header = handle.readline()
    if not header.strip():
        raise DataError(f"{path}: no header line (expected fields {_own(required, renames)})")
    if not is_utf8(header):
        raise DataError(f"{path}: header is not UTF-8 text (expected fields {_own(required, renames)})")
    delimiter = max(CSV_DELIMITERS, key=header.count)
    found = [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]
    return delimiter, found, _own_names(path, found, required, renames, text_fields)


def _csv_field_count(fields: int, delimiter: str, got: int) -> str:
    return f"expected {fields} {delimiter!r}-separated fields, got {got}"


def _csv_interactions(path: Path, quarantine: Quarantine, renames: dict[str, str]) -> pa.Table:
    """Interactions of a CSV file: read by Arrow (`data.atomic`) where its rules and csv's give the same rows
    (`splits_as_written`, and no line past csv's field limit), else a row at a time by `_csv_records`."""
    with _csv_file(path) as handle:
        delimiter, _, names = _csv_header(handle, path, INTERACTION_FIELDS, renames)
    scan = scan_lines(path, len(names), delimiter)  # the faster pass first: it finds the longest line
    if scan.longest > csv.field_size_limit() or not splits_as_written(path, delimiter):
        return _csv_interactions_by_row(path, quarantine, renames)
    columns = read_atomic_columns(path, names, list(INTERACTION_FIELDS), delimiter, scan, quoted=True)
    return _checked_atomic(path, columns, quarantine, renames, lambda got: _csv_field_count(len(names), delimiter, got))


def _csv_interactions_by_row(path: Path, quarantine: Quarantine, renames: dict[str, str]) -> pa.Table:
    rows, lines = {name: [] for name in INTERACTION_FIELDS}, []
    for where, record in _csv_records(path, INTERACTION_FIELDS, quarantine, renames, all_utf8=False):
        lines.append(where)
        for name, values in rows.items():
            values.append(record[name])
    table = pa.table({name: _as_bytes(values) for name, values in rows.items()})
    return _checked_interactions(path, table, quarantine, renames, lines.__getitem__)


def _as_bytes(values: list[str]) -> pa.Array:
    """Text read with `errors="surrogateescape"` as the file's bytes, which `_checked_interactions` checks."""
    return pa.array([value.encode("utf-8", "surrogateescape") for value in values], pa.binary())


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
        raise DataError(f"{path}: not a readable parquet file (expected fields {_own(required, renames)}; "
                        f"{err})") from None
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


def _own(required: tuple[str, ...], renames: dict[str, str]) -> str:
    """The required fields as the file calls them, for messages."""
    return ", ".join(renames.get(field, field) for field in required)


def _no_renames(path: Path, renames: dict[str, str]) -> None:
    if renames:
        raise DataError(f"{path}: {FIELD_SETTINGS[next(iter(renames))]} renames a field, but Amazon files have "
                        "fixed fields; leave it empty")


def _cast(path: Path, column: pa.ChunkedArray, type_: pa.DataType, shown: str) -> pa.ChunkedArray:
    """The column cast to `type_` (nulls stay null); a column that cannot be cast is a DataError."""
    try:
        return column.cast(type_)
    except pa.ArrowException as err:
        raise DataError(f"{path}: field '{shown}' cannot be read as {type_} ({err})") from None


NOT_UTF8 = object()  # a text value whose bytes are not UTF-8: its row is quarantined
NOT_UTF8_TEXT = "not UTF-8 text"  # the quarantine reason for one


def _text_array(path: Path, table: pa.Table, name: str,
                shown: str | None = None) -> tuple[pa.ChunkedArray, np.ndarray]:
    """The column as text (nulls stay null) and which values are UTF-8 (parquet writers need not check their
    strings; a value that is not is null in the text); a column of another type that cannot be cast is a
    DataError. The chunks stay apart: a column of more than 2 GiB of text fits no single one."""
    column = table.column(name)
    if pa.types.is_dictionary(column.type):  # decoded first, so its text is checked as any other's
        column = column.cast(column.type.value_type)
    if not any(check(column.type) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                                 pa.types.is_large_binary)):
        return _cast(path, column, pa.string(), shown or name), np.ones(len(column), bool)
    try:
        texts = column.cast(pa.string())
        texts.validate(full=True)  # a string column is not checked by the cast, only by this
        return texts, np.ones(len(column), bool)
    except (pa.ArrowInvalid, UnicodeDecodeError):  # the values at fault are null in the text
        binary = column.cast(pa.binary())
        utf8 = utf8_values(binary)
        # Arrow cuts the one-array mask where the column's chunks are, so no chunk is joined to another
        return pc.if_else(pa.array(utf8), binary, pa.scalar(None, pa.binary())).cast(pa.string()), utf8


def _text_column(path: Path, table: pa.Table, name: str) -> list:
    """The column as Python text (nulls stay None), with `NOT_UTF8` for a value that is not UTF-8."""
    texts, utf8 = _text_array(path, table, name)
    return [value if ok else NOT_UTF8 for value, ok in zip(texts.to_pylist(), utf8)]


def _require(path: Path, names, required, named_by: dict[str, str] | None = None) -> None:
    """`named_by`: {required field: the config key that named it}, which the message then points to."""
    missing = [field for field in required if field not in names]
    if missing:
        setting = f"; {named_by[missing[0]]} names it" if missing[0] in (named_by or {}) else ""
        raise DataError(
            f"{path}: missing field '{missing[0]}' (expected fields {', '.join(required)}; "
            f"found {', '.join(map(repr, names))}{setting})"
        )


def existing_file(path: str | Path) -> Path:
    """`path`, or a DataError saying it is missing or a folder."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder; expected a file (.inter, .item, .csv, .parquet or Amazon .json(l))")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path
