"""Fusion training loop, run by every Ray Train worker, then the fused vector of every item.

Batches are (anchor, neighbour) pairs of items next to each other in training sequences; every
worker streams the same ordered pairs and keeps its slice of each global batch (as the BERT4Rec
loop does), with in-batch negatives on each rank. The loop state in a checkpoint is all a
restart needs. After training each rank writes the fused vectors (and trained ID vectors) of its
contiguous slice of the catalog; items never seen in training take their query from the content
head. Rank 0 exports the model without its ID table, for retokenizing later catalogs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.train
import torch

from qbr_dist import artifacts
from qbr_dist.config import FusionConfig
from qbr_dist.data.split import train_part
from qbr_dist.data.tables import matrix_column
from qbr_dist.fusion import STATS, features
from qbr_dist.fusion.export import ID_VECTOR, MODEL, save_model
from qbr_dist.fusion.loss import fusion_loss
from qbr_dist.fusion.model import MODALITIES, CrossModalFusion
from qbr_dist.obs.metrics import TrainMeter
from qbr_dist.train import collective
from qbr_dist.train import runtime as rt
from qbr_dist.train.engine import init_engine

log = logging.getLogger("qbr.fusion")


def fused_part(folder: Path, rank: int) -> Path:
    return Path(folder) / f"fused-rank{rank:04d}.parquet"


def adjacent_pairs(batch: dict, *, window: int = 1) -> dict:
    """(anchor, neighbour) for items at most `window` apart in each training part (validation and
    test targets excluded); Ray Data map_batches function over the sequences table."""
    anchors, neighbours = [], []
    for items in batch["items"]:
        train = train_part(np.asarray(items, dtype=np.int64))
        for offset in range(1, window + 1):
            anchors.append(train[:-offset])
            neighbours.append(train[offset:])
    empty = np.zeros(0, dtype=np.int64)
    return {"anchor": np.concatenate(anchors) if anchors else empty,
            "neighbour": np.concatenate(neighbours) if neighbours else empty}


def paired_items(sequences, num_items: int) -> np.ndarray:
    """(num_items + 1,) bool by item: those some training pair holds, the only items whose ID vector fusion
    trains (an item alone in its user's training part is in none)."""
    paired = np.zeros(num_items + 1, dtype=bool)
    for sequence in sequences:
        pairs = adjacent_pairs({"items": [sequence]})
        paired[pairs["anchor"]] = paired[pairs["neighbour"]] = True
    return paired


@dataclass
class FusionState:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    curve: list = field(default_factory=list)  # per epoch: mean loss and its parts
    resumed_at: list = field(default_factory=list)
    done: bool = False
    epoch_sums: dict = field(default_factory=dict)  # this epoch's loss sums and steps up to the last checkpoint


def model_arguments(cfg: FusionConfig, arrays: dict, vocab_size: int) -> dict:
    """CrossModalFusion's arguments besides the item count (kept with the exported model)."""
    return {"input_dims": {name: int(arrays[name].shape[1]) for name in ("text", "image", "cooc")},
            "vocab_size": vocab_size, "dim": cfg.dim, "layers": cfg.layers, "temperature": cfg.temperature,
            "gate_threshold": cfg.gate_threshold, "dropout": cfg.dropout}


def build_model(cfg: FusionConfig, arrays: dict, num_items: int, vocab_size: int) -> CrossModalFusion:
    return CrossModalFusion(num_items=num_items, **model_arguments(cfg, arrays, vocab_size))


def tensors(arrays: dict, items: torch.Tensor) -> dict[str, torch.Tensor]:
    rows = features.batch_features(arrays, items.numpy())
    out = {name: torch.from_numpy(rows[name]) for name in ("text", "image", "cooc")}
    out |= {f"{name}_present": torch.from_numpy(rows[f"{name}_present"]) for name in ("text", "image", "cooc")}
    out["tokens"] = torch.from_numpy(rows["tokens"]).long()
    return out


def fusion_worker(loop_config: dict) -> None:
    runtime = rt.worker_runtime(loop_config)
    rt.prepare_worker(runtime)
    cfg = FusionConfig(**loop_config["fusion"])
    seed, num_items = loop_config["seed"], loop_config["num_items"]
    rank, world = collective.rank(), collective.world_size()
    arrays = features.load(Path(loop_config["features_dir"]))
    torch.manual_seed(seed)
    model = build_model(cfg, arrays, num_items, loop_config["vocab_size"])
    engine = init_engine(model, runtime=runtime, micro_batch=max(cfg.batch_size // world, 1), lr=cfg.lr,
                         weight_decay=cfg.weight_decay)
    restored = rt.restore_checkpoint(engine, loop_config)
    state = FusionState(**restored) if restored else FusionState()
    if restored:
        state.resumed_at.append(state.step)
        log.info("fusion resumed from the checkpoint at step %d (epoch %d, batch %d)", state.step, state.epoch,
                 state.batch)
    meter = TrainMeter(stage="fusion", rank=rank, run=loop_config["run_name"], epoch=state.epoch)
    pairs = ray.train.get_dataset_shard("pairs")
    while state.epoch < cfg.epochs and not state.done:
        _train_epoch(engine, arrays, pairs, state, cfg, runtime, meter, seed=seed, rank=rank, world=world,
                     steps_per_epoch=loop_config["steps_per_epoch"])
        state.epoch, state.batch = state.epoch + 1, 0
        meter.epoch.set(state.epoch)
    out = Path(loop_config["out_dir"])
    stats = write_fused(model, arrays, loop_config, out, rank=rank, world=world, device=engine.device)
    state.done = True
    if rank == 0:
        artifacts.write_json(out / STATS, stats | {"curve": state.curve, "resumed_at": state.resumed_at,
                                                   "steps": state.step})
    rt.save_checkpoint(engine, {"done": True, "step": state.step}, asdict(state))
    rt.finish_worker()


def _train_epoch(engine, arrays, pairs, state: FusionState, cfg: FusionConfig, runtime, meter, *, seed: int,
                 rank: int, world: int, steps_per_epoch: int) -> None:
    batches = pairs.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, dtypes=torch.long,
                                       local_shuffle_buffer_size=cfg.shuffle_buffer,
                                       local_shuffle_seed=seed * 1_000_003 + state.epoch)
    sums: dict[str, float] = {}  # since the last checkpoint, this rank's
    for index, batch in enumerate(batches):
        if index < state.batch:
            continue  # resumed mid-epoch: trained before the checkpoint
        started = time.perf_counter()
        lr = rt.scheduled_lr(cfg.lr, state.epoch * steps_per_epoch + index, total_steps=cfg.epochs * steps_per_epoch,
                             warmup_steps=cfg.warmup_steps, schedule="linear")
        rt.set_lr(engine, lr)
        anchors, neighbours = (rt.my_slice(batch[name], rank, world) for name in ("anchor", "neighbour"))
        items = torch.cat([anchors, neighbours])
        torch.manual_seed(rt.stream_seed(seed, state.epoch, index, rank))  # dropout
        inputs = rt.on_device(tensors(arrays, items), engine.device, rt.parameter_dtype(engine.module))
        out = engine(items.to(engine.device), inputs)
        half = len(anchors)
        anchor = {k: v[:half] for k, v in out.items() if k in ("fused", "views", "present", "id", "predicted_id")}
        neighbour = {"fused": out["fused"][half:]}
        loss, parts = fusion_loss(anchor, neighbour, temperature=cfg.contrastive_temperature,
                                  id_weight=cfg.id_loss_weight)
        engine.backward(loss)
        engine.step()
        state.batch, state.step, loss_value = index + 1, state.step + 1, loss.item()
        for name, value in {"loss": loss_value, **parts, "steps": 1}.items():
            sums[name] = sums.get(name, 0.0) + value
        meter.step(loss=loss_value, samples=len(anchors), seconds=time.perf_counter() - started, lr=lr,
                   grad_norm=engine.get_global_grad_norm())
        if state.step % runtime.checkpoint_every == 0:
            state.epoch_sums, sums = rt.carry_epoch_sums(state.epoch_sums, sums), {}
            rt.save_checkpoint(engine, {"step": state.step, "loss": loss_value, "done": False}, asdict(state),
                               meter)
    totals, state.epoch_sums = rt.carry_epoch_sums(state.epoch_sums, sums), {}
    steps = totals.pop("steps", 0)
    means = {name: round(value / max(steps, 1), 5) for name, value in totals.items()}
    state.curve.append({"epoch": state.epoch + 1, **means})
    if rank == 0:
        log.info("fusion epoch %d: %s", state.epoch + 1, means)


@torch.no_grad()
def write_fused(model: CrossModalFusion, arrays: dict, loop_config: dict, out: Path, *, rank: int, world: int,
                device: torch.device) -> dict:
    """This rank's slice of the catalog through the fusion model; returns the global statistics."""
    cfg = FusionConfig(**loop_config["fusion"])
    num_items = loop_config["num_items"]
    seen = np.load(loop_config["seen_file"])
    item_ids = pq.read_table(loop_config["items_file"], columns=["item_id"]).column("item_id")
    start, stop = collective.share(num_items, rank, world)
    first, last = 1 + start, 1 + stop  # item indices start at 1
    passes = collective.share(num_items, 0, world)[1]  # rank 0's share is the largest: every rank runs as many
    layers, modalities = cfg.layers, len(MODALITIES)
    weight_sums = torch.zeros(layers, modalities, dtype=torch.float64)
    present_counts = torch.zeros(modalities, dtype=torch.float64)
    gate_sums, depth_counts = torch.zeros(layers, dtype=torch.float64), torch.zeros(layers + 1, dtype=torch.float64)
    fused, depths = [], []
    model.eval()
    # Forwards outside the gathered block: under ZeRO-3 the module hooks gather and release each layer's
    # parameters themselves, and a forward inside GatheredParameters would leave them partitioned after it.
    for offset in range(0, passes, cfg.infer_batch):
        items = torch.arange(first + offset, min(first + offset + cfg.infer_batch, last), dtype=torch.long)
        placeholder = not len(items)
        if placeholder:  # this rank's slice is done: still take part, with one item, and count nothing
            items = torch.ones(1, dtype=torch.long)
        use_id = torch.from_numpy(seen[items.numpy()]).to(device)
        inputs = rt.on_device(tensors(arrays, items), device, rt.parameter_dtype(model))
        result = rt.on_device(model(items.to(device), inputs, use_id=use_id), torch.device("cpu"))
        if placeholder:
            continue
        present = result["present"].double()
        weight_sums += (result["weights"].double() * present.unsqueeze(1)).sum(0)
        present_counts += present.sum(0)
        gate_sums += result["gates"].double().sum(0)
        depth_counts += torch.bincount(result["depth"], minlength=layers + 1).double()
        fused.append(result["fused"].float().numpy())
        depths.append(result["depth"].numpy())
    with rt.full_parameters(list(model.parameters())):  # read and saved whole, with no forward inside
        id_vectors = model.id_embedding.weight[first:last].detach().float().cpu().numpy().copy()
        if rank == 0:
            save_model(out / MODEL, model, arguments=model_arguments(cfg, arrays, loop_config["vocab_size"]),
                       max_tokens=cfg.max_tokens)
    vectors = np.concatenate(fused) if fused else np.zeros((0, cfg.dim), np.float32)
    table = pa.table({
        "item_id": item_ids.slice(first - 1, max(last - first, 0)),
        "fused": matrix_column(vectors),
        "depth": pa.array(np.concatenate(depths) if depths else np.zeros(0, np.int64), pa.int8()),
        "cold": pa.array(~seen[first:last]),
        ID_VECTOR: matrix_column(id_vectors, valid=seen[first:last]),
    })
    with artifacts.atomic_path(fused_part(out, rank)) as tmp:
        pq.write_table(table, tmp)
    for tensor in (weight_sums, present_counts, gate_sums, depth_counts):
        collective.all_reduce_sum_(tensor)
    items = float(depth_counts.sum())
    return {
        "modality_weights": [{name: round(float(weight_sums[layer, m] / present_counts[m].clamp_min(1)), 4)
                              for m, name in enumerate(MODALITIES)} for layer in range(layers)],
        "modality_presence": {name: int(present_counts[m]) for m, name in enumerate(MODALITIES)},
        "mean_gate": [round(float(g / max(items, 1)), 4) for g in gate_sums],
        "mean_depth": round(float((depth_counts * torch.arange(layers + 1)).sum() / max(items, 1)), 4),
        "depth_histogram": [int(c) for c in depth_counts], "items": int(items),
        "cold_items": int((~seen[1:]).sum()),
    }
