"""`qbr retokenize`: give every item of a (possibly multi-million-row) feature table its codes.

A Ray Data job streams the table through a pool of actors that each fetch the codebooks once
from the object store and quantize batch by batch, writing `item_id, codes` parquet. A driver
pass then appends the disambiguation suffixes, keeping every suffix of the previous codes file
made with the same codebook (suffixes are only ever appended), and writes `codes.parquet`.
Memory per actor is one batch; the driver holds item ids and code tuples, not vectors.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qbr_dist.data.tables import column_matrix
from qbr_dist.quant import CODES
from qbr_dist.quant.codebook import load_codebooks
from qbr_dist.quant.codes import codes_version, read_codes, write_codes
from qbr_dist.quant.semantic_ids import Previous, assign_suffixes, collision_rate

log = logging.getLogger("qbr.retokenize")


class Retokenizer:
    """Ray Data actor: quantizes batches of one vector column with codebooks from the object store."""

    def __init__(self, codebooks: list, column: str, chunk_size: int):
        import ray
        import torch

        torch.set_num_threads(1)
        self.codebooks = torch.from_numpy(np.array(ray.get(codebooks[0])))  # fetched once per actor
        self.column, self.chunk_size = column, chunk_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from qbr_dist.quant.residual import encode

        values = batch.column(self.column)
        if values.null_count:
            raise ValueError(f"column '{self.column}' has nulls; retokenize needs a vector for every item")
        vectors = column_matrix(values)
        codes = encode(torch.from_numpy(vectors), self.codebooks, chunk_size=self.chunk_size).numpy()
        flat = pa.array(codes.astype(np.int32).ravel())
        return pa.table({"item_id": batch.column("item_id"),
                         "codes": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1])})


def retokenize(files: list[Path], column: str, codebooks_file: Path, out_dir: Path, *, previous: Path | None,
               batch_size: int = 4096, actors: int = 1, cpus_per_actor: float = 0.5, chunk_size: int = 65536) -> dict:
    """Write `out_dir/codes.parquet` for every row of `files`; returns counts and throughput."""
    import ray
    import ray.data

    codebooks, version = load_codebooks(codebooks_file)
    started = time.perf_counter()
    staging = Path(out_dir) / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    reference = ray.put(codebooks.numpy())
    (
        ray.data.read_parquet([str(Path(f).resolve()) for f in files], columns=["item_id", column])
        .map_batches(Retokenizer, fn_constructor_kwargs={"codebooks": [reference], "column": column,
                                                         "chunk_size": chunk_size},
                     batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                     num_cpus=cpus_per_actor)
        .write_parquet(str(staging.resolve()))
    )
    encoded_s = time.perf_counter() - started
    table = pq.read_table(staging)
    item_ids = table.column("item_id").combine_chunks()
    codes = column_matrix(table.column("codes"), np.int64)
    del table
    suffixes = assign_suffixes(item_ids, codes, _previous(previous, version))
    write_codes(Path(out_dir) / CODES, item_ids, codes, suffixes, version)
    shutil.rmtree(staging)
    seconds = time.perf_counter() - started
    return {"items": len(item_ids), "codebook_version": version, "collision_rate": collision_rate(codes),
            "suffix_table_size": int(suffixes.max(initial=-1)) + 1, "encode_seconds": round(encoded_s, 2),
            "seconds": round(seconds, 2), "items_per_s": round(len(item_ids) / max(seconds, 1e-9), 1)}


def _previous(path: Path | None, version: str) -> Previous | None:
    """The earlier assignment to keep suffixes from: only one made with this same codebook."""
    if path is None or not Path(path).is_file() or codes_version(path) != version:
        return None
    table = read_codes(path, expected_version=version)
    full = column_matrix(table.column("codes"), np.int64)
    return Previous(table.column("item_id").combine_chunks(), full[:, :-1], full[:, -1])
