"""The quantize stage inside Ray Train workers: each rank reads its slice of the item vectors,
the ranks fit the residual codebooks together, rank 0 saves them, every rank writes its codes.

Vectors come from parquet files (one fixed-size-list column), read by global row range in
record batches, so a rank holds its slice only.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qbr_dist import artifacts
from qbr_dist.config import QuantConfig
from qbr_dist.data.tables import column_matrix
from qbr_dist.quant import CODEBOOKS, STATS
from qbr_dist.quant.codebook import save_codebooks, verify_identical
from qbr_dist.quant.residual import reconstruction_error, residual_kmeans
from qbr_dist.train import collective
from qbr_dist.train import runtime as rt

log = logging.getLogger("qbr.quant")


def rank_codes_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"codes-rank{rank:04d}.parquet"


def row_count(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def read_rows(files: list[Path], column: str, start: int, stop: int) -> tuple[list[str], torch.Tensor]:
    """Rows [start, stop) of the files taken as one table: (item ids, float32 vectors); nulls are refused."""
    ids, vectors, seen = [], [], 0
    for path in files:
        handle = pq.ParquetFile(path)
        rows = handle.metadata.num_rows
        if seen + rows > start and seen < stop:
            for batch in handle.iter_batches(columns=["item_id", column]):
                lo, hi = max(start - seen, 0), min(stop - seen, batch.num_rows)
                if lo < hi:
                    part = batch.slice(lo, hi - lo)
                    values = part.column(1)
                    if values.null_count:
                        raise ValueError(f"{path}: column '{column}' has nulls (items without that feature); "
                                         "quantize a column every item has")
                    ids += part.column(0).to_pylist()
                    vectors.append(column_matrix(values))
                seen += batch.num_rows
        else:
            seen += rows
    return ids, torch.from_numpy(np.concatenate(vectors)) if vectors else torch.zeros(0, 0)


def quantize_worker(loop_config: dict) -> None:
    runtime = rt.worker_runtime(loop_config)
    rt.prepare_worker(runtime)
    cfg = QuantConfig(**loop_config["quant"])
    out = Path(loop_config["out_dir"])
    files = [Path(f) for f in loop_config["files"]]
    rank, world = collective.rank(), collective.world_size()
    total = row_count(files)
    ids, local = read_rows(files, cfg.input, *collective.share(total, rank, world))
    codebooks, codes, stats = residual_kmeans(
        local, levels=cfg.levels, codebook_size=cfg.codebook_size, iterations=cfg.iterations,
        seed=loop_config["seed"], sample_size=cfg.sample_size, chunk_size=cfg.chunk_size,
    )
    error = reconstruction_error(local, codes, codebooks)
    codebooks = verify_identical(codebooks, what="codebooks at save")
    with artifacts.atomic_path(rank_codes_file(out, rank)) as tmp:
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()),
                                 "codes": pa.array(codes.tolist(), pa.list_(pa.int32()))}), tmp)
    if rank == 0:
        version = save_codebooks(out / CODEBOOKS, codebooks, mode=cfg.mode, input=cfg.input)
        artifacts.write_json(out / STATS, {
            "codebook_version": version, "levels": [s.as_dict() for s in stats],
            "reconstruction_error": error, "items": total, "dim": int(codebooks.shape[-1]), "workers": world,
        })
        log.info("quantize: codebook %s, %s", version, json.dumps([s.as_dict() for s in stats]))
    rt.finish_worker()
