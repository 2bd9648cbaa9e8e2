import json

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.readers import INTERACTIONS_SCHEMA, DataError, read_catalog, read_interactions

INTER_HEADER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_lines(path, header: bytes, lines: list[bytes]):
    path.write_bytes(header + b"".join(line + b"\n" for line in lines))
    return path


def quarantined(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_inter_file_reads_into_interactions_table(tmp_path):
    inter = write_lines(tmp_path / "x.inter", INTER_HEADER, [b"u1\ti1\t5\t100", b"u2\ti2\t3\t101.5"])
    table = read_interactions(inter, Quarantine())
    assert table.schema == INTERACTIONS_SCHEMA
    assert table.to_pydict() == {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [100.0, 101.5]}


def test_bad_inter_rows_are_quarantined_and_reading_continues(tmp_path):
    lines = [
        b"u1\ti1\t5\t100",          # line 2: good
        b"u1\ti2\t3",               # line 3: wrong field count
        b"u2\ti1\t4\tabc",          # line 4: non-numeric timestamp
        b"\ti3\t4\t101",            # line 5: empty user id
        b"u3\t\xff\xfe\t1\t102",    # line 6: not UTF-8
        b"u2\ti3\t2\t103",          # line 7: good, after the bad ones
        b"u3\ti1\t1\t104.5",        # line 8: good
    ]
    inter = write_lines(tmp_path / "x.inter", INTER_HEADER, lines)
    qpath = tmp_path / "q" / "quarantine.jsonl"
    with Quarantine(qpath) as quarantine:
        table = read_interactions(inter, quarantine)
    assert table.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    assert table.column("timestamp").to_pylist() == [100.0, 103.0, 104.5]
    assert len(lines) == table.num_rows + quarantine.total
    records = quarantined(qpath)
    assert {r["source"] for r in records} == {str(inter)}
    assert [(r["where"], r["field"]) for r in records] == [  # lines that split badly, then fields that fail
        ("line 3", "*"), ("line 4", "timestamp"), ("line 5", "user_id"), ("line 6", "item_id"),
    ]
    assert [r["reason"] for r in records] == ["expected 4 tab-separated fields, got 3",
                                              "timestamp is neither a finite number nor an ISO 8601 time",
                                              "empty user id", "not UTF-8 text"]
    assert len(records) == quarantine.total


# Line kinds of an .inter file and what reading one gives: a kept row, nothing, or a quarantine entry's field.
INTER_KINDS = [
    (b"u%d\ti%d\t5\t%d", "kept"), (b"", None), (b" ", "*"), (b"u%d\ti%d\t%d", "*"), (b"u%d\ti%d\t5\t%d\t9", "*"),
    (b"\ti%d\t5\t%d%d", "user_id"), (b"u%d\t\xff%d\t5\t%d", "item_id"), (b"u%d\ti%d\t5\tsoon%d", "timestamp"),
    (b"u%d\ti%d\t\xff\t%d", "kept"),  # bad bytes in a field the interactions do not read
    (b"\xffu%d\ti%d", "*"),  # bad bytes and too few fields: Arrow is never shown it
]


@pytest.mark.parametrize("seed, scan_block", [(0, 1 << 26), (1, 1 << 26), (2, 7)])
def test_every_line_of_an_inter_file_is_kept_skipped_or_quarantined_on_its_line(tmp_path, monkeypatch, seed,
                                                                                 scan_block):
    """Random lines ended by LF, CRLF or a lone CR (each one line, as universal newlines read them): the kept rows,
    in order, and the quarantine's (line, field), as the lines were built; also when the file is scanned a few
    bytes at a time, so lines cross the blocks."""
    from qbr_dist.data import atomic

    monkeypatch.setattr(atomic, "SCAN_BLOCK", scan_block)
    rng = np.random.default_rng(seed)
    kinds = [INTER_KINDS[kind] for kind in rng.integers(0, len(INTER_KINDS), 500)]
    body, kept, expected = [INTER_HEADER], [], []
    for line_no, ((pattern, outcome), after) in enumerate(zip(kinds, kinds[1:] + [(b"end", None)]), start=2):
        line = pattern % tuple(int(n) for n in rng.integers(0, 50, pattern.count(b"%d")))
        ends = [b"\n", b"\r\n", b"\r"] if after[0] else [b"\n", b"\r\n"]  # a lone CR, then an empty line: a CRLF
        body.append(line + ends[rng.integers(0, len(ends))])
        if outcome == "kept":
            kept.append(line.split(b"\t")[0].decode())
        elif outcome:
            expected.append((f"line {line_no}", outcome))
    if scan_block == 7:  # and the last line has no ending
        body[-1] = body[-1].rstrip(b"\r\n")
    path = tmp_path / "x.inter"
    path.write_bytes(b"".join(body))
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        table = read_interactions(path, quarantine)
    assert table.column("user_id").to_pylist() == kept
    assert sorted((r["where"], r["field"]) for r in quarantined(tmp_path / "q.jsonl")) == sorted(expected)
    assert quarantine.read == len(kept) + len(expected)


CSV_KINDS = [  # each line as it may come in a CSV file that quotes only whole fields free of delimiters
    b"u%d,i%d,5,%d", b"", b"u%d,i%d,%d", b"u%d,i%d,5,%d,9", b"u%d,i%d,5,%d,", b",i%d,5,%d%d", b"u%d,\xff%d,5,%d",
    b"u%d,i%d,5,soon%d", b"u%d,i%d,\xff,%d", b"\xffu%d,i%d", b"u%d,i%d,5,%d.5 ", b"u%d\ti%d,5,%d", b"u%d,i%d,5,1e%d3",
    b"u%d,i%d,5,2020-01-0%dT10:00:00%d", b'"u%d","i%d",5,%d', b'"u%d",i%d,"",%d', b'u%d,"i%d",5,"%d"',
    b'"u%d","\xff%d",5,%d', b'"",i%d,5,%d',
]


@pytest.mark.parametrize("seed, scan_block", [(0, 1 << 26), (1, 1 << 26), (2, 7)])
def test_a_csv_file_that_quotes_whole_fields_only_reads_by_arrow_as_row_by_row(tmp_path, monkeypatch, seed,
                                                                               scan_block):
    """Random lines of every kind, ended by LF, CRLF or a lone CR: Arrow's read gives the same table, the same
    quarantine records in the same order and the same count of rows read as csv's row at a time."""
    from qbr_dist.data import atomic, readers

    monkeypatch.setattr(atomic, "SCAN_BLOCK", scan_block)
    rng = np.random.default_rng(seed)
    kinds = [CSV_KINDS[kind] for kind in rng.integers(0, len(CSV_KINDS), 800)]
    body = [{0: b"\xef\xbb\xbfuser_id,item_id,rating,timestamp\n", 1: b"user_id,item_id,rating,timestamp,user_id\n",
             2: b'\xef\xbb\xbf"user_id","item_id","rating","timestamp"\n'}[seed]]
    # a byte-order mark, a repeated field (csv keeps its last value), a byte-order mark before a quote
    for pattern, after in zip(kinds, kinds[1:] + [b"end"]):
        line = pattern % tuple(int(n) for n in rng.integers(0, 9, pattern.count(b"%d")))
        ends = [b"\n", b"\r\n", b"\r"] if after else [b"\n", b"\r\n"]  # a lone CR, then an empty line: a CRLF
        body.append(line + ends[rng.integers(0, len(ends))])
    path = tmp_path / "events.csv"
    path.write_bytes(b"".join(body).rstrip(b"\r\n") if scan_block == 7 else b"".join(body))

    def read(name: str):
        with Quarantine(tmp_path / name) as quarantine:
            table = read_interactions(path, quarantine)
        return table, quarantined(tmp_path / name), quarantine.read

    monkeypatch.setattr(readers, "_csv_records", lambda *args, **kwargs: pytest.fail("read a row at a time"))
    by_arrow = read("arrow.jsonl")
    monkeypatch.undo()
    monkeypatch.setattr(readers, "splits_as_written", lambda path, delimiter: False)
    by_row = read("rows.jsonl")
    assert by_arrow[0].equals(by_row[0]) and by_arrow[1:] == by_row[1:]
    assert by_arrow[0].num_rows > 20 and len(by_arrow[1]) > 100  # both kinds of line were there


@pytest.mark.parametrize("line", [b'"u1,x",i1,5', b'"u1""x",i1,5', b'u"1,i1,5', b'"u1"x,i1,5', b'"u1\n",i1,5',
                                  b'"u1,i1,5', b'u1,i1,5"', b"u1, i1,5", b" u1,i1,5", b"u1,i1,\x005",
                                  b"u1,i1,5" + b"9" * 131073])
def test_a_csv_file_arrow_would_split_otherwise_is_read_a_row_at_a_time(tmp_path, monkeypatch, line):
    """A quote that does not enclose a whole field free of delimiters, line breaks and quotes, a space starting a
    field, a NUL or a line past csv's field limit: csv's rules, not Arrow's."""
    from qbr_dist.data import readers

    path = tmp_path / "events.csv"
    path.write_bytes(b"user_id,item_id,timestamp\nu0,i0,7\n" + line + b"\n")
    records = []
    monkeypatch.setattr(readers, "_csv_records", lambda *args, **kwargs: records.append(args) or iter(()))
    read_interactions(path, Quarantine())
    assert records


def test_an_empty_file_names_the_fields_as_the_config_renames_them_and_a_folder_is_no_file(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("")
    renames = {"user_id": "customer_id", "item_id": "sku"}
    with pytest.raises(DataError, match=r"events.csv: no header line \(expected fields customer_id, sku, timestamp\)"):
        read_interactions(events, Quarantine(), renames)
    with pytest.raises(DataError, match=r": a folder; expected a file \(.inter, .item, .csv, .parquet"):
        read_catalog(tmp_path, [], Quarantine())


def test_an_inter_file_of_only_its_header_or_with_a_row_longer_than_arrows_block_is_read(tmp_path):
    header_only = tmp_path / "header.inter"
    header_only.write_bytes(INTER_HEADER.rstrip(b"\n"))  # and no line end
    assert read_interactions(header_only, Quarantine()).num_rows == 0
    long_row = write_lines(tmp_path / "long.inter", INTER_HEADER, [b"u1\ti1\t" + b"5" * 3_000_000 + b"\t100",
                                                                   b"u2\ti2\t4\t101"])
    assert read_interactions(long_row, Quarantine()).column("user_id").to_pylist() == ["u1", "u2"]


def test_header_without_timestamp_is_a_one_line_error(tmp_path):
    inter = write_lines(tmp_path / "x.inter", b"user_id:token\titem_id:token\trating:float\n", [b"u1\ti1\t5"])
    with pytest.raises(DataError) as err:
        read_interactions(inter, Quarantine())
    message = str(err.value)
    assert "\n" not in message
    assert str(inter) in message and "'timestamp'" in message


def test_missing_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "absent.inter"
    with pytest.raises(DataError, match="absent.inter"):
        read_interactions(missing, Quarantine())


def test_parquet_interactions(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"user_id": ["u1", None, "u2", "u3", ""], "item_id": [1, 2, 3, None, None],
                             "timestamp": [10, 11, 12, float("inf"), None]}), path)
    qpath = tmp_path / "q.jsonl"
    with Quarantine(qpath) as quarantine:
        table = read_interactions(path, quarantine)
    assert table.schema == INTERACTIONS_SCHEMA
    assert table.to_pydict() == {"user_id": ["u1", "u2"], "item_id": ["1", "3"], "timestamp": [10.0, 12.0]}
    assert [(r["where"], r["field"], r["reason"]) for r in quarantined(qpath)] == [  # each row's first problem, in order
        ("row 2", "user_id", "empty user id"), ("row 4", "item_id", "empty item id"),
        ("row 5", "user_id", "empty user id")]


