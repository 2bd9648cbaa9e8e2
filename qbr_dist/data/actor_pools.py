"""Feeding a Ray Data actor pool (the encoder and retokenize actors)."""
from __future__ import annotations


def batch_blocks(dataset, rows: int):
    """`dataset` in blocks of `rows` rows (one batch), streamed. The pool hands out whole blocks, and one
    block can hold many batches (a small file, a join's single partition, a text-only shard), which one
    actor would then work through while the others wait."""
    return dataset.repartition(target_num_rows_per_block=rows)
