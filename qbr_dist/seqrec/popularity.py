"""Most-popular baseline: every user gets the catalog ranked by training-part interaction counts."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from qbr_dist.data.split import train_part


def training_counts(sequences: Iterable[np.ndarray], num_items: int) -> torch.Tensor:
    return torch.from_numpy(summed_counts([batch_counts({"items": list(sequences)})], num_items))


def batch_counts(batch: dict) -> dict:
    """Ray Data batch function: the distinct training-part items of the batch's sequences and their counts."""
    parts = [train_part(np.asarray(items, dtype=np.int64)) for items in batch["items"]]
    item, count = np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *parts]), return_counts=True)
    return {"item": item, "count": count}


def summed_counts(batches: Iterable[dict], num_items: int) -> np.ndarray:
    """Training-part count per item (index = item) from `batch_counts` outputs, however re-batched."""
    counts = np.zeros(num_items + 1, dtype=np.float64)
    for batch in batches:
        np.add.at(counts, batch["item"], batch["count"])
    return counts


def popularity_scorer(counts: torch.Tensor):
    """`evaluate_examples` scorer: every user gets the catalog ranked by training counts."""
    return lambda histories: (lambda start, end: counts[start:end].expand(len(histories), -1))
