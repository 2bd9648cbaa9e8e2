"""Structural item features: the structure modality of the fusion stage (DESIGN §1).

Two views per item, both cheap enough for a multi-million-item catalog:
- tokens of its structured fields (`category=Books`, `genre=Comedy`, ...), a small vocabulary
  the fusion model embeds, so an item nobody has clicked still has structure;
- a co-occurrence embedding: item pairs close to each other in *training* sequences, weighted
  by positive PMI and reduced by truncated SVD (the classic sparse "word2vec as matrix
  factorisation" recipe), so items used together get nearby vectors without training a model.
Everything is sparse and streamed by chunks of sequences; nothing is densified over items.
"""
from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from qbr_dist.data.tables import matrix_column

PAD_TOKEN = "<pad>"


def field_tokens(values_by_field: dict[str, list[str | None]], *, separator: str | None = None,
                 min_count: int = 1) -> tuple[list[list[int]], list[str]]:
    """Per item, the sorted ids of its `field=value` tokens, and the vocabulary (id 0 is padding).

    Tokens found in fewer than `min_count` items are dropped. The vocabulary is ordered by field
    (in the order given) then value, so the same catalog always gives the same ids.
    """
    lengths = {field: len(values) for field, values in values_by_field.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"structured fields differ in length (one value per item expected): {lengths}")
    per_item = [_item_tokens(values_by_field, i, separator) for i in range(next(iter(lengths.values()), 0))]
    counts = Counter(token for tokens in per_item for token in tokens)
    order = {field: rank for rank, field in enumerate(values_by_field)}
    kept = sorted((token for token, count in counts.items() if count >= min_count),
                  key=lambda token: (order[token[0]], token[1]))
    ids = {token: i for i, token in enumerate(kept, start=1)}
    tokens = [sorted(ids[token] for token in item if token in ids) for item in per_item]
    return tokens, [PAD_TOKEN] + [f"{field}={value}" for field, value in kept]


def _item_tokens(values_by_field: dict[str, list[str | None]], item: int,
                 separator: str | None) -> set[tuple[str, str]]:
    """The distinct (field, value) pairs of one item; missing and blank values give none."""
    tokens = set()
    for field, values in values_by_field.items():
        value = values[item]
        if not value:
            continue
        parts = value.split(separator) if separator is not None else [value]
        tokens.update((field, part.strip()) for part in parts if part.strip())
    return tokens


def cooccurrence_matrix(sequences: Iterable[np.ndarray], num_items: int, *, window: int,
                        chunk_sequences: int = 100_000) -> sp.csr_matrix:
    """Symmetric counts of distinct items at most `window` positions apart in the same sequence.

    Items are 1..num_items; 0 is padding and is removed before positions are counted. Entry
    (a, b) counts the position pairs holding a and b (either order), so a pair seen once adds 1
    to both (a, b) and (b, a). Memory is bounded by one chunk of `chunk_sequences` sequences.
    """
    if window < 1:
        raise ValueError(f"co-occurrence window must be >= 1, got {window}")
    if chunk_sequences < 1:
        raise ValueError(f"chunk_sequences must be >= 1, got {chunk_sequences}")
    shape = (num_items + 1, num_items + 1)
    total = sp.csr_matrix(shape, dtype=np.float32)
    for chunk in _chunks(sequences, chunk_sequences):
        total = total + _chunk_counts(chunk, num_items, window)
    return total


