"""Item features of the fusion stage, as memory-mapped arrays in item index order.

The driver assembles them once from the encode tables and the structure table, streaming
record batches into `.npy` files (row = item index, row 0 padding); every worker then maps the
files read-only, so the operating system shares one copy between the workers of a node and a
worker touches only the rows of its batches. A modality an item lacks is a zero row with
`<name>_present` false.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qbr_dist.data.tables import column_matrix

TOKENS_COLUMN = "struct_tokens"
ARRAYS = ("text", "text_present", "image", "image_present", "cooc", "cooc_present", "tokens")


def assemble(folder: Path, *, item_ids: list[str], encode_files: list[Path], structure_file: Path,
             max_tokens: int) -> dict[str, tuple]:
    """Write the arrays into `folder`, each under a temporary name until complete (never into a file another run's
    stage may share by a hard link); returns {name: shape}."""
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.tmp-*"):  # of a killed run
        leftover.unlink()
    index = {item_id: i + 1 for i, item_id in enumerate(item_ids)}
    rows = len(item_ids) + 1
    text_dim, image_dim = vector_width(encode_files, "text_emb"), vector_width(encode_files, "image_emb")
    cooc_dim = vector_width([structure_file], "cooc_emb")
    arrays = {
        "text": _open(folder, "text", (rows, text_dim), np.float32),
        "text_present": _open(folder, "text_present", (rows,), np.bool_),
        "image": _open(folder, "image", (rows, max(image_dim, 1)), np.float32),
        "image_present": _open(folder, "image_present", (rows,), np.bool_),
        "cooc": _open(folder, "cooc", (rows, cooc_dim), np.float32),
        "cooc_present": _open(folder, "cooc_present", (rows,), np.bool_),
        "tokens": _open(folder, "tokens", (rows, max_tokens), np.int32),
    }
    for path in encode_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["item_id", "text_emb", "image_emb", "has_image"]):
            _write_rows(arrays, pa.Table.from_batches([batch]), index, {"text": ("text_emb", text_dim),
                                                                       "image": ("image_emb", image_dim)})
    for batch in pq.ParquetFile(structure_file).iter_batches(columns=["item_id", "struct_tokens", "cooc_emb",
                                                                      "has_cooc"]):
        table = pa.Table.from_batches([batch])
        at = _write_rows(arrays, table, index, {"cooc": ("cooc_emb", cooc_dim)})
        known = at > 0
        arrays["tokens"][at[known]] = padded_tokens(table, max_tokens)[known]
    shapes = {}
    for name, array in arrays.items():
        array.flush()
        shapes[name] = array.shape
        os.replace(array.filename, folder / f"{name}.npy")
    return shapes


def load(folder: Path) -> dict[str, np.ndarray]:
    """The arrays, memory-mapped read-only."""
    return {name: np.load(Path(folder) / f"{name}.npy", mmap_mode="r") for name in ARRAYS}


def batch_features(arrays: dict[str, np.ndarray], items: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of `items` (item indices) of every array, as ordinary arrays."""
    return {name: np.asarray(array[items]) for name, array in arrays.items()}


def _open(folder: Path, name: str, shape: tuple, dtype) -> np.memmap:
    return np.lib.format.open_memmap(folder / f".{name}.npy.tmp-{os.getpid()}", mode="w+", dtype=dtype, shape=shape)


def vector_width(files: list[Path], column: str) -> int:
    """Width of a fixed-size-list column (0 for a plain list column: no vectors, e.g. no image model)."""
    field = pq.read_schema(files[0]).field(column) if files else None
    return field.type.list_size if field is not None and hasattr(field.type, "list_size") else 0


def _positions(ids: list[str], index: dict[str, int]) -> np.ndarray:
    return np.fromiter((index.get(i, 0) for i in ids), dtype=np.int64, count=len(ids))


