"""Dirty data (Reliability, item 4): random corruption fed to the catalog and interaction readers
and to the shard salvage.

Every input ends in a one-line DataError naming the file and a field, or in counts that reconcile
exactly: rows read (`Quarantine.read`) = rows accepted + rows quarantined, where a truncated gzip
or tar counts the records decoded before the break as read and the break as one quarantine entry.
Most inputs are built from records that are good or bad by construction, so the accepted rows
themselves are known: every good row is kept, in order, and a duplicate item id keeps the first.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from qbr_dist.artifacts import Fingerprints
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.readers import DataError, read_catalog, read_interactions
from qbr_dist.data.shards import ShardSet, make_sample, salvage_shard
from qbr_dist.data.split import build_sequences
from qbr_dist.encode.job import _intact_or_salvaged

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INTER_FIELDS = ("user_id", "item_id", "timestamp")
INTER_HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = b"item_id:token\ttitle:token_seq\tyear:token"
BREAK = "truncated or corrupt gzip"
BLANK = "blank"  # label of a line that is not a row

users = st.sampled_from(["u1", "u2", "ü3", "4"])
items = st.sampled_from(["i1", "i2", "i.3", "17"])
seconds = st.integers(0, 2 * 10**9)
titles = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
junk_bytes = st.binary(max_size=6).map(  # never UTF-8, never a line break
    lambda b: b"\xff" + b.replace(b"\n", b"").replace(b"\r", b""))
splice_bytes = st.one_of(st.sampled_from([b"\n", b"\t", b"\r", b"\xff", b"\x00", b"\xc3"]),
                         st.binary(min_size=1, max_size=4))


def in_tmp(name: str, data: bytes, fn):
    """fn(path) on a fresh file `name` holding `data`, in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return fn(path)


def outcome(path: Path, read, fields) -> tuple[pa.Table, Quarantine] | None:
    """(table, quarantine) of a finished read whose counts reconcile; None after a proper DataError."""
    quarantine = Quarantine()
    try:
        table = read(path, quarantine)
    except DataError as err:
        message = str(err)
        assert len(message.splitlines()) == 1, message
        assert str(path) in message, message
        assert any(field in message for field in fields), message
        return None
    assert quarantine.read == table.num_rows + quarantine.total, (quarantine.read, table.num_rows, quarantine.counts)
    return table, quarantine


def read_titles(path: Path, quarantine: Quarantine) -> pa.Table:
    """A catalog whose text is its title."""
    return read_catalog(path, ["title"], quarantine)


def rows_of(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(n).to_pylist() for n in INTER_FIELDS)))


def catalog_rows(table: pa.Table) -> list[tuple]:
    return list(zip(table.column("item_id").to_pylist(), table.column("text").to_pylist()))


def first_per_id(labelled: list) -> list[tuple]:
    """The good (item_id, text) rows a catalog keeps: the first good row of each id."""
    kept, seen = [], set()
    for row in labelled:
        if row not in (None, BLANK) and row[0] not in seen:
            seen.add(row[0])
            kept.append(row)
    return kept


def atomic_lines(data: bytes) -> list[bytes]:
    """The lines of a RecBole atomic file, each ended by LF, CRLF or a lone CR."""
    return re.split(rb"\r\n|\r|\n", data)


def atomic_rows(data: bytes) -> int:
    """Rows of a RecBole atomic file: lines after the header that are more than a line ending."""
    return sum(bool(line) for line in atomic_lines(data)[1:])


def splice(data: bytes, cuts: list[tuple[int, bytes]]) -> bytes:
    for position, junk in cuts:
        position %= len(data) + 1
        data = data[:position] + junk + data[position:]
    return data


# ---------------------------------------------------------------- RecBole .inter

def encoded_line(draw, record: dict, kind: str, expected):
    """The record as a JSON or a Python-literal line; kind "bytes" splices junk bytes into it."""
    line = (json.dumps(record) if draw(st.booleans()) else repr(record)).encode()
    if kind == "bytes":
        at = draw(st.integers(0, len(line)))
        return line[:at] + draw(junk_bytes) + line[at:], None
    return line, expected