def test_parquet_non_numeric_timestamp_is_an_error(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"], "timestamp": ["yesterday"]}), path)
    with pytest.raises(DataError, match="'timestamp'") as err:
        read_interactions(path, Quarantine())
    assert str(path) in str(err.value)


def test_parquet_timestamps_of_a_timestamp_type_or_text_with_a_bad_row(tmp_path):
    path = tmp_path / "x.parquet"
    stamps = pa.array([1_600_000_000_000, 1_600_000_001_500], pa.timestamp("ms"))
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "item_id": ["a", "b"], "timestamp": stamps}), path)
    assert read_interactions(path, Quarantine()).column("timestamp").to_pylist() == [1_600_000_000.0, 1_600_000_001.5]
    ticks = [1_700_000_000_123_456_789, None, 1_700_000_000_123_456_790, -1500]  # past a float's 53 bits, a null,
    # and a time before 1970
    pq.write_table(pa.table({"user_id": ["u1"] * 4, "item_id": list("abcd"),
                             "timestamp": pa.array(ticks, pa.timestamp("ns"))}), path)
    quarantine = Quarantine()
    assert read_interactions(path, quarantine).column("timestamp").to_pylist() == [
        tick / 10**9 for tick in ticks if tick is not None]  # as Python divides the integers
    assert quarantine.counts == {"timestamp is neither a finite number nor an ISO 8601 time": 1}
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "item_id": ["a", "b"], "timestamp": ["12", "oops"]}), path)
    quarantine = Quarantine()
    assert read_interactions(path, quarantine).column("timestamp").to_pylist() == [12.0]
    assert quarantine.counts == {"timestamp is neither a finite number nor an ISO 8601 time": 1}  # one bad row


