"""Item features of the fusion stage, as memory-mapped arrays in item index order.

The driver assembles them once from the encode tables and the structure table, streaming
record batches into `.npy` files (row = item index, row 0 padding); every worker then maps the
files read-only, so the operating system shares one copy between the workers of a node and a
worker touches only the rows of its batches. A modality an item lacks is a zero row with
`<name>_present` false.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qbr_dist.data.tables import column_matrix

ARRAYS = ("text", "text_present", "image", "image_present", "cooc", "cooc_present", "tokens")


def assemble(folder: Path, *, item_ids: list[str], encode_files: list[Path], structure_file: Path,
             max_tokens: int) -> dict[str, tuple]:
    """Write the arrays into `folder`; returns {name: shape}."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {item_id: i + 1 for i, item_id in enumerate(item_ids)}
    rows = len(item_ids) + 1
    text_dim, image_dim = _vector_width(encode_files, "text_emb"), _vector_width(encode_files, "image_emb")
    cooc_dim = _vector_width([structure_file], "cooc_emb")
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
            at = _positions(batch.column("item_id").to_pylist(), index)
            known = at > 0
            has_text = batch.column("text_emb").is_valid().to_numpy(zero_copy_only=False) & known
            arrays["text"][at[has_text]] = _matrix(batch.column("text_emb"), text_dim)[has_text]
            arrays["text_present"][at[has_text]] = True
            has_image = np.asarray(batch.column("has_image").to_pylist(), dtype=bool) & known
            if image_dim and has_image.any():
                arrays["image"][at[has_image]] = _matrix(batch.column("image_emb"), image_dim)[has_image]
                arrays["image_present"][at[has_image]] = True
    for batch in pq.ParquetFile(structure_file).iter_batches(columns=["item_id", "struct_tokens", "cooc_emb",
                                                                      "has_cooc"]):
        at = _positions(batch.column("item_id").to_pylist(), index)
        known = at > 0
        arrays["cooc"][at[known]] = _matrix(batch.column("cooc_emb"), cooc_dim)[known]
        arrays["cooc_present"][at[known]] = np.asarray(batch.column("has_cooc").to_pylist(), dtype=bool)[known]
        for row, tokens in zip(at[known], np.asarray(batch.column("struct_tokens").to_pylist(), dtype=object)[known]):
            kept = tokens[:max_tokens]
            arrays["tokens"][row, :len(kept)] = kept
    shapes = {}
    for name, array in arrays.items():
        array.flush()
        shapes[name] = array.shape
    return shapes


def load(folder: Path) -> dict[str, np.ndarray]:
    """The arrays, memory-mapped read-only."""
    return {name: np.load(Path(folder) / f"{name}.npy", mmap_mode="r") for name in ARRAYS}


def batch_features(arrays: dict[str, np.ndarray], items: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of `items` (item indices) of every array, as ordinary arrays."""
    return {name: np.asarray(array[items]) for name, array in arrays.items()}


def _open(folder: Path, name: str, shape: tuple, dtype) -> np.memmap:
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def _vector_width(files: list[Path], column: str) -> int:
    """Width of a fixed-size-list column (0 for a plain list column: no vectors, e.g. no image model)."""
    field = pq.read_schema(files[0]).field(column) if files else None
    return field.type.list_size if field is not None and hasattr(field.type, "list_size") else 0


def _positions(ids: list[str], index: dict[str, int]) -> np.ndarray:
    return np.fromiter((index.get(i, 0) for i in ids), dtype=np.int64, count=len(ids))


def _matrix(column, width: int) -> np.ndarray:
    """A fixed-size-list column as an (n, width) array; null rows are zeros."""
    import pyarrow as pa

    if column.null_count:
        column = column.fill_null(pa.scalar([0.0] * width, type=column.type))
    return column_matrix(column)