@st.composite
def inter_line(draw) -> tuple[bytes, object]:
    """(line, expected row | None for a bad line | BLANK)."""
    user, item = draw(users), draw(items)
    stamp = draw(st.one_of(seconds, st.floats(0, 1e12, allow_nan=False)))
    good = f"{user}\t{item}\t5\t{stamp!r}".encode()
    kind = draw(st.sampled_from(["good", "good", "good", "blank", "fields", "user", "item", "stamp", "bytes"]))
    if kind == "good":
        return good, (user, item, float(stamp))
    if kind == "blank":
        return draw(st.sampled_from([b"", b"\r"])), BLANK
    if kind == "fields":
        return draw(st.sampled_from([f"{user}\t{item}\t5", f"{user}\t{item}\t5\t1\tx", user])).encode(), None
    if kind == "user":
        return f"\t{item}\t5\t{stamp!r}".encode(), None
    if kind == "item":
        return f"{user}\t\t5\t{stamp!r}".encode(), None
    if kind == "stamp":
        bad = draw(st.sampled_from(["abc", "", "nan", "inf", "-inf", "1e999", "None", "0x10", "1,5", "-5", "1e30"]))
        return f"{user}\t{item}\t5\t{bad}".encode(), None
    at = draw(st.integers(0, len(good)))
    line = good[:at] + draw(junk_bytes) + good[at:]
    fields, read = line.split(b"\t"), good.split(b"\t")
    untouched = len(fields) == 4 and [fields[i] for i in (0, 1, 3)] == [read[i] for i in (0, 1, 3)]
    return line, (user, item, float(stamp)) if untouched else None  # bad bytes in the rating, never read, keep a row


@FAST
@given(lines=st.lists(inter_line(), max_size=16), eol=st.sampled_from([b"\n", b"\r\n"]))
def test_inter_file_keeps_every_good_row_and_quarantines_the_rest(lines, eol):
    data = INTER_HEADER + eol + b"".join(line + eol for line, _ in lines)

    def check(path):
        with Quarantine(path.parent / "q.jsonl") as quarantine:
            table = read_interactions(path, quarantine)
        entries = (path.parent / "q.jsonl").read_text().splitlines() if quarantine.total else []
        return table, quarantine, entries

    table, quarantine, entries = in_tmp("x.inter", data, check)
    assert rows_of(table) == [row for _, row in lines if row not in (None, BLANK)]
    assert quarantine.read == sum(row is not BLANK for _, row in lines)
    assert quarantine.read == table.num_rows + quarantine.total
    assert len(entries) == quarantine.total


def header_finds(data: bytes, required) -> bool:
    try:
        names = [c.split(":", 1)[0] for c in atomic_lines(data)[0].decode("utf-8").split("\t")]
    except UnicodeDecodeError:
        return False
    return all(field in names for field in required)


@FAST
@given(lines=st.lists(inter_line(), max_size=12), cuts=st.lists(st.tuples(st.integers(0, 10**4), splice_bytes),
                                                               min_size=1, max_size=4))
def test_inter_file_with_bad_bytes_anywhere(lines, cuts):
    data = splice(INTER_HEADER + b"\n" + b"".join(line + b"\n" for line, _ in lines), cuts)
    result = in_tmp("x.inter", data, lambda path: outcome(path, read_interactions, INTER_FIELDS))
    assert (result is None) == (not header_finds(data, INTER_FIELDS))
    if result is not None:
        assert result[1].read == atomic_rows(data)


# ---------------------------------------------------------------- Amazon reviews (JSON lines / literals, gzip)