def test_a_bare_number_before_1970_or_past_1e13_is_no_time_but_a_dated_one_is(tmp_path, caplog):
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp\nu1,a,1e30\nu1,b,-5\nu1,c,1965-01-01T00:00:00Z\nu1,d,1600000000\n"
                      "u2,a,1600000000000\n")
    qpath = tmp_path / "q.jsonl"
    with Quarantine(qpath) as quarantine, caplog.at_level("WARNING", logger="qbr.data"):
        table = read_interactions(events, quarantine)
    assert table.column("item_id").to_pylist() == ["c", "d", "a"]
    assert table.column("timestamp").to_pylist()[0] == -157766400.0  # an ISO 8601 time states its date
    assert [(r["where"], r["value"], r["reason"]) for r in quarantined(qpath)] == [
        ("line 2", "1e30", "timestamp is a number before 1970 or past 1e13 (the year 2286 in milliseconds since 1970)"),
        ("line 3", "-5", "timestamp is a number before 1970 or past 1e13 (the year 2286 in milliseconds since 1970)")]
    assert "field 'timestamp': 1 of 3 times are past 1e11, which only milliseconds since 1970 reach" in caplog.text


def test_parquet_timestamps_of_a_date_type_or_iso_8601_text_as_shop_exports_write_them(tmp_path):
    import datetime

    path = tmp_path / "x.parquet"
    days = pa.array([datetime.date(2024, 1, 2), datetime.date(2024, 1, 3)], pa.date32())
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "item_id": ["a", "b"], "timestamp": days}), path)
    assert read_interactions(path, Quarantine()).column("timestamp").to_pylist() == [1704153600.0, 1704240000.0]
    text = ["2024-01-02", "2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00", "1704153600", "soon"]
    pq.write_table(pa.table({"user_id": ["u1"] * 5, "item_id": list("abcde"), "timestamp": text}), path)
    quarantine = Quarantine()
    assert read_interactions(path, quarantine).column("timestamp").to_pylist() == [
        1704153600.0, 1704164645.0, 1704164645.0, 1704153600.0]  # no zone: UTC
    assert quarantine.total == 1


