"""The quantize stage inside Ray Train workers: each rank reads its slice of the item vectors,
the ranks fit the quantizer together (residual k-means, or an RQ-VAE trained by DeepSpeed),
rank 0 saves the codebook file, every rank writes its codes.

Vectors come from parquet files (one fixed-size-list column), read by global row range in
record batches, so a rank holds its slice only.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from qbr_dist import artifacts
from qbr_dist.config import QuantConfig
from qbr_dist.data.tables import column_matrix, matrix_column
from qbr_dist.obs.metrics import TrainMeter
from qbr_dist.quant import CODEBOOKS, STATS
from qbr_dist.quant.codebook import save_codebooks, verify_identical
from qbr_dist.quant.residual import decode, encode_with_stats, reconstruction_error, residual_kmeans
from qbr_dist.quant.rqvae import RQVAE
from qbr_dist.train import collective
from qbr_dist.train import runtime as rt
from qbr_dist.train.engine import init_engine

log = logging.getLogger("qbr.quant")


def rank_codes_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"codes-rank{rank:04d}.parquet"


def row_count(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def read_rows(files: list[Path], column: str, start: int, stop: int) -> tuple[list[str], torch.Tensor]:
    """Rows [start, stop) of the files taken as one table: (item ids, float32 vectors); nulls are refused.
    Only the row groups that hold some of those rows are read, so each rank reads its own share."""
    ids, vectors = [], []
    for path, first, batch in _batches_in_range(files, ["item_id", column], start, stop):
        lo, hi = max(start - first, 0), min(stop - first, batch.num_rows)
        if lo < hi:
            part = batch.slice(lo, hi - lo)
            values = part.column(1)
            if values.null_count:
                raise ValueError(f"{path}: column '{column}' has nulls (items without that feature, listed in the "
                                 "encode stage's quarantine.jsonl); quantize a column every item has "
                                 "(quant.input = 'fused' gives them one)")
            ids += part.column(0).to_pylist()
            vectors.append(column_matrix(values))
    return ids, torch.from_numpy(np.concatenate(vectors)) if vectors else torch.zeros(0, 0)


def _batches_in_range(files: list[Path], columns: list[str], start: int, stop: int):
    """(file, global index of the batch's first row, batch) over the row groups that overlap rows [start, stop)."""
    seen = 0
    for path in files:
        if seen >= stop:
            return
        handle = pq.ParquetFile(path)
        groups, first = [], None
        for group in range(handle.num_row_groups):
            rows = handle.metadata.row_group(group).num_rows
            if seen < stop and seen + rows > start:
                groups.append(group)
                first = seen if first is None else first
            seen += rows
        for batch in handle.iter_batches(row_groups=groups, columns=columns) if groups else ():
            yield path, first, batch
            first += batch.num_rows


@dataclass
class Fitted:
    """What either quantizer mode leaves: the codebook file's tensors and this rank's codes."""
    tensors: dict  # name -> tensor, "codebooks" (L, K, d) among them
    codes: torch.Tensor  # (n_r, L)
    levels: list  # LevelStats per level
    reconstruction_error: float
    metadata: dict = field(default_factory=dict)  # strings kept in the codebook file
    summary: dict = field(default_factory=dict)  # mode-specific statistics


def without_excluded(ids: list[str], local: torch.Tensor, *, items: str, mask: str) -> tuple[list[str], torch.Tensor]:
    """Rows whose item is not marked in `mask` ((items + 1,) bool over the ingest catalog `items`)."""
    catalog = pq.read_table(items, columns=["item_id"]).column("item_id").combine_chunks()
    excluded = catalog.filter(pa.array(np.load(mask)[1:]))
    keep = ~pc.is_in(pa.array(ids, pa.string()), value_set=excluded).to_numpy(zero_copy_only=False)
    return [i for i, k in zip(ids, keep) if k], local[torch.from_numpy(keep)]


def quantize_worker(loop_config: dict) -> None:
    runtime = rt.worker_runtime(loop_config)
    rt.prepare_worker(runtime)
    cfg = QuantConfig(**loop_config["quant"])
    out = Path(loop_config["out_dir"])
    files = [Path(f) for f in loop_config["files"]]
    rank, world = collective.rank(), collective.world_size()
    total = row_count(files)
    ids, local = read_rows(files, cfg.input, *collective.share(total, rank, world))
    if loop_config.get("exclude"):
        ids, local = without_excluded(ids, local, **loop_config["exclude"])
    total = collective.row_offset(len(local))[1]
    fitted = (fit_rqvae if cfg.mode == "rqvae" else fit_rkmeans)(local, cfg, loop_config, runtime)
    fitted.tensors = {name: verify_identical(tensor.detach().float().contiguous(), what=f"{name} at save")
                      for name, tensor in fitted.tensors.items()}
    with artifacts.atomic_path(rank_codes_file(out, rank)) as tmp:
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()),
                                 "codes": matrix_column(np.asarray(fitted.codes, dtype=np.int32))}), tmp)
    if rank == 0:
        version = save_codebooks(out / CODEBOOKS, fitted.tensors, mode=cfg.mode, input=cfg.input, **fitted.metadata)
        levels = [s.as_dict() for s in fitted.levels]
        artifacts.write_json(out / STATS, {
            "codebook_version": version, "mode": cfg.mode, "levels": levels,
            "reconstruction_error": fitted.reconstruction_error, "items": total,
            "dim": int(fitted.tensors["codebooks"].shape[-1]), "workers": world, **fitted.summary,
        })
        log.info("quantize (%s): codebook %s, %s", cfg.mode, version, json.dumps(levels))
    rt.finish_worker()