@st.composite
def review_line(draw) -> tuple[bytes, object]:
    """(line, expected row | None | BLANK) in the 2014 (seconds) or 2023 (milliseconds) layout."""
    user, item = draw(st.one_of(users, st.integers(0, 99))), draw(st.one_of(items, st.integers(0, 99)))
    stamp = draw(seconds)
    if draw(st.booleans()):
        keys = ("reviewerID", "asin", "unixReviewTime")
        record = {"reviewerID": user, "asin": item, "unixReviewTime": draw(st.sampled_from([stamp, str(stamp)]))}
        expected = (str(user), str(item), float(stamp))
    else:
        keys = ("user_id", "parent_asin", "timestamp")
        record = {"user_id": user, "parent_asin": item, "timestamp": stamp * 1000 + 10**12, "rating": 4}
        expected = (str(user), str(item), (stamp * 1000 + 10**12) / 1000)
    kind = draw(st.sampled_from(["good", "good", "good", "blank", "missing", "wrong", "wrong", "bytes", "junk"]))
    if kind == "blank":
        return draw(st.sampled_from([b"", b"  ", b"\r"])), BLANK
    if kind == "junk":
        return draw(st.sampled_from([b"{[1]: 2}", b"{1, [2]}", b"{'a': 1} + 1", b"[1, 2]", b"null", b"{",
                                     b"__import__('os').system('true')", b"\x00"])), None
    if kind == "missing":
        del record[draw(st.sampled_from(keys))]
        expected = None
    if kind == "wrong":
        field = draw(st.sampled_from(keys))
        ids = [None, "", [], ["x"], {"a": 1}, True, 1.5, "\ud800"]
        stamps = [None, "", "yesterday", float("nan"), float("inf"), -float("inf"), True, [1], 10**400]
        record[field] = draw(st.sampled_from(stamps if field == keys[2] else ids))
        if field == keys[2]:  # a JSON NaN or Infinity parses; a Python literal `nan` does not
            return json.dumps(record).encode(), None
        expected = None
    return encoded_line(draw, record, kind, expected)


modes = st.sampled_from(["plain", "gzip", "cut", "cut", "flip"])
where = st.floats(0, 1, exclude_max=True)


def amazon_file(lines: list[bytes], mode: str, where: float, xor: int) -> tuple[str, bytes, bool | None]:
    """(suffix, bytes, cut short?): plain, gzip, gzip cut at a byte (`where`, as a share of its length),
    or gzip with the byte there changed (None: anything may decode)."""
    text = b"".join(line + b"\n" for line in lines)
    if mode == "plain":
        return ".json", text, False
    data = gzip.compress(text, mtime=0)
    at = int(where * len(data))
    if mode == "gzip":
        return ".json.gz", data, False
    if mode == "cut":
        return ".json.gz", data[:max(at, 1)], True  # cut at 0: an empty file, no break
    return ".json.gz", data[:at] + bytes([data[at] ^ xor]) + data[at + 1:], None


def gzip_breaks(quarantine: Quarantine) -> int:
    return sum(n for reason, n in quarantine.counts.items() if reason.startswith(BREAK))


def decoded(labelled: list, quarantine: Quarantine) -> list:
    """The labels of the lines decoded before a break: the rows read, less the break."""
    rows = [label for label in labelled if label is not BLANK]
    read = quarantine.read - gzip_breaks(quarantine)
    assert 0 <= read <= len(rows)
    return rows[:read]


REVIEWS_THAT_BROKE = [  # each once crashed the reader or was accepted
    (b'{"reviewerID": "u1", "asin": "i1", "unixReviewTime": 5}', ("u1", "i1", 5.0)),
    (b'{"reviewerID": "u1", "asin": "i1", "unixReviewTime": NaN}', None),
    (b'{"reviewerID": "u1", "asin": "i1", "unixReviewTime": -Infinity}', None),
    (b'{"reviewerID": "u1", "asin": "i1", "unixReviewTime": 1' + b"0" * 400 + b"}", None),
    (b'{"reviewerID": "u1", "asin": "i1", "unixReviewTime": true}', None),
    (b'{"reviewerID": ["u1"], "asin": "i1", "unixReviewTime": 5}', None),
    (b'{"reviewerID": "\\ud800", "asin": "i1", "unixReviewTime": 5}', None),
    (b"{[1]: 2}", None),
    (b"{'reviewerID': 'u2', 'asin': 17, 'unixReviewTime': '6'}", ("u2", "17", 6.0)),
]


@FAST
@given(lines=st.lists(review_line(), max_size=14), mode=modes, where=where, xor=st.integers(1, 255))
@example(lines=REVIEWS_THAT_BROKE, mode="plain", where=0.0, xor=1)
@example(lines=REVIEWS_THAT_BROKE, mode="cut", where=0.6, xor=1)
def test_amazon_reviews_truncated_or_corrupt(lines, mode, where, xor):
    suffix, raw, cut_short = amazon_file([line for line, _ in lines], mode, where, xor)
    table, quarantine = in_tmp("reviews_x" + suffix, raw, lambda path: outcome(path, read_interactions, INTER_FIELDS))
    assert gzip_breaks(quarantine) <= 1
    if cut_short is None:  # a changed byte: anything may decode, but the counts still reconcile
        return
    assert gzip_breaks(quarantine) == cut_short
    labels = decoded([label for _, label in lines], quarantine)
    if not gzip_breaks(quarantine):
        assert len(labels) == sum(label is not BLANK for _, label in lines)
    assert rows_of(table) == [label for label in labels if label is not None]