def test_catalog_joins_text_fields_and_keeps_the_first_duplicate(tmp_path):
    item = write_lines(
        tmp_path / "x.item",
        b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n",
        [b"1\tToy Story\t1995\tAnimation", b"2\tHeat\t1995\t", b"1\tToy Story 2\t1999\tAnimation"],
    )
    qpath = tmp_path / "quarantine.jsonl"
    with Quarantine(qpath) as quarantine:
        catalog = read_catalog(item, ["movie_title", "class"], quarantine)
    assert catalog.column_names[:2] == ["item_id", "text"]
    assert set(catalog.column_names) == {"item_id", "text", "movie_title", "release_year", "class"}
    assert catalog.column("item_id").to_pylist() == ["1", "2"]
    assert catalog.column("text").to_pylist() == ["Toy Story. Animation", "Heat"]
    assert catalog.column("release_year").to_pylist() == ["1995", "1995"]
    assert [(r["field"], r["reason"]) for r in quarantined(qpath)] == [("item_id", "duplicate item id")]


def test_an_item_file_names_the_field_that_is_not_utf8_and_ends_lines_as_an_inter_file_does(tmp_path):
    item = tmp_path / "x.item"
    item.write_bytes(b"item_id:token\ttitle:token_seq\r\n1\tMug\r2\tCa\xffp\r\n\r3\tHat\n")
    qpath = tmp_path / "quarantine.jsonl"
    with Quarantine(qpath) as quarantine:
        catalog = read_catalog(item, ["title"], quarantine)
    assert catalog.column("item_id").to_pylist() == ["1", "3"]
    assert [(r["where"], r["field"], r["reason"]) for r in quarantined(qpath)] == [
        ("line 3", "title", "not UTF-8 text")]
    assert quarantine.read == 3


