"""Columns of a RecBole atomic file (tab-separated, no quoting, a header line) read by Arrow's C++ CSV reader, each
row placed on its line of the file for the quarantine.

A line ends at a line feed, a carriage return and line feed, or a carriage return alone (as Arrow and Python's
universal newlines read them). Arrow numbers the rows it cannot split among the non-blank lines and says nothing of
the blank lines it skips, so those are found first, by a scan of the bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

SCAN_BLOCK = 1 << 26  # bytes of the file compared at once when looking for blank lines


@dataclass
class AtomicColumns:
    table: pa.Table  # the wanted columns, as binary, of every row that split into the header's number of fields
    unsplit: list[tuple[int, int]]  # (line, fields found) of each row that did not, in file order
    blank: np.ndarray  # line numbers (1-based; the header is line 1) of the blank lines
    skipped: np.ndarray  # the header's and the unsplit rows' numbers among the non-blank lines, sorted

    def lines_of(self, rows: np.ndarray) -> np.ndarray:
        """The lines of the file that rows `rows` (0-based) of `table` were read from."""
        return _nth_outside(self.blank, _nth_outside(self.skipped, np.asarray(rows) + 1))


def read_atomic_columns(path: Path, names: list[str], wanted: list[str]) -> AtomicColumns:
    """The `wanted` fields of the file whose header line gives `names`."""
    blank = _blank_lines(path)
    positional = [f"f{at}" for at in range(len(names))]
    numbers: list[tuple[int, int]] = []  # Arrow's: among the non-blank lines, the header 1

    def unsplit(row) -> str:
        numbers.append((row.number, row.actual_columns))
        return "skip"

    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(use_threads=False, skip_rows=1, column_names=positional),  # threads: no numbers
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, newlines_in_values=False,
                                        ignore_empty_lines=True, invalid_row_handler=unsplit),
        convert_options=pcsv.ConvertOptions(column_types={name: pa.binary() for name in positional},
                                            include_columns=[positional[names.index(name)] for name in wanted],
                                            strings_can_be_null=False))
    skipped = np.array([1] + [number for number, _ in numbers], dtype=np.int64)
    return AtomicColumns(table.rename_columns(wanted), [(int(_nth_outside(blank, n)), found) for n, found in numbers],
                         blank, skipped)


def _nth_outside(excluded: np.ndarray, n):
    """The `n`-th (1-based) positive whole number not in the sorted `excluded`: row numbers among kept lines to
    line numbers."""
    return n + np.searchsorted(excluded - np.arange(len(excluded)), n, side="right")


def _blank_lines(path: Path) -> np.ndarray:
    """Line numbers of the empty lines."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    blank, previous_end, lines_before = [], -1, 0
    for start in range(0, len(data), SCAN_BLOCK):
        block = data[start:start + SCAN_BLOCK]
        feeds = start + np.flatnonzero(block == 10)
        returns = start + np.flatnonzero(block == 13)
        alone = returns[(returns + 1 == len(data)) | (data[np.minimum(returns + 1, len(data) - 1)] != 10)]
        ends = np.sort(np.concatenate([feeds, alone]))  # the last byte of each line's ending
        after_return = (ends > 0) & (data[np.maximum(ends - 1, 0)] == 13) & (data[ends] == 10)
        lengths = ends - after_return - np.concatenate([[previous_end], ends[:-1]]) - 1
        blank.append(lines_before + 1 + np.flatnonzero(lengths == 0))
        if len(ends):
            previous_end, lines_before = ends[-1], lines_before + len(ends)
    return np.concatenate(blank) if blank else np.zeros(0, np.int64)