# ---------------------------------------------------------------- parquet interactions

@st.composite
def parquet_interactions(draw) -> tuple[pa.Table, list, str | None]:
    """(table, expected rows, field a DataError must name or None)."""
    n = draw(st.integers(0, 12))
    user = draw(st.lists(st.one_of(users, st.sampled_from([None, ""])), min_size=n, max_size=n))
    int_items = draw(st.booleans())
    item_values = st.one_of(st.integers(-5, 99), st.none()) if int_items else st.one_of(items, st.just(""), st.none())
    item = draw(st.lists(item_values, min_size=n, max_size=n))
    stamp_type = draw(st.sampled_from(["float", "int", "string"]))
    odd_floats = st.sampled_from([float("nan"), float("inf"), -float("inf"), None])
    stamp_values = {"float": st.one_of(st.floats(-1e12, 1e14), odd_floats), "int": st.one_of(seconds, st.none()),
                    "string": st.one_of(seconds.map(str), st.none())}[stamp_type]
    stamp = draw(st.lists(stamp_values, min_size=n, max_size=n))
    stamp_arrow = {"float": pa.float64(), "int": pa.int64(), "string": pa.string()}[stamp_type]
    columns = {"user_id": pa.array(user, pa.string()),
               "item_id": pa.array(item, pa.int64() if int_items else pa.string()),
               "timestamp": pa.array(stamp, stamp_arrow)}
    expected = [
        (u, str(i), float(t)) for u, i, t in zip(user, item, stamp)
        if u and i is not None and i != "" and t is not None and 0 <= float(t) < 1e13  # a number of no stated unit
    ]
    fault = draw(st.sampled_from([None, None, "drop", "list", "text"]))
    field = draw(st.sampled_from(INTER_FIELDS))
    if fault == "drop":
        del columns[field]
    elif fault == "list":
        columns[field] = pa.array([[1]] * n, pa.list_(pa.int64()))
    elif fault == "text" and n:
        field = "timestamp"
        columns[field] = pa.array([draw(st.sampled_from(["yesterday", "1\n2"]))] + [None] * (n - 1), pa.string())
    else:
        fault = None
    return pa.table(columns), expected, field if fault else None


def parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


@FAST
@given(case=parquet_interactions(), cut=st.one_of(st.none(), where))
@example(case=(pa.table({"user_id": [[1]], "item_id": ["i1"], "timestamp": [1.0]}), [], "user_id"), cut=None)
@example(case=(pa.table({"user_id": ["u1"], "item_id": ["i1"], "timestamp": ["1\n2"]}), [], "timestamp"), cut=None)
@example(case=(pa.table({"user_id": ["u1"], "item_id": [1], "timestamp": [1]}), [("u1", "1", 1.0)], None), cut=0.5)
def test_parquet_interactions(case, cut):
    table, expected, field = case
    raw = parquet_bytes(table)
    if cut is not None:
        raw = raw[:int(cut * len(raw))]
    names = (f"'{field}'",) if field and cut is None else ("expected fields user_id, item_id, timestamp",)
    result = in_tmp("x.parquet", raw, lambda path: outcome(path, read_interactions, names))
    assert (result is None) == (field is not None or cut is not None)
    if result is not None:
        read, quarantine = result
        assert rows_of(read) == expected
        assert quarantine.read == table.num_rows


# ---------------------------------------------------------------- header without a required field

