"""Content k-NN baseline: rank every item by the cosine similarity of its text features to the
mean of the user's last `last` items' text features. Needs no training, so it scores cold items
as readily as warm ones: the yardstick for Q-BERT4Rec's cold-start claim."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from qbr_dist.data.tables import column_matrix


def text_matrix(encode_files: list[Path], item_ids: list[str]) -> np.ndarray:
    """(items + 1, d) L2-normalised text features in item-index order; row 0 and items without text are zeros."""
    index = {item_id: i + 1 for i, item_id in enumerate(item_ids)}
    matrix = None
    for path in encode_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["item_id", "text_emb"]):
            rows = np.fromiter((index.get(i, 0) for i in batch.column(0).to_pylist()), np.int64, batch.num_rows)
            values = batch.column(1)
            valid = values.is_valid().to_numpy(zero_copy_only=False) & (rows > 0)
            vectors = column_matrix(values.filter(valid))
            if matrix is None:
                matrix = np.zeros((len(item_ids) + 1, vectors.shape[1]), np.float32)
            matrix[rows[valid]] = vectors
    if matrix is None:
        raise ValueError(f"{encode_files[0] if encode_files else 'encode stage'}: no text features for content-knn")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def content_knn_scorer(text: torch.Tensor, *, last: int = 5):
    """`evaluate_examples` scorer: cosine of each item to the mean of the user's last `last` items."""
    def scorer(histories: list[np.ndarray]):
        queries = torch.stack([text[torch.from_numpy(np.asarray(h[-last:], dtype=np.int64))].mean(0)
                               for h in histories])
        queries = torch.nn.functional.normalize(queries, dim=1)
        return lambda start, end: queries @ text[start:end].T
    return scorer