def test_parquet_catalog_keeps_image_bytes_and_writes_nested_fields_as_json(tmp_path):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["Mug", "Cap"], "tags": [["red", "tea"], None],
                             "image": pa.array([b"\xff\xd8 jpeg", None], pa.binary())}), path)
    table = read_catalog(path, ["title"], Quarantine())
    assert table.schema.field("image").type == pa.binary()
    rows = table.to_pylist()
    assert rows[0]["image"] == b"\xff\xd8 jpeg" and rows[1]["image"] is None
    assert json.loads(rows[0]["tags"]) == ["red", "tea"] and rows[1]["tags"] is None and rows[0]["text"] == "Mug"
    # no text field named: a catalog without text (no txt member, nothing quarantined), not one of empty texts
    assert read_catalog(path, [], Quarantine()).column("text").to_pylist() == [None, None]


def test_quarantine_file_appears_with_the_first_record(tmp_path):
    path = tmp_path / "sub" / "quarantine.jsonl"
    with Quarantine(path) as quarantine:
        assert not path.exists()
        quarantine.add(source="s", where="line 2", field="f", reason="r")
        assert path.exists()
    assert quarantined(path) == [{"source": "s", "where": "line 2", "field": "f", "reason": "r"}]
    assert quarantine.total == 1


def test_quarantine_without_records_leaves_no_file(tmp_path):
    inter = write_lines(tmp_path / "x.inter", INTER_HEADER, [b"u1\ti1\t5\t100"])
    path = tmp_path / "quarantine.jsonl"
    with Quarantine(path) as quarantine:
        read_interactions(inter, quarantine)
    assert quarantine.total == 0
    assert not path.exists()


def test_quarantine_keeps_only_the_records_of_work_that_stays_done(tmp_path):
    path = tmp_path / "quarantine.jsonl"
    with Quarantine(path) as earlier:
        for source in ("a.tar", "/shards/b.tar", "a.tar"):
            earlier.add(source=source, where="item x", field="sample", reason="r")
    with Quarantine(path) as again:
        again.keep_only(lambda record: record["source"] == "a.tar")
        again.add(source="c.tar", where="item y", field="sample", reason="new")
        with pytest.raises(RuntimeError, match="already added"):
            again.keep_only(lambda record: True)
    assert [r["source"] for r in quarantined(path)] == ["a.tar", "a.tar", "c.tar"]
    assert again.total == 1  # this run's records only


def test_a_file_of_another_type_is_refused_by_its_name_not_misread(tmp_path):
    inter = write_lines(tmp_path / "x.tsv", b"user_id\titem_id\ttimestamp", [b"u1\ti1\t100"])
    with pytest.raises(DataError, match=r"x.tsv: data.interactions of an unsupported type '.tsv' \(expected a RecBole "
                                        r"atomic .inter file, .csv"):
        read_interactions(inter, Quarantine())
    with pytest.raises(DataError, match=r"x.tsv: data.catalog of an unsupported type '.tsv'"):
        read_catalog(inter, [], Quarantine())


def test_a_csv_export_reads_with_quotes_a_byte_order_mark_and_its_own_delimiter(tmp_path):
    events = write_lines(tmp_path / "events.csv", b"\xef\xbb\xbfcustomer_id , sku,event_time\n",
                         [b"c1,s1,2024-01-02T03:04:05Z", b"", b"c1,s2,1704165000"])
    table = read_interactions(events, Quarantine(), {"user_id": "customer_id", "item_id": "sku",
                                                      "timestamp": "event_time"})
    assert table.to_pydict() == {"user_id": ["c1", "c1"], "item_id": ["s1", "s2"],
                                 "timestamp": [1704164645.0, 1704165000.0]}
    catalog = write_lines(tmp_path / "items.csv", b"item_id;title;brand\n",
                          [b'i1;"Shirt; blue, ""slim""";Acme', b'i2;"Two\nlines";B\xc3\xa9ta'])
    table = read_catalog(catalog, ["title", "brand"], Quarantine())
    assert table.column("item_id").to_pylist() == ["i1", "i2"]
    assert table.column("brand").to_pylist() == ["Acme", "B\u00e9ta"]
    assert table.column("title").to_pylist() == ['Shirt; blue, "slim"', "Two\nlines"]