@FAST
@given(fmt=st.sampled_from(["inter", "item", "parquet-inter", "parquet-item"]), which=st.integers(0, 2))
def test_a_missing_required_field_is_a_one_line_error_naming_file_and_field(fmt, which):
    fields = INTER_FIELDS if fmt.endswith("inter") else ("item_id", "title")
    dropped = fields[which % len(fields)]
    header = INTER_HEADER if fmt.endswith("inter") else ITEM_HEADER
    names = [c.split(b":")[0].decode() for c in header.split(b"\t")]
    keep = [i for i, name in enumerate(names) if name != dropped]
    if fmt.startswith("parquet"):
        raw = parquet_bytes(pa.table({names[i]: pa.array(["1", "2"]) for i in keep}))
        name = "x.parquet"
    else:
        rows = [b"1\t2\t3\t4"[:len(names) * 2 - 1], b"5\t6\t7\t8"[:len(names) * 2 - 1]]
        raw = b"\n".join(b"\t".join(line.split(b"\t")[i] for i in keep) for line in [header, *rows]) + b"\n"
        name = "x." + fmt
    read = read_interactions if fmt.endswith("inter") else read_titles

    def check(path):
        with pytest.raises(DataError) as err:
            read(path, Quarantine())
        return str(err.value), str(path)

    message, path = in_tmp(name, raw, check)
    assert len(message.splitlines()) == 1 and path in message and f"'{dropped}'" in message


# ---------------------------------------------------------------- catalogs

@st.composite
def item_line(draw) -> tuple[bytes, object]:
    """(line, expected (item_id, text) | None | BLANK) of a RecBole `.item` file."""
    item_id, title, year = draw(items), draw(titles), draw(st.sampled_from(["1995", "", "x"]))
    good = f"{item_id}\t{title}\t{year}".encode()
    kind = draw(st.sampled_from(["good", "good", "good", "blank", "empty", "fields", "bytes"]))
    if kind == "good":
        return good, (item_id, title)
    if kind == "blank":
        return b"", BLANK
    if kind == "empty":
        return f"\t{title}\t{year}".encode(), None
    if kind == "fields":
        return f"{item_id}\t{title}".encode(), None
    at = draw(st.integers(0, len(good)))
    return good[:at] + draw(junk_bytes) + good[at:], None


@FAST
@given(lines=st.lists(item_line(), max_size=16))
def test_item_file_keeps_the_first_row_of_each_id(lines):
    data = ITEM_HEADER + b"\n" + b"".join(line + b"\n" for line, _ in lines)
    table, quarantine = in_tmp("x.item", data, lambda path: outcome(path, read_titles, ()))
    assert catalog_rows(table) == first_per_id([label for _, label in lines])
    assert quarantine.read == sum(label is not BLANK for _, label in lines)
    good = [label for _, label in lines if label not in (None, BLANK)]
    assert quarantine.counts["duplicate item id"] == len(good) - table.num_rows


@st.composite
def meta_line(draw) -> tuple[bytes, object]:
    """(line, expected (item_id, text) | None | BLANK) of an Amazon metadata file, as JSON or a Python literal."""
    item_id = draw(st.one_of(items, st.integers(0, 20)))
    title = draw(titles)
    record = {"asin": item_id, "title": title, "categories": [["A", "B"]], "imUrl": draw(st.sampled_from(
        ["http://127.0.0.1/x.jpg", None, 5, [{"large": 5}], [{"large": "l.jpg"}], {}]))}
    expected = (str(item_id), title.strip())
    kind = draw(st.sampled_from(["good", "good", "good", "blank", "missing", "wrong", "surrogate", "bytes", "junk"]))
    if kind == "blank":
        return b"", BLANK
    if kind == "junk":
        return draw(st.sampled_from([b"{[1]: 2}", b"{'asin': 'i1'", b"['i1']", b"__import__('os')", b"\x00"])), None
    if kind == "missing":
        del record["asin"]
        expected = None
    if kind == "wrong":
        record["asin"] = draw(st.sampled_from([None, "", ["i1"], {"a": 1}, True, 1.5, "\udc80"]))
        expected = None
    if kind == "surrogate":
        record["title"] = title + "\ud800"
        expected = None
    return encoded_line(draw, record, kind, expected)


META_THAT_BROKE = [  # each once crashed the reader or kept a duplicate
    (b'{"asin": ["i1"], "title": "a list id"}', None),
    (b'{"asin": 17, "title": "first"}', ("17", "first")),
    (b'{"asin": "17", "title": "same id as text"}', ("17", "same id as text")),
    (b"{'asin': 'i2', 'title': 'lone \\ud800'}", None),
    (b"{'asin': 'i2', 'title': 'kept', 'imUrl': [{'large': 5}]}", ("i2", "kept")),
    (b"{1, [2]}", None),
    # an odd escape: a warning from the compiler, an error where warnings are errors
    (b"{'asin': 'i3', 'title': 'ratio 16\\:9'}", ("i3", "ratio 16\\:9")),
]