def _write_rows(arrays: dict[str, np.memmap], table: pa.Table, index: dict[str, int],
                vectors: dict[str, tuple[str, int]]) -> np.ndarray:
    """Copy the vectors of the table's known items into their rows of `arrays` ({name: (column, width)};
    a width of 0 is a modality without vectors); returns each table row's item index (0: unknown)."""
    at = _positions(table.column("item_id").to_pylist(), index)
    known = at > 0
    for name, (column, width) in vectors.items():
        if width:
            matrix, present = vector_rows(table, column, width)
            arrays[name][at[known]] = matrix[known]
            arrays[f"{name}_present"][at[known]] = present[known]
    return at


def vector_rows(table: pa.Table, column: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) float32 rows and which are present: valid and not flagged absent by a `has_<modality>`
    column; absent rows are zeros. A missing or all-null column is a missing modality, an empty list a missing
    vector; vectors of another width than expected are an error, never a silently missing modality."""
    rows = table.num_rows
    values = empty_as_null(table.column(column).combine_chunks()) if column in table.column_names else None
    if values is None or values.null_count == len(values):
        return np.zeros((rows, width), np.float32), np.zeros(rows, bool)
    values = fixed_width(values, column, width)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    flag = f"has_{column.removesuffix('_emb')}"
    if flag in table.column_names:
        present &= table.column(flag).to_numpy(zero_copy_only=False).astype(bool)
    filled = values.fill_null(pa.scalar([0.0] * width, type=values.type)) if values.null_count else values
    matrix = column_matrix(filled).astype(np.float32)
    matrix[~present] = 0.0
    return matrix, present


def empty_as_null(values: pa.Array) -> pa.Array:
    """Vectors where an empty list stands for no vector (null), as a table may write an item without a modality."""
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        return values
    empty = pc.fill_null(pc.equal(pc.list_value_length(values), 0), False)
    return pc.if_else(empty, pa.scalar(None, values.type), values) if pc.any(empty).as_py() else values


def fixed_width(values: pa.Array, column: str, width: int) -> pa.Array:
    """Vectors as fixed-size lists of `width`: variable-size lists (a table written through pandas) are taken
    when every vector has that width; anything else is an error naming the column."""
    variable = pa.types.is_list(values.type) or pa.types.is_large_list(values.type)
    if variable:
        with contextlib.suppress(pa.ArrowInvalid):  # raised when some vector has another length
            values = values.cast(pa.list_(values.type.value_type, width))
    if getattr(values.type, "list_size", None) != width:
        raise ValueError(f"column '{column}': expected vectors of {width} floats each, got {values.type}"
                         f"{' with other lengths' if variable else ''}")
    return values


def bad_vectors(values: pa.Array, width: int) -> dict[int, str]:
    """{row: why} for the vectors that cannot be used: another length than `width`, or a value that is null, NaN or
    infinite (the first such value named). A null row (no vector) is not among them, nor a column of nulls alone
    (pandas types it null, not list): whether one is missing is for the caller to say."""
    if pa.types.is_null(values.type):
        return {}
    lengths = pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    bad = {int(row): f"a vector of {lengths[row]} values; expected {width}"
           for row in np.flatnonzero(valid & (lengths != width))}
    flat = pc.list_flatten(values)
    numbers = flat.to_numpy(zero_copy_only=False)  # a null value comes out as NaN
    kinds = np.where(flat.is_null().to_numpy(zero_copy_only=False), "a null value",
                     np.where(np.isnan(numbers), "a NaN value", "an infinite value"))
    parents = np.repeat(np.arange(len(values)), lengths)  # as list_flatten lists them: null rows hold none
    unusable = np.flatnonzero(~np.isfinite(numbers))
    rows, first = np.unique(parents[unusable], return_index=True)
    for row, at in zip(rows, unusable[first]):
        bad.setdefault(int(row), str(kinds[at]))
    return bad


def padded_tokens(table: pa.Table, max_tokens: int) -> np.ndarray:
    """(n, max_tokens) structural token ids, 0-padded (0 is the padding token); zeros without the column."""
    out = np.zeros((table.num_rows, max_tokens), np.int64)
    if TOKENS_COLUMN not in table.column_names:
        return out
    for row, tokens in enumerate(table.column(TOKENS_COLUMN).to_pylist()):
        kept = (tokens or [])[:max_tokens]
        out[row, :len(kept)] = kept
    return out
