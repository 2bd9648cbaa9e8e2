"""Hash buckets on disk: rows spread over one parquet file per bucket by a fixed hash of a key, so
that work over a catalog larger than memory (suffix assignment, joining codes with the catalog)
can go a bucket at a time. Item ids stay in Arrow: a Python string per item would cost more memory
than the rest for a multi-million-item catalog."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def as_ids(item_ids) -> pa.Array:
    """Item ids as one Arrow string array (from Arrow, numpy or a list)."""
    if isinstance(item_ids, pa.ChunkedArray):
        return item_ids.combine_chunks().cast(pa.string())
    if isinstance(item_ids, pa.Array):
        return item_ids.cast(pa.string())
    return pa.array([str(i) for i in item_ids], pa.string())


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fixed 64-bit mixing (Python's hash() is salted per process)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def id_buckets(item_ids, buckets: int) -> np.ndarray:
    """(n,) bucket of each item id, from its UTF-8 bytes (no Python string per item)."""
    ids = as_ids(item_ids).cast(pa.large_string())
    if not len(ids):
        return np.zeros(0, dtype=np.int32)
    _, offsets, data = ids.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[ids.offset:ids.offset + len(ids) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    data, starts, lengths = data[offsets[0]:offsets[-1]], offsets[:-1] - offsets[0], np.diff(offsets)
    position = np.arange(len(data)) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        terms = data.astype(np.uint64) * mix64(position.astype(np.uint64) + np.uint64(1))
        running = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(terms, dtype=np.uint64)])
        key = mix64((running[starts + lengths] - running[starts]) ^ lengths.astype(np.uint64))
    return (key % np.uint64(buckets)).astype(np.int32)


class BucketFiles:
    """One parquet file per bucket in a folder: appended to batch by batch, read back a bucket at a time."""

    def __init__(self, folder: Path, buckets: int):
        self.folder, self.buckets, self.writers = Path(folder), buckets, {}

    def __enter__(self) -> BucketFiles:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def path(self, bucket: int) -> Path:
        return self.folder / f"{bucket:06d}.parquet"

    def write(self, bucket: int, table: pa.Table) -> None:
        if bucket not in self.writers:
            self.writers[bucket] = pq.ParquetWriter(self.path(bucket), table.schema)
        self.writers[bucket].write_table(table)

    def add(self, table: pa.Table, bucket: np.ndarray) -> None:
        """Each row of `table` to the file of its bucket."""
        order = np.argsort(bucket, kind="stable")
        table, bucket = table.take(order), bucket[order]
        starts = np.flatnonzero(np.diff(bucket, prepend=-1))
        for start, stop in zip(starts, [*starts[1:], len(bucket)]):
            self.write(int(bucket[start]), table.slice(start, stop - start))

    def read(self, bucket: int) -> pa.Table | None:
        """The bucket's rows; None when it got none."""
        return pq.read_table(self.path(bucket)) if self.path(bucket).is_file() else None

    def tables(self) -> Iterator[tuple[int, pa.Table]]:
        """(bucket, rows) of every bucket that got rows, in bucket order."""
        for bucket in range(self.buckets):
            if (table := self.read(bucket)) is not None:
                yield bucket, table