@pytest.mark.filterwarnings("error")
@FAST
@given(lines=st.lists(meta_line(), max_size=14), mode=modes, where=where, xor=st.integers(1, 255))
@example(lines=META_THAT_BROKE, mode="gzip", where=0.0, xor=1)
def test_amazon_metadata_keeps_the_first_row_of_each_id(lines, mode, where, xor):
    suffix, raw, cut_short = amazon_file([line for line, _ in lines], mode, where, xor)
    table, quarantine = in_tmp("meta_x" + suffix, raw, lambda path: outcome(path, read_titles, ()))
    assert gzip_breaks(quarantine) <= 1
    ids = table.column("item_id").to_pylist()
    assert len(ids) == len(set(ids))
    if cut_short is None:
        return
    assert gzip_breaks(quarantine) == cut_short
    labels = decoded([label for _, label in lines], quarantine)
    assert catalog_rows(table) == first_per_id(labels)


@st.composite
def parquet_catalog(draw) -> tuple[pa.Table, list, str | None]:
    n = draw(st.integers(0, 12))
    int_ids = draw(st.booleans())
    ids = draw(st.lists(st.one_of(st.integers(0, 5), st.none()) if int_ids else st.one_of(items, st.sampled_from(
        [None, ""])), min_size=n, max_size=n))
    title = draw(st.lists(st.one_of(titles, st.none()), min_size=n, max_size=n))
    columns = {"item_id": pa.array(ids, pa.int64() if int_ids else pa.string()), "title": pa.array(title, pa.string()),
               "year": pa.array(draw(st.lists(st.one_of(st.integers(1900, 2030), st.none()), min_size=n, max_size=n)),
                                pa.int64())}
    labelled = [(str(i), t or "") if i is not None and i != "" else None for i, t in zip(ids, title)]
    field = draw(st.sampled_from([None, None, "item_id", "title", "year"]))
    if field:
        columns[field] = pa.array([[1.5]] * n, pa.list_(pa.float64()))
    return pa.table(columns), first_per_id(labelled), field


@FAST
@given(case=parquet_catalog())
@example(case=(pa.table({"item_id": ["a"], "title": ["t"], "year": [["1"]]}), [("a", "t")], "year"))
@example(case=(pa.table({"item_id": [1, None, 1], "title": ["a", "b", "c"], "year": [1, 2, 3]}), [("1", "a")], None))
def test_parquet_catalog_keeps_the_first_row_of_each_id(case):
    table, expected, field = case
    result = in_tmp("x.parquet", parquet_bytes(table), lambda path: outcome(path, read_titles, (f"'{field}'",)))
    # the id and the text fields must read as text; an extra field of lists is kept, as JSON text
    assert (result is None) == (field in ("item_id", "title"))
    if result is not None:
        catalog, quarantine = result
        assert catalog_rows(catalog) == expected
        assert quarantine.read == table.num_rows


# ---------------------------------------------------------------- shards

