"""The table contracts (docs/architecture.md, "Stages and artifacts") that every reader produces, and the one way
vector and code columns become arrays."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INTERACTION_FIELDS = ("user_id", "item_id", "timestamp")
MILLISECONDS_AFTER = 10**11  # a time since 1970 past this is in milliseconds: in seconds it would be past year 5138
LATEST_TIME = 10**13  # past this, a time since 1970 is none, in seconds or milliseconds (the year 2286)
INTERACTIONS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.float64())]
)


def item_text(record: dict, text_fields: list[str]) -> str | None:
    """An item's text: its `text_fields` joined by ". ", empty ones left out, so "" for an item whose fields are
    all empty (bad data, quarantined when encoded); None when no field is configured (a catalog without text)."""
    return ". ".join(record[f] for f in text_fields if record.get(f)) if text_fields else None


def utf8_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which values of a binary column are UTF-8 (a null is): only those holding a byte past ASCII are decoded, so a
    column of ASCII text costs a numpy pass over its bytes, a chunk at a time."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    return np.concatenate([_utf8_in_chunk(chunk) for chunk in chunks]) if chunks else np.ones(0, bool)


def _utf8_in_chunk(chunk: pa.Array) -> np.ndarray:
    valid = np.ones(len(chunk), bool)
    _, offsets, data = chunk.buffers()
    if data is None or not len(chunk):
        return valid
    offsets = np.frombuffer(offsets, np.int64 if pa.types.is_large_binary(chunk.type) else np.int32)
    offsets = offsets[chunk.offset:chunk.offset + len(chunk) + 1]
    high = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] >= 0x80
    filled = np.flatnonzero(offsets[1:] > offsets[:-1])  # values of one byte or more: reduceat needs them
    has_high = np.zeros(len(chunk), bool)
    if len(filled):
        has_high[filled] = np.logical_or.reduceat(high, offsets[filled] - offsets[0])
    for row in np.flatnonzero(has_high):
        try:
            chunk[int(row)].as_py().decode("utf-8")
        except UnicodeDecodeError:
            valid[row] = False
    return valid


def is_utf8(text: str) -> bool:
    """False for text holding a lone surrogate, which Arrow cannot store: bytes that were not UTF-8, read with
    `errors="surrogateescape"`, or a JSON `\\ud800` escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def column_matrix(column: pa.Array | pa.ChunkedArray, dtype=np.float32) -> np.ndarray:
    """A list column with the same length in every row (vectors, code tuples) as an (n, width) array.
    Null rows must be filled or refused first: they have no values to flatten."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not len(column):
        return np.zeros((0, getattr(column.type, "list_size", 0)), dtype=dtype)
    return np.asarray(column.flatten(), dtype=dtype).reshape(len(column), -1)


def matrix_column(matrix: np.ndarray, *, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """An (n, width) array as a fixed-size list column, the inverse of `column_matrix`; rows where `valid` is
    false are null."""
    matrix = np.ascontiguousarray(matrix)
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1], mask=mask)


def repeated_values(column: pa.Array | pa.ChunkedArray) -> pa.StructArray:
    """The values that appear more than once in `column`, with how often (`pc.value_counts` fields)."""
    counts = pc.value_counts(column)
    return counts.filter(pc.greater(counts.field("counts"), 1))