def _chunks(sequences: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    iterator = iter(sequences)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _chunk_counts(chunk: list[np.ndarray], num_items: int, window: int) -> sp.csr_matrix:
    """Co-occurrence counts of one chunk: one vectorised pass per offset 1..window."""
    arrays = [np.asarray(seq, dtype=np.int64).ravel() for seq in chunk]
    items = np.concatenate(arrays)
    owner = np.repeat(np.arange(len(arrays)), [a.size for a in arrays])
    real = items != 0
    items, owner = items[real], owner[real]
    bad = items[(items < 0) | (items > num_items)]
    if bad.size:
        raise ValueError(f"sequence item index {bad[0]} out of range 1..{num_items} (0 is padding)")
    rows, cols = [], []
    for offset in range(1, window + 1):
        left, right = items[:-offset], items[offset:]
        keep = (owner[:-offset] == owner[offset:]) & (left != right)
        rows += [left[keep], right[keep]]
        cols += [right[keep], left[keep]]
    row, col = np.concatenate(rows).astype(np.int32), np.concatenate(cols).astype(np.int32)
    shape = (num_items + 1, num_items + 1)
    return sp.coo_matrix((np.ones(row.size, dtype=np.float32), (row, col)), shape=shape).tocsr()


def cooccurrence_embedding(matrix: sp.spmatrix, *, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PPMI + truncated SVD of a co-occurrence matrix: unit rows of U * sqrt(S), and which rows are set.

    Only items with co-occurrence enter the SVD; the others get an all-zero row and
    has_cooc False. ARPACK needs k < number of such items, so with fewer than dim + 1 of them
    the SVD keeps that many components and the remaining columns are zero. An item whose
    co-occurrence lies entirely outside the kept components (its own small island when dim is
    small) has no direction left: its row is zero and has_cooc False too.
    """
    if dim < 1:
        raise ValueError(f"co-occurrence embedding dim must be >= 1, got {dim}")
    counts = sp.csr_matrix(matrix, dtype=np.float32)
    has_cooc = np.asarray(counts.sum(axis=1)).ravel() > 0
    embedding = np.zeros((counts.shape[0], dim), dtype=np.float32)
    present = np.flatnonzero(has_cooc)
    k = min(dim, present.size - 1)
    if k < 1:
        return embedding, np.zeros_like(has_cooc)
    ppmi = _ppmi(counts[present][:, present])
    embedding[present, :k] = _svd_rows(ppmi, k, seed)
    norms = np.linalg.norm(embedding, axis=1)
    has_cooc &= norms > 1e-6 * norms.max()
    embedding[has_cooc] /= norms[has_cooc, None]
    embedding[~has_cooc] = 0.0
    return embedding, has_cooc


def _ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """max(0, log(n_ab * N / (n_a * n_b))) on the nonzeros only."""
    coo = counts.tocoo()
    marginal = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    pmi = np.log(coo.data * marginal.sum() / (marginal[coo.row] * marginal[coo.col]))
    weighted = sp.coo_matrix((np.maximum(pmi, 0.0).astype(np.float32), (coo.row, coo.col)), shape=counts.shape)
    weighted = weighted.tocsr()
    weighted.eliminate_zeros()
    return weighted


def _svd_rows(matrix: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """U * sqrt(S) for the top k singular values, descending, each column's largest entry positive."""
    start = np.random.default_rng(seed).standard_normal(min(matrix.shape)).astype(matrix.dtype)
    u, s, _ = svds(matrix, k=k, v0=start)
    order = np.argsort(-s, kind="stable")
    u, s = u[:, order], s[order]
    peak = u[np.argmax(np.abs(u), axis=0), np.arange(k)]
    return u * np.where(peak < 0, -1.0, 1.0) * np.sqrt(s)


def structure_table(item_ids: list[str], tokens: list[list[int]], embedding: np.ndarray,
                    has_cooc: np.ndarray) -> pa.Table:
    """One row per catalog item; item i is row i + 1 of `embedding` and `has_cooc` (row 0 is padding)."""
    n = len(item_ids)
    if len(tokens) != n or embedding.shape[0] != n + 1 or has_cooc.shape != (n + 1,):
        raise ValueError(f"structure table: {n} items but {len(tokens)} token lists, embedding "
                         f"{embedding.shape} and has_cooc {has_cooc.shape} (expected {n + 1} rows with padding)")
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int32)
    values = np.fromiter((t for item in tokens for t in item), dtype=np.int32, count=int(offsets[-1]))
    return pa.table({
        "item_id": pa.array(item_ids, type=pa.string()),
        "struct_tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        "cooc_emb": matrix_column(np.asarray(embedding[1:], dtype=np.float32)),
        "has_cooc": pa.array(np.asarray(has_cooc[1:], dtype=bool)),
    })