def tiny_jpeg(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """(shard path, its index entry, the original samples as [(key, [(name, bytes)])], where each starts, end,
    and the offsets worth cutting near: every header, the end-of-archive block, the end of the file)."""
    folder = tmp_path_factory.mktemp("shards")
    shard_set = ShardSet(folder, max_bytes=1 << 30)
    for i, item_id in enumerate(["a", "b/1", "c.2", "d", "e"]):
        jpg = tiny_jpeg((40 * i, 0, 0)) if i in (1, 3) else None
        shard_set.write(make_sample(item_id, f"item {item_id} " * (i * 40), {"n": i}, jpg))
    entry = shard_set.close()["shards"][0]
    path = folder / entry["file"]
    samples, starts, headers = [], [], []
    with tarfile.open(path) as tar:
        for member in tar:
            key = member.name.split(".", 1)[0]
            if not samples or samples[-1][0] != key:
                samples.append((key, []))
                starts.append(member.offset)
            samples[-1][1].append((member.name, tar.extractfile(member).read()))
            headers.append(member.offset)
        end = -(-(member.offset_data + member.size) // 512) * 512
    return path, entry, samples, starts, end, [*headers, end, end + 512, path.stat().st_size]


def samples_in(path: Path) -> list:
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    out = []
    for name, data in members:
        key = name.split(".", 1)[0]
        if not out or out[-1][0] != key:
            out.append((key, []))
        out[-1][1].append((name, data))
    return out


def complete_before(offset: int, starts: list[int], end: int) -> int:
    """Samples whose completeness is known from bytes before `offset`: the next header (or the end block) is there."""
    return sum(offset >= boundary + 512 for boundary in [*starts[1:], end])


def near(marks: list[int], mark: int, delta: int, size: int) -> int:
    """A byte offset `delta` from one of the marks, inside the file."""
    return min(max(marks[mark % len(marks)] + delta, 0), size)


marks, deltas = st.integers(0, 40), st.one_of(st.sampled_from([0, 1, -1, 511, 512, 513]), st.integers(-2048, 2048))


@settings(FAST, max_examples=30)
@given(mark=marks, delta=deltas)
@example(mark=-4, delta=0)  # on the last file's header: the tar "ends" quietly with the last sample short of a file
def test_truncated_shard_keeps_exactly_the_complete_samples_before_the_cut(shard, mark, delta):
    path, entry, samples, starts, end, offsets = shard
    whole = path.read_bytes()
    cut = near(offsets, mark, delta, len(whole))
    with tempfile.TemporaryDirectory() as tmp:
        damaged = Path(tmp) / entry["file"]
        damaged.write_bytes(whole[:cut])
        copied, problem = salvage_shard(damaged, Path(tmp) / "out.tar", expected_items=len(samples))
        assert samples_in(Path(tmp) / "out.tar") == samples[:copied]
        quarantine = Quarantine()
        salvaged, _ = _intact_or_salvaged(damaged, entry, Path(tmp) / "encoded", quarantine, Fingerprints())
    assert copied == complete_before(cut, starts, end)
    assert (problem is None) == (copied == len(samples))
    # as the encode job counts: the samples before the break are read and kept, the break is one entry
    assert quarantine.total == (cut < len(whole))
    assert (salvaged is None) == (copied == 0 and cut < len(whole))


@settings(FAST, max_examples=30)
@given(mark=marks, delta=deltas, xor=st.integers(1, 255))
def test_shard_with_a_changed_byte_keeps_a_prefix_of_complete_samples(shard, mark, delta, xor):
    path, _, samples, starts, end, offsets = shard
    whole = bytearray(path.read_bytes())
    at = near(offsets, mark, delta, len(whole) - 1)
    whole[at] ^= xor
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "s.tar").write_bytes(bytes(whole))
        copied, problem = salvage_shard(Path(tmp) / "s.tar", Path(tmp) / "out.tar", expected_items=len(samples))
        kept = samples_in(Path(tmp) / "out.tar")
    assert len(kept) == copied >= complete_before(at, starts, end)
    assert (problem is None) == (copied == len(samples))
    for index, ((key, files), (original_key, original_files)) in enumerate(zip(kept, samples)):
        assert key == original_key and [n for n, _ in files] == [n for n, _ in original_files]  # complete
        if [*starts, end][index + 1] <= at:  # wholly before the changed byte: unchanged
            assert files == original_files


# ---------------------------------------------------------------- timestamps out of order

@FAST
@given(rows=st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.integers(1, 5), st.integers(0, 4)),
                     max_size=20))
def test_out_of_order_timestamps_are_accepted_and_sorted_per_user(rows):
    data = INTER_HEADER + b"\n" + b"".join(f"{u}\ti{i}\t1\t{t}\n".encode() for u, i, t in rows)
    quarantine = Quarantine()
    table = in_tmp("x.inter", data, lambda path: read_interactions(path, quarantine))
    assert table.num_rows == len(rows) and quarantine.total == 0
    sequences, _ = build_sequences(table, pa.array([f"i{i}" for i in range(1, 6)]), k_core=1, quarantine=quarantine,
                                   source="x.inter")
    got = dict(zip(sequences.column("user_id").to_pylist(), sequences.column("items").to_pylist()))
    expected = {}
    for user in {u for u, _, _ in rows}:
        mine = sorted((t, n, i) for n, (u, i, t) in enumerate(rows) if u == user)  # ties keep row order
        if len(mine) >= 3:
            expected[user] = [i for _, _, i in mine]
    assert got == expected