def fit_rkmeans(local: torch.Tensor, cfg: QuantConfig, loop_config: dict, runtime) -> Fitted:
    """Residual k-means on the vectors themselves."""
    codebooks, codes, stats = residual_kmeans(
        local, levels=cfg.levels, codebook_size=cfg.codebook_size, iterations=cfg.iterations,
        seed=loop_config["seed"], sample_size=cfg.sample_size, chunk_size=cfg.chunk_size,
    )
    return Fitted(tensors={"codebooks": codebooks}, codes=codes, levels=stats,
                  reconstruction_error=reconstruction_error(local, decode(codes, codebooks)))


@dataclass
class RQVAEState:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    reseeded: int = 0  # dead codes re-seeded over all steps
    curve: list = field(default_factory=list)  # per epoch: mean loss and its parts
    resumed_at: list = field(default_factory=list)


def fit_rqvae(local: torch.Tensor, cfg: QuantConfig, loop_config: dict, runtime) -> Fitted:
    """RQ-VAE trained by DeepSpeed on every rank's slice, codebooks from k-means on the first latents."""
    seed, rank, world = loop_config["seed"], collective.rank(), collective.world_size()
    torch.manual_seed(seed)
    model = RQVAE(input_dim=local.shape[1], hidden=cfg.rqvae_hidden, latent_dim=cfg.rqvae_latent_dim,
                  levels=cfg.levels, codebook_size=cfg.codebook_size, commitment=cfg.rqvae_commitment)
    total = collective.row_offset(len(local))[1]
    micro = max(cfg.rqvae_batch_size // world, 1)
    smallest = int(collective.all_gather_rows(torch.tensor([len(local)])).min())  # ranks must step alike
    steps_per_epoch = smallest // micro
    if not steps_per_epoch:
        raise ValueError(f"config key 'quant.rqvae_batch_size': {cfg.rqvae_batch_size} exceeds the {total} items "
                         f"to quantize over {world} workers")
    codebooks, _, stats = residual_kmeans(
        model.latents(local, chunk_size=cfg.chunk_size), levels=cfg.levels, codebook_size=cfg.codebook_size,
        iterations=cfg.iterations, seed=seed, sample_size=cfg.sample_size, chunk_size=cfg.chunk_size)
    model.start_codebooks(codebooks, torch.tensor([s.counts for s in stats]), micro * world / total)
    # Always fp32: a bf16 engine casts every float buffer, the float64 EMA statistics of the codebooks too,
    # and the small RQ-VAE has little to gain from bf16.
    engine = init_engine(model, runtime=replace(runtime, precision="fp32"), micro_batch=micro, lr=cfg.rqvae_lr,
                         weight_decay=0.0)
    restored = rt.restore_checkpoint(engine, loop_config)
    state = RQVAEState(**restored) if restored else RQVAEState()
    if restored:
        state.resumed_at.append(state.step)
    meter = TrainMeter(stage="quantize", rank=rank, run=loop_config["run_name"], epoch=state.epoch)
    while state.epoch < cfg.rqvae_epochs:
        _rqvae_epoch(engine, model, local, state, cfg, runtime, meter, seed=seed, micro=micro,
                     steps_per_epoch=steps_per_epoch)
        state.epoch, state.batch = state.epoch + 1, 0
        meter.epoch.set(state.epoch)
    rt.save_checkpoint(engine, {"step": state.step, "done": True}, asdict(state))
    # The weights are read whole with no forward inside (under ZeRO-3 a forward would partition them again);
    # the codes then come from a plain copy, so no rank's ZeRO-3 gathers wait on another's number of chunks.
    with rt.full_parameters(list(model.parameters())):
        tensors = {name: tensor.detach().cpu().clone() for name, tensor in model.tokenizer_tensors().items()}
    fitted = RQVAE.from_tokenizer_tensors(tensors, model.encoder_dims).to(engine.device).eval()
    with torch.no_grad():
        on_engine = local.to(engine.device)
        latents = fitted.latents(on_engine, chunk_size=cfg.chunk_size)
        codes, levels = encode_with_stats(latents, fitted.codebooks, chunk_size=cfg.chunk_size)
        reconstructed = fitted.reconstruct(decode(codes, fitted.codebooks), chunk_size=cfg.chunk_size)
        error = reconstruction_error(on_engine, reconstructed)
    return Fitted(tensors=tensors, codes=codes.cpu(), levels=levels, reconstruction_error=error,
                  metadata={"encoder_dims": json.dumps(model.encoder_dims)},
                  summary={"curve": state.curve, "reseeded": state.reseeded, "steps": state.step,
                           "resumed_at": state.resumed_at})


def _rqvae_epoch(engine, model: RQVAE, local: torch.Tensor, state: RQVAEState, cfg: QuantConfig, runtime, meter, *,
                 seed: int, micro: int, steps_per_epoch: int) -> None:
    """One pass over this rank's slice in a seeded order, resuming at `state.batch`."""
    order = torch.from_numpy(np.random.default_rng([seed, state.epoch, collective.rank()]).permutation(len(local)))
    totals = torch.zeros(4, dtype=torch.float64)  # loss, reconstruction, commitment, steps
    for index in range(state.batch, steps_per_epoch):
        started = time.perf_counter()
        batch = local[order[index * micro:(index + 1) * micro]].to(engine.device)
        out = engine(batch)
        engine.backward(out["loss"])
        engine.step()
        state.reseeded += model.update_codebooks(out["inputs"], out["codes"], decay=cfg.rqvae_ema_decay,
                                                 dead_fraction=cfg.rqvae_dead_fraction, seed=[seed, state.step])
        state.batch, state.step = index + 1, state.step + 1
        totals += torch.tensor([float(out["loss"]), float(out["reconstruction"]), float(out["commitment"]), 1.0],
                               dtype=torch.float64)
        meter.step(loss=float(out["loss"]), samples=len(batch), seconds=time.perf_counter() - started,
                   lr=cfg.rqvae_lr, grad_norm=engine.get_global_grad_norm())
        if state.step % runtime.checkpoint_every == 0:
            rt.save_checkpoint(engine, {"step": state.step, "loss": float(out["loss"])}, asdict(state), meter)
    loss, reconstruction, commitment, steps = collective.all_reduce_sum_(totals).tolist()
    steps = max(steps, 1)
    state.curve.append({"epoch": state.epoch + 1, "loss": round(loss / steps, 6),
                        "reconstruction": round(reconstruction / steps, 6), "commitment": round(commitment / steps, 6)})
