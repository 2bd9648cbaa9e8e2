"""Columns of a delimited text file with a header line (a RecBole atomic file: tab-separated, no quoting; or a CSV
file that quotes only whole fields, `splits_as_written`) read by Arrow's C++ CSV reader, each row placed on its line
of the file for the quarantine.

A line ends at a line feed, a carriage return and line feed, or a carriage return alone (as Arrow and Python's
universal newlines read them). One scan of the bytes finds the blank lines (Arrow skips them without a word) and the
lines with another number of fields than the header's, which Arrow is then never shown: its handler of such rows
decodes them as UTF-8 and fails on a line of bad bytes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

SCAN_BLOCK = 1 << 26  # bytes of the file looked at at once
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, which Arrow and the csv reader (utf-8-sig) both skip


class AtomicColumns:
    def __init__(self, table: pa.Table, unsplit: list[tuple[int, int]], not_rows: np.ndarray):
        self.table = table  # the wanted columns, as binary, of every line with the header's number of fields
        self.unsplit = unsplit  # (line, fields found) of each line with another number, in file order
        self._shifted = not_rows - np.arange(len(not_rows))  # of the sorted lines that are no row of `table`

    def lines_of(self, rows: np.ndarray) -> np.ndarray:
        """The lines of the file that rows `rows` (0-based) of `table` were read from."""
        nth = np.asarray(rows) + 1
        return nth + np.searchsorted(self._shifted, nth, side="right")


def read_atomic_columns(path: Path, names: list[str], wanted: list[str], delimiter: str = "\t",
                        scan: Scan | None = None, quoted: bool = False) -> AtomicColumns:
    """The `wanted` fields of the file whose header line gives `names`; `scan`, when given, is its `scan_lines`;
    `quoted`: a field may be quoted whole (as `splits_as_written` allows), the quotes not part of its value."""
    scan = scan or scan_lines(path, fields=len(names), delimiter=delimiter)
    positional = [f"f{at}" for at in range(len(names))]
    unsplit = list(zip(scan.unsplit.tolist(), scan.unsplit_fields.tolist()))
    not_rows = np.unique(np.concatenate([[1], scan.blank, scan.unsplit]))
    if scan.lines <= len(not_rows):  # no row to read (Arrow cannot skip the header of a file that is only that)
        empty = pa.table({name: pa.array([], pa.binary()) for name in wanted})
        return AtomicColumns(empty, unsplit, not_rows)
    source = _Without(path, scan.unsplit_bytes) if len(scan.unsplit_bytes) else path
    table = pcsv.read_csv(
        source,
        read_options=pcsv.ReadOptions(skip_rows=1, column_names=positional,
                                      block_size=max(1 << 20, 2 * scan.longest + 2)),  # a row within one block
        parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False, escape_char=False,
                                        newlines_in_values=False, ignore_empty_lines=True),
        convert_options=pcsv.ConvertOptions(column_types={name: pa.binary() for name in positional},
                                            include_columns=[positional[_last(names, name)] for name in wanted],
                                            strings_can_be_null=False))
    return AtomicColumns(table.rename_columns(wanted), unsplit, not_rows)


def _last(names: list[str], name: str) -> int:
    """Where a field named twice is taken from: its last place, as a row read into a dict by name keeps."""
    return len(names) - 1 - names[::-1].index(name)


@dataclass
class Scan:
    blank: np.ndarray  # line numbers of the empty lines
    unsplit: np.ndarray  # line numbers of the non-empty lines with another number of fields
    unsplit_fields: np.ndarray  # how many fields each of those has
    unsplit_bytes: np.ndarray  # (n, 2): where each of those starts, and where the next line does
    lines: int  # how many lines the file has
    longest: int  # bytes of its longest line


def scan_lines(path: Path, fields: int, delimiter: str = "\t") -> Scan:
    """Blank lines, and lines (the header's excepted) whose count of `delimiter` is not `fields` - 1."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    size = len(data)
    found = {name: [] for name in ("blank", "unsplit", "unsplit_fields", "starts", "stops")}
    previous_end, lines_before, pending_tabs, longest = -1, 0, 0, 0
    for start in range(0, size, SCAN_BLOCK):
        block = data[start:start + SCAN_BLOCK]
        returns = start + np.flatnonzero(block == 13)
        alone = returns[(returns + 1 == size) | (data[np.minimum(returns + 1, size - 1)] != 10)]
        feeds = start + np.flatnonzero(block == 10)
        ends = np.sort(np.concatenate([feeds, alone])) if len(alone) else feeds  # each line ending's last byte
        if start + len(block) == size and (not len(ends) or ends[-1] < size - 1):
            ends = np.append(ends, size)  # a last line with no ending
        tabs = start + np.flatnonzero(block == ord(delimiter))
        per_line = np.diff(np.concatenate([[0], np.searchsorted(tabs, ends), [len(tabs)]]))  # the last: a line going on
        per_line[0] += pending_tabs
        pending_tabs = int(per_line[-1])
        if not len(ends):
            continue  # a line longer than the block goes on
        firsts = np.concatenate([[previous_end + 1], ends[:-1] + 1])
        two_byte = (ends < size) & (ends > 0) & (data[np.clip(ends - 1, 0, size - 1)] == 13) & \
            (data[np.minimum(ends, size - 1)] == 10)
        lengths = ends - two_byte - firsts
        longest = max(longest, int(lengths.max()))
        numbers = lines_before + 1 + np.arange(len(ends))
        bad = (lengths > 0) & (per_line[:-1] != fields - 1) & (numbers > 1)
        for name, values in (("blank", numbers[lengths == 0]), ("unsplit", numbers[bad]),
                             ("unsplit_fields", per_line[:-1][bad] + 1), ("starts", firsts[bad]),
                             ("stops", np.minimum(ends[bad] + 1, size))):
            found[name].append(values)
        previous_end, lines_before = ends[-1], lines_before + len(ends)
    joined = {name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in found.items()}
    return Scan(joined["blank"], joined["unsplit"], joined["unsplit_fields"],
                 np.stack([joined["starts"], joined["stops"]], axis=1), lines_before, longest)


def splits_as_written(path: Path, delimiter: str) -> bool:
    """True when Arrow's CSV reader and Python's csv module (strict, skipping spaces at the start of a field) split
    every line of the file alike and keep each field's text alike: no NUL, no space starting a field, and every quote
    one of a pair around a whole field that holds no delimiter, line break or quote."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    breaks = np.zeros(256, dtype=bool)  # what ends a field
    breaks[[ord(delimiter), 10, 13]] = True
    opened = np.zeros(0, np.int64)  # a quote left open at the end of the block before
    for start in range(0, len(data), SCAN_BLOCK):
        block = data[start:start + SCAN_BLOCK]
        if (block == 0).any():
            return False
        spaces = start + np.flatnonzero(block == 32)
        if len(spaces) and (spaces[0] == 0 or breaks[data[np.maximum(spaces - 1, 0)]].any()):
            return False
        quotes = np.concatenate([opened, start + np.flatnonzero(block == ord('"'))])
        quotes, opened = (quotes[:-1], quotes[-1:]) if len(quotes) % 2 else (quotes, opened[:0])
        if len(quotes) and not _whole_fields(data, quotes[0::2], quotes[1::2], breaks):
            return False
    return not len(opened)


def _whole_fields(data: np.ndarray, opens: np.ndarray, closes: np.ndarray, breaks: np.ndarray) -> bool:
    """Each (open, close) pair of quotes encloses a whole field with no field break inside."""
    size = len(data)
    line_start = 3 if bytes(data[:3]) == BOM else 0  # a byte-order mark is no part of the first field
    whole = (opens == line_start) | breaks[data[np.maximum(opens - 1, 0)]]
    whole &= (closes == size - 1) | breaks[data[np.minimum(closes + 1, size - 1)]]
    first = int(opens[0])
    found = first + np.flatnonzero(breaks[data[first:int(closes[-1]) + 1]])  # the breaks from the first open on
    after_open = np.append(found, size)[np.searchsorted(found, opens)]  # the first break after each open quote
    return bool(whole.all()) and bool((after_open > closes).all())


class _Without(io.RawIOBase):
    """The file's bytes without the given (start, stop) ranges, for Arrow to read as a file."""

    def __init__(self, path: Path, ranges: np.ndarray):
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        stops, starts = np.append(ranges[:, 0], len(self.data)), np.concatenate([[0], ranges[:, 1]])
        self.parts = [(int(a), int(b)) for a, b in zip(starts, stops) if b > a]
        self.part, self.at = 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Fills `buffer` across the kept parts: Arrow takes a short read for the end of the file."""
        filled = 0
        while filled < len(buffer) and self.part < len(self.parts):
            start, stop = self.parts[self.part]
            self.at = max(self.at, start)
            count = min(len(buffer) - filled, stop - self.at)
            buffer[filled:filled + count] = self.data[self.at:self.at + count].tobytes()
            filled, self.at = filled + count, self.at + count
            if self.at >= stop:
                self.part += 1
        return filled