def test_bad_csv_rows_are_quarantined_by_line_and_reading_continues(tmp_path):
    lines = [
        b"u1,i1,100",            # line 2: good
        b"u1,i2",                # line 3: too few fields
        b"u2,\xff\xfe,101",       # line 4: not UTF-8
        b'u2,"i3\r\ni3",102',   # lines 5-6: one CSV row over two lines, but an id holds no line break
        b"u3,i1,soon",           # line 7: no time
        b"u3,i4,103",            # line 8: good
    ]
    events = write_lines(tmp_path / "events.csv", b"user_id,item_id,timestamp\n", lines)
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        table = read_interactions(events, quarantine)
    assert table.column("item_id").to_pylist() == ["i1", "i4"]
    assert quarantine.read == table.num_rows + quarantine.total == 7  # line 6 is read again, as a row of its own
    assert [(r["where"], r["field"], r["reason"]) for r in quarantined(tmp_path / "q.jsonl")] == [
        ("line 3", "*", "expected 3 ','-separated fields, got 2"),
        ("line 5", "*", "a line break inside field 'item_id', which holds an id or a time (the lines after it are "
                        "read again)"),
        ("line 6", "*", "expected 3 ','-separated fields, got 2"),
        ("line 4", "item_id", "not UTF-8 text"),  # rows that split are checked field by field after
        ("line 7", "timestamp", "timestamp is neither a finite number nor an ISO 8601 time")]


def test_csv_quoting_long_fields_quotes_out_of_place_and_a_quote_never_closed(tmp_path):
    long = b"long description " * 5_000  # a long field, over three lines
    lines = [b"A,Title A,short", b'B,Title B,"' + long + b"\nsecond\nthird" + b'"', b'"Weird" Al,x,y', b"C, Title C,ok",
             b'D,"12 inch ruler', b"E,Title E,ok"]
    catalog = write_lines(tmp_path / "items.csv", b"item_id,title,description\n", lines)
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        table = read_catalog(catalog, ["title"], quarantine)
    assert table.column("item_id").to_pylist() == ["A", "B", "C", "E"]
    assert table.column("description").to_pylist()[1] == long.decode() + "\nsecond\nthird"
    assert table.column("title").to_pylist()[2] == "Title C"  # spaces after a delimiter are not part of the field
    assert quarantine.read == 6 == table.num_rows + quarantine.total
    assert [(r["where"], r["reason"]) for r in quarantined(tmp_path / "q.jsonl")] == [
        ("line 6", "not a CSV row (',' expected after '\"')"),
        ("line 8", "a quote opened here is never closed (the lines after it are read again)")]


def test_a_quote_never_closed_mid_file_costs_its_own_line_only(tmp_path):
    lines = [f"u{i};i{i % 7};{100 + i}".encode() for i in range(2000)]
    lines[800] = b'u800;"i3;900'  # the rest of the file would be one field
    events = write_lines(tmp_path / "events.csv", b"user_id;item_id;timestamp\r\n", [b"%s\r" % line for line in lines])
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        table = read_interactions(events, quarantine)
    assert table.num_rows == 1999 and quarantine.read == 2000
    assert table.column("user_id").to_pylist()[800:802] == ["u801", "u802"]
    assert [r["where"] for r in quarantined(tmp_path / "q.jsonl")] == ["line 802"]


