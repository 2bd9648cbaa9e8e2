"""The codes file: one row per item with its semantic ID and the codebook version it came from.

`codes.parquet`: `item_id` (string), `codes` (list<int32>: the L level codes, then the
disambiguation suffix), `codebook_version` (string). The file's metadata records the version
and the suffix table size, so a reader can refuse codes made with another codebook. Since the
size is in the schema, a file written part by part (`codes_writer`) needs it before the first part.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qbr_dist import artifacts
from qbr_dist.data.buckets import as_ids
from qbr_dist.quant.codebook import CodebookMismatch

VERSION_KEY, SUFFIX_KEY = b"qbr.codebook_version", b"qbr.suffix_table_size"


def _schema(version: str, suffix_table_size: int) -> pa.Schema:
    return pa.schema([("item_id", pa.string()), ("codes", pa.list_(pa.int32())), ("codebook_version", pa.string())],
                     metadata={VERSION_KEY: version.encode(), SUFFIX_KEY: str(suffix_table_size).encode()})


def _table(item_ids, codes: np.ndarray, suffixes: np.ndarray, schema: pa.Schema) -> pa.Table:
    """`item_ids`: Arrow, numpy or a list; codes (n, L) and suffixes (n,) become one list per item."""
    full = np.concatenate([np.asarray(codes), np.asarray(suffixes)[:, None]], axis=1).astype(np.int32)
    offsets = pa.array(np.arange(0, full.size + 1, full.shape[1], dtype=np.int32))
    ids = as_ids(item_ids)
    version = schema.metadata[VERSION_KEY].decode()
    return pa.table({"item_id": ids, "codes": pa.ListArray.from_arrays(offsets, pa.array(full.ravel())),
                     "codebook_version": pa.repeat(pa.scalar(version, pa.string()), len(ids))}, schema=schema)


@contextlib.contextmanager
def codes_writer(path: Path, version: str, suffix_table_size: int) -> Iterator[Callable[..., None]]:
    """Yields `write(item_ids, codes, suffixes)`, which appends rows; the file appears at `path` when the block ends."""
    schema = _schema(version, suffix_table_size)
    with artifacts.atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        yield lambda item_ids, codes, suffixes: writer.write_table(_table(item_ids, codes, suffixes, schema))


def write_codes(path: Path, item_ids, codes: np.ndarray, suffixes: np.ndarray, version: str) -> None:
    """The codes file of items whose codes (n, L) and suffixes (n,) are all at hand."""
    with codes_writer(path, version, int(np.max(np.asarray(suffixes), initial=-1)) + 1) as write:
        write(item_ids, codes, suffixes)


def codes_version(path: Path) -> str:
    return schema_version(pq.read_schema(path))


def schema_version(schema: pa.Schema) -> str:
    """The codebook version a codes file's schema records ("" for none)."""
    return (schema.metadata or {}).get(VERSION_KEY, b"").decode()


def suffix_table_size(path: Path) -> int:
    """Disambiguation codes a model over this file needs (its largest suffix + 1)."""
    return int((pq.read_schema(path).metadata or {}).get(SUFFIX_KEY, b"0"))


def code_levels(path: Path) -> int:
    """Levels of a codes file's code tuples, the suffix not counted (0 for a file without rows)."""
    file = pq.ParquetFile(path)
    first = file.read_row_group(0, columns=["codes"]).column(0) if file.num_row_groups else []
    return len(first[0].as_py()) - 1 if len(first) else 0


def codes_schema(path: Path) -> pa.Schema:
    """The schema of a codes file; refuses in one line a file that is not parquet or lacks its fields."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a parquet codes file ({err})") from None
    fields = {field.name: field.type for field in schema}
    if not (pa.types.is_string(fields.get("item_id", pa.null())) and pa.types.is_list(fields.get("codes", pa.null()))
            and pa.types.is_integer(fields["codes"].value_type)):
        found = ", ".join(f"{name}: {kind}" for name, kind in fields.items())
        raise ValueError(f"{path}: not a codes file (expected fields item_id: string and codes: list<int32>; "
                         f"found {found})")
    return schema


def read_codes(path: Path, *, expected_version: str | None = None) -> pa.Table:
    """The codes table; refuses in one line a file that is not a codes file, or whose codebook version differs from
    `expected_version`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: codes file not found")
    schema = codes_schema(path)
    version = schema_version(schema)
    if expected_version is not None and not version:
        raise CodebookMismatch(f"{path}: no codebook version in its metadata, so not codes that qbr quantize or "
                               "retokenize wrote")
    if expected_version is not None and version != expected_version:
        raise CodebookMismatch(f"{path}: codes made with codebook version {version}, but version "
                               f"{expected_version} is in use; retokenize with that codebook first")
    return pq.read_table(path)