def test_a_row_too_long_or_failing_over_several_lines_costs_its_first_line_only(tmp_path):
    lines = [b"u1,i1,100", b'u1,"' + b"x" * 140_000, b"y" * 100 + b'",101', b"u2,i2,102", b'u3,"i3,103', b"u4,i4,104",
             b'u5,i5"', b"u6,i6,106"]
    events = write_lines(tmp_path / "events.csv", b"user_id,item_id,timestamp\n", lines)
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        table = read_interactions(events, quarantine)
    assert table.column("user_id").to_pylist() == ["u1", "u2", "u4", "u6"]
    assert quarantine.read == 8 == table.num_rows + quarantine.total
    assert [(r["where"], r["reason"]) for r in quarantined(tmp_path / "q.jsonl")] == [
        ("line 3", "not a CSV row (field larger than field limit (131072))"),
        ("line 4", "expected 3 ','-separated fields, got 2"),  # the rest of the long field
        ("line 6", "expected 3 ','-separated fields, got 2 (the lines after it are read again)"),  # closed on line 8
        ("line 8", "expected 3 ','-separated fields, got 2")]


def test_a_quote_that_swallows_lines_into_an_id_costs_its_first_line_only(tmp_path):
    lines = [b"u1,i1,100", b'u2,"i2', b"u3,i3,102", b'u4,i4",103', b'u5,"Line one', b'line two",104']
    events = write_lines(tmp_path / "events.csv", b"user_id,sku,timestamp\n", lines)
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        table = read_interactions(events, quarantine, {"item_id": "sku"})
    # u2's open quote closes on u4's line, 2 lines later: u3 and u4 are read again (csv takes u4's closing quote
    # into its unquoted field as a character)
    assert table.to_pydict() == {"user_id": ["u1", "u3", "u4"], "item_id": ["i1", "i3", 'i4"'],
                                 "timestamp": [100.0, 102.0, 103.0]}
    assert [(r["where"], r["reason"]) for r in quarantined(tmp_path / "q.jsonl")] == [
        ("line 3", "a line break inside field 'sku', which holds an id or a time (the lines after it are read again)"),
        ("line 6", "a line break inside field 'sku', which holds an id or a time (the lines after it are read again)"),
        ("line 7", "expected 3 ','-separated fields, got 2")]


def test_a_catalog_text_field_may_hold_a_line_break(tmp_path):
    catalog = write_lines(tmp_path / "items.csv", b"item_id,title\n", [b'i1,"Line one', b'line two"', b"i2,Plain"])
    table = read_catalog(catalog, ["title"], Quarantine())
    assert table.column("title").to_pylist() == ["Line one\nline two", "Plain"]


def test_a_csv_header_missing_a_field_or_not_utf8_is_a_one_line_error(tmp_path):
    events = write_lines(tmp_path / "events.csv", b"user_id,item,timestamp\n", [b"u1,i1,100"])
    with pytest.raises(DataError, match=r"events.csv: missing field 'item_id' \(expected fields user_id, item_id, "
                                        r"timestamp; found 'user_id', 'item', 'timestamp'\)"):
        read_interactions(events, Quarantine())
    write_lines(events, b"user_id,it\xffem_id,timestamp\n", [b"u1,i1,100"])
    with pytest.raises(DataError, match=r"events.csv: header is not UTF-8 text"):
        read_interactions(events, Quarantine())
    events.write_bytes(b"")
    with pytest.raises(DataError, match=r"events.csv: no header line \(expected fields user_id, item_id, timestamp\)"):
        read_interactions(events, Quarantine())


def test_fields_a_shop_export_names_otherwise_are_read_under_the_names_the_config_gives(tmp_path):
    renames = {"user_id": "customer_id", "item_id": "sku", "timestamp": "event_time"}
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"customer_id": ["c1", "c1"], "sku": ["s1", "s2"], "event_time": [1.0, 2.0]}), events)
    table = read_interactions(events, Quarantine(), renames)
    assert table.column_names == ["user_id", "item_id", "timestamp"] and table.column("item_id").to_pylist() == ["s1", "s2"]
    inter = write_lines(tmp_path / "x.inter", b"customer_id:token\tsku:token\tevent_time:float\n", [b"c1\ts1\t5"])
    assert read_interactions(inter, Quarantine(), renames).column("user_id").to_pylist() == ["c1"]
    catalog = tmp_path / "items.parquet"
    pq.write_table(pa.table({"sku": ["s1"], "name": ["Blue mug"]}), catalog)
    assert read_catalog(catalog, ["name"], Quarantine(), renames).column("item_id").to_pylist() == ["s1"]
    with pytest.raises(DataError, match=r"missing field 'sku' .*found 'item_id', 'name'; data.item_id_field names it\)"):
        pq.write_table(pa.table({"item_id": ["s1"], "name": ["Blue mug"]}), catalog)
        read_catalog(catalog, ["name"], Quarantine(), renames)
    with pytest.raises(DataError, match=r"field 'item_id' besides 'sku', which data.item_id_field names as the item_id"):
        pq.write_table(pa.table({"sku": ["s1"], "item_id": ["x"], "name": ["Blue mug"]}), catalog)
        read_catalog(catalog, ["name"], Quarantine(), renames)
    with pytest.raises(DataError, match=r"missing field 'title' .*; data.text_fields names it\)"):
        read_catalog(catalog, ["title"], Quarantine())


@pytest.mark.parametrize("column", ["binary", "string", "dictionary"])
def test_parquet_text_that_is_not_utf8_quarantines_its_row_not_the_file(tmp_path, column):
    """A `string` column with bad bytes is what a writer that does not check its strings leaves behind; a dictionary
    column is checked as the text it decodes to."""
    values = pa.array([b"ok", b"\xff\xfe", b"fine"], pa.binary())
    values = values if column == "binary" else values.view(pa.string())
    values = values.dictionary_encode() if column == "dictionary" else values
    catalog, events = tmp_path / "items.parquet", tmp_path / "events.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "title": values}), catalog)
    pq.write_table(pa.table({"user_id": ["u", "u", "u"], "item_id": values, "timestamp": [1.0, 2.0, 3.0]}), events)
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        assert read_catalog(catalog, ["title"], quarantine).column("title").to_pylist() == ["ok", "fine"]
        assert read_interactions(events, quarantine).column("item_id").to_pylist() == ["ok", "fine"]
    assert [(r["source"], r["where"], r["field"], r["reason"]) for r in quarantined(tmp_path / "q.jsonl")] == [
        (str(catalog), "row 2", "title", "not UTF-8 text"), (str(events), "row 2", "item_id", "not UTF-8 text")]


def test_a_catalog_column_of_bytes_the_pipeline_does_not_read_is_left_out_not_its_items(tmp_path, caplog):
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF"
    catalog = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "title": ["x", "y"], "thumbnail": pa.array([jpeg, b"ok"]),
                             "brand": ["p", "q"]}), catalog)
    with caplog.at_level("WARNING", logger="qbr.data"):
        table = read_catalog(catalog, ["title"], Quarantine())
    assert table.column_names == ["item_id", "text", "title", "brand"] and table.num_rows == 2
    assert "field 'thumbnail' is not UTF-8 text in 1 rows; left out of the catalog" in caplog.text


def test_quarantine_records_name_fields_as_the_file_does_and_show_the_value_where_it_helps(tmp_path):
    events = write_lines(tmp_path / "events.csv", b"customer_id,sku,event_time\n", [b"c1,s1,soon", b",s2,5"])
    catalog = write_lines(tmp_path / "items.csv", b"sku,title\n", [b"s1,a", b"s1,b"])
    renames = {"user_id": "customer_id", "item_id": "sku", "timestamp": "event_time"}
    with Quarantine(tmp_path / "q.jsonl") as quarantine:
        read_interactions(events, quarantine, renames)
        read_catalog(catalog, ["title"], quarantine, renames)
    assert [(r["field"], r.get("value")) for r in quarantined(tmp_path / "q.jsonl")] == [
        ("event_time", "soon"), ("customer_id", None), ("sku", "s1")]
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"customer_id": ["c1", "c2", "c3"], "sku": ["s1", "s2", "s3"],
                             "event_time": ["31/01/2024", None, "2024-01-31"]}), events)
    with Quarantine(tmp_path / "p.jsonl") as quarantine:
        read_interactions(events, quarantine, renames)
    assert [(r["where"], r["field"], r.get("value")) for r in quarantined(tmp_path / "p.jsonl")] == [
        ("row 1", "event_time", "31/01/2024"), ("row 2", "event_time", None)]
    pq.write_table(pa.table({"customer_id": ["c1"], "sku": ["s1"], "event_time": ["soon"]}), events)
    with pytest.raises(DataError, match=r"events.parquet: field 'event_time' holds no time"):
        read_interactions(events, Quarantine(), renames)
