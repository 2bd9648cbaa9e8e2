"""BERT4Rec training loop, run by every Ray Train worker: pretrain with masked items (per sequence a
strategy drawn from train.mask_weights; BERT4Rec's random masking by default), then fine-tune with the
last item masked; validation NDCG@10 selects the model.

The best point so far is kept as a DeepSpeed checkpoint: fine-tuning starts from the best pretraining
state (not from the epochs that early stopping waited through), and the run ends on the best state of
both phases, so the final checkpoint, and the weights exported from it, are the model that was selected.

Masks, sampled negatives and dropout are seeded from (seed, phase, epoch, batch), and the data order from
(seed, phase, epoch), so the loop state in a checkpoint is all a restart needs to continue exactly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import ray.train
import torch

from qbr_dist.config import EvalConfig, TrainConfig
from qbr_dist.data.split import EVALUATIONS
from qbr_dist.obs.metrics import TrainMeter
from qbr_dist.quant.codebook import CodebookMismatch
from qbr_dist.seqrec.bert4rec import BERT4Rec
from qbr_dist.seqrec.masking import (STRATEGIES, last_item_mask, mix_per_sequence, mixed_mask, multi_region_mask,
                                     random_item_mask, span_mask, tail_mask)
from qbr_dist.seqrec.metrics import METRIC_NAMES, metric_means, metric_sums, target_ranks
from qbr_dist.seqrec.sampled_softmax import NegativeSampler
from qbr_dist.seqrec.trained import build_model
from qbr_dist.train import runtime as rt
from qbr_dist.train.engine import init_engine

log = logging.getLogger("qbr.bert4rec")

# Raised whenever a change to this loop changes what a run with the same settings trains; the training stages'
# keys carry it, so their finished results from an older loop are not reused. 2: fine-tune from the best state.
LOOP_VERSION = 2


@dataclass(frozen=True)
class Phase:
    """Pretraining or fine-tuning; each reads the Ray dataset of its own name."""

    name: str
    epochs: int
    lr: float
    eval_every: int


def phases(cfg: TrainConfig) -> tuple[Phase, Phase]:
    return (
        Phase("pretrain", cfg.pretrain_epochs, cfg.lr, cfg.eval_every),
        Phase("finetune", cfg.finetune_epochs, cfg.finetune_lr, cfg.finetune_eval_every),
    )


@dataclass
class LoopState:
    phase: int = 0
    epoch: int = 0  # epochs finished in the current phase
    batch: int = 0  # batches finished in the current epoch
    step: int = 0  # optimizer steps over the whole run
    epochs: int = 0  # epochs over the whole run
    bad_evals: int = 0
    best: dict = field(default_factory=lambda: {"valid": {"NDCG@10": -1.0}})
    curve: list = field(default_factory=list)
    done: bool = False
    resumed_at: list = field(default_factory=list)  # steps of the checkpoints this run restarted from
    codebook_version: str | None = None  # semantic IDs the model was trained on (None: item IDs)
    mask_counts: list = field(default_factory=lambda: [0] * len(STRATEGIES))  # pretraining sequences per strategy
    train_loss: float | None = None  # mean loss per masked position over the latest epoch
    epoch_sums: dict = field(default_factory=dict)  # this epoch's loss and masked positions up to the last checkpoint
    train_s: float = 0.0  # seconds of training steps, streaming their batches included; evaluation, checkpoints out
    train_sequences: int = 0  # sequences trained over all ranks (global batches x batch size)


def bert4rec_worker(loop_config: dict) -> None:
    runtime = rt.worker_runtime(loop_config)
    rt.prepare_worker(runtime)
    train_cfg = TrainConfig(**loop_config["train"])
    eval_cfg = EvalConfig(**loop_config["eval"])
    seed = loop_config["seed"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    torch.manual_seed(seed)
    model = build_model(loop_config)
    engine = init_engine(model, runtime=runtime, micro_batch=train_cfg.batch_size // world,
                         lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    if runtime.zero_stage == 3:
        import deepspeed

        for param in model.token_parameters():
            deepspeed.zero.register_external_parameter(model, param)
    restored = rt.restore_checkpoint(engine, loop_config)
    state = LoopState(**restored) if restored else LoopState(codebook_version=loop_config.get("codebook_version"))
    if state.codebook_version != loop_config.get("codebook_version"):
        raise CodebookMismatch(f"checkpoint trained with codebook {state.codebook_version}, but the codes in use "
                               f"are version {loop_config.get('codebook_version')}")
    if restored:
        state.resumed_at.append(state.step)
        log.info("%s resumed from the checkpoint at step %d (phase %d, epoch %d, batch %d)",
                 loop_config["stage"], state.step, state.phase, state.epoch, state.batch)
    meter = TrainMeter(stage=loop_config["stage"], rank=rank, run=loop_config["run_name"], epoch=state.epoch)
    shards = {name: ray.train.get_dataset_shard(name) for name in ("pretrain", "finetune", *loop_config["evaluations"])}
    sampler = _sampler(loop_config, train_cfg, engine.device, excluded=model.excluded)

    eval_batches: dict[str, list] = {}

    def evaluate(split: str) -> dict:
        if split not in eval_batches:
            eval_batches[split] = _rank_eval_batches(shards[split], eval_cfg, rank=rank, world=world)
        return _evaluate(model, eval_batches[split], eval_cfg, device=engine.device)

    plan = phases(train_cfg)
    while state.phase < len(plan) and not state.done:
        phase = plan[state.phase]
        while state.epoch < phase.epochs and state.bad_evals < train_cfg.patience:
            _train_epoch(engine, model, shards[phase.name], state, train_cfg, runtime, meter, phase=phase, seed=seed,
                         rank=rank, world=world, steps_per_epoch=loop_config["steps_per_epoch"][phase.name],
                         sampler=sampler, loop_config=loop_config)
            state.epoch, state.epochs = state.epoch + 1, state.epochs + 1
            meter.epoch.set(state.epoch)
            if state.epoch % phase.eval_every == 0 or state.epoch == phase.epochs:
                _select(state, evaluate, phase.name, meter, tests=loop_config["evaluations"][1:], rank=rank,
                        stage=loop_config["stage"])
                if state.bad_evals == 0:
                    state.best |= {"tag": rt.save_best(engine, loop_config, state.step),
                                   "params_sha256": rt.parameter_digest(engine.module)}
        if state.best.get("tag"):
            rt.load_best(engine, loop_config, state.best["tag"])
        state.phase, state.epoch, state.batch, state.bad_evals = state.phase + 1, 0, 0, 0
    state.done = True
    rt.save_checkpoint(engine, _report_metrics(state), asdict(state))
    rt.prune_best(loop_config, keep=None)
    rt.finish_worker()


def _sampler(loop_config: dict, cfg: TrainConfig, device: torch.device,
             excluded: torch.Tensor) -> NegativeSampler | None:
    """Sampled softmax when the driver sent item counts (a catalog past `train.sampled_softmax_above`), else None;
    it never draws the items the model keeps out of training."""
    if "counts_file" not in loop_config:
        return None
    import numpy as np

    return NegativeSampler(torch.from_numpy(np.load(loop_config["counts_file"])), cfg.negatives, device,
                           excluded=excluded)


def _negatives(sampler: NegativeSampler | None, stream: tuple) -> dict:
    """This step's sampled-softmax inputs of the model, drawn alike on every rank; none for the full softmax."""
    if sampler is None:
        return {}
    generator = torch.Generator().manual_seed(rt.stream_seed(*stream, 104_729))
    return {"negatives": sampler.draw(generator), "log_kq": sampler.log_kq}


def _train_epoch(engine, model, shard, state: LoopState, cfg: TrainConfig, runtime, meter, *, phase: Phase,
                 seed: int, rank: int, world: int, steps_per_epoch: int, sampler: NegativeSampler | None,
                 loop_config: dict) -> None:
    batches = shard.iter_torch_batches(
        batch_size=cfg.batch_size, drop_last=True, dtypes=torch.long,
        local_shuffle_buffer_size=cfg.shuffle_buffer,
        local_shuffle_seed=(seed * 1_000 + state.phase) * 100_003 + state.epoch,
    )
    epoch_started, sums, steps = time.perf_counter(), {}, 0
    since = epoch_started  # end of the previous step: a step's time includes streaming its batch
    for index, batch in enumerate(batches):
        if index < state.batch:
            since = time.perf_counter()
            continue  # resumed mid-epoch: these batches were trained before the checkpoint
        started = time.perf_counter()
        lr = learning_rate(cfg, phase, state.epoch * steps_per_epoch + index, steps_per_epoch)
        rt.set_lr(engine, lr)
        stream = (seed, state.phase, state.epoch, index)
        generator = torch.Generator().manual_seed(rt.stream_seed(*stream))
        seq = batch["seq"]
        choices = torch.Generator().manual_seed(rt.stream_seed(*stream, 7919))  # its own stream: adding
        inputs, labels, chosen = _mask(seq, phase.name, cfg, model.mask_token, generator, choices)  # strategies
        if chosen is not None:  # leaves the random masks of the default mixture unchanged
            state.mask_counts = [c + int((chosen == i).sum()) for i, c in enumerate(state.mask_counts)]
        targets = int((labels > 0).sum())
        torch.manual_seed(rt.stream_seed(*stream, rank))  # dropout
        mine = rt.on_device(rt.my_slice(labels, rank, world), engine.device)
        loss_sum = engine(rt.on_device(rt.my_slice(inputs, rank, world), engine.device), mine,
                          **rt.on_device(_negatives(sampler, stream), engine.device))
        # DeepSpeed averages gradients over ranks: scale so the result is the mean over the global batch.
        engine.backward(loss_sum * world / max(targets, 1))
        engine.step()
        masked, loss_value = int((mine > 0).sum()), loss_sum.item()
        sums = {"loss": sums.get("loss", 0.0) + loss_value, "masked": sums.get("masked", 0) + masked}
        step_loss = loss_value / max(masked, 1)
        state.batch, state.step = index + 1, state.step + 1
        state.train_s, state.train_sequences = state.train_s + time.perf_counter() - since, \
            state.train_sequences + len(seq)
        meter.step(loss=step_loss, samples=len(seq) // world, seconds=time.perf_counter() - started,
                   lr=lr, grad_norm=engine.get_global_grad_norm())
        if state.step % runtime.checkpoint_every == 0:
            state.epoch_sums, sums = rt.carry_epoch_sums(state.epoch_sums, sums), {}
            _checkpoint(engine, state, meter, phase.name, step_loss, loop_config)
        steps, since = steps + 1, time.perf_counter()  # checkpoint time left out
    totals, state.batch, state.epoch_sums = rt.carry_epoch_sums(state.epoch_sums, sums), 0, {}
    if totals.get("masked"):
        state.train_loss = totals["loss"] / totals["masked"]
    if rank == 0 and steps:
        seconds = time.perf_counter() - epoch_started
        log.info("%s %s epoch %d: %d steps, loss %.4f, %.0f sequences/s", loop_config["stage"], phase.name,
                 state.epoch + 1, steps, state.train_loss, steps * cfg.batch_size / seconds)


def learning_rate(cfg: TrainConfig, phase: Phase, phase_step: int, steps_per_epoch: int) -> float:
    return rt.scheduled_lr(phase.lr, phase_step, total_steps=phase.epochs * steps_per_epoch,
                           warmup_steps=cfg.warmup_steps, schedule=cfg.lr_schedule)


def _mask(seq: torch.Tensor, phase: str, cfg: TrainConfig, mask_token: int, generator: torch.Generator,
          choices: torch.Generator):
    """Fine-tuning masks the last item. Pretraining draws a strategy per sequence from
    `train.mask_weights`; "random" is BERT4Rec's: random items, and the last item only in a
    `pretrain_last_item_prob` share of sequences. Returns (inputs, labels, strategy per sequence or None)."""
    last = last_item_mask(seq, mask_token=mask_token)
    if phase == "finetune":
        return (*last, None)

    def bert4rec_random():
        random = random_item_mask(seq, ratio=cfg.mask_ratio, mask_token=mask_token, generator=generator)
        use_last = torch.rand(len(seq), generator=generator) < cfg.pretrain_last_item_prob
        return mix_per_sequence(random, last, use_last)

    makers = {
        "random": bert4rec_random,
        "span": lambda: span_mask(seq, mean_span=cfg.mask_mean_span, mask_token=mask_token, generator=choices),
        "tail": lambda: tail_mask(seq, k=cfg.mask_tail, mask_token=mask_token),
        "multi_region": lambda: multi_region_mask(seq, regions=cfg.mask_regions, mean_span=cfg.mask_mean_span,
                                                  mask_token=mask_token, generator=choices),
    }
    return mixed_mask(seq, weights=dict(zip(STRATEGIES, cfg.mask_weights)), makers=makers, generator=choices)


def _checkpoint(engine, state: LoopState, meter, phase: str, loss: float, loop_config: dict) -> None:
    rt.save_checkpoint(engine, {"phase": phase, "step": state.step, "loss": loss, "done": False}, asdict(state),
                       meter)
    rt.prune_best(loop_config, keep=state.best.get("tag"))  # a restart resumes from here: older bests are unused


def _select(state: LoopState, evaluate, phase: str, meter, *, tests: list[str], rank: int, stage: str) -> None:
    """Validation decides: a new best also records the test metrics (warm, and cold) of these same weights."""
    valid = evaluate("valid")
    meter.validated(valid["NDCG@10"])
    if rank == 0:  # every rank holds the same all-reduced metrics; a stage's lines can reach the driver late
        log.info("%s %s epoch %d step %d: valid NDCG@10 %.4f HR@10 %.4f", stage, phase, state.epoch, state.step,
                 valid["NDCG@10"], valid["HR@10"])
    state.curve.append({"phase": phase, "epoch": state.epoch, "step": state.step, "valid_NDCG@10": valid["NDCG@10"],
                        "train_loss": state.train_loss})
    if valid["NDCG@10"] > state.best["valid"]["NDCG@10"]:
        state.best = {"valid": valid, **{test: evaluate(test) for test in tests}, "phase": phase,
                      "epoch": state.epoch, "step": state.step}
        state.bad_evals = 0
    else:
        state.bad_evals += 1


def _rank_eval_batches(shard, cfg: EvalConfig, *, rank: int, world: int) -> list[dict]:
    """This rank's share of an evaluation split, streamed once and then kept in memory.

    Every rank keeps one entry per global batch, empty or not, so all ranks make the same number
    of forward passes (ZeRO-3 gathers parameters collectively inside them).
    """
    return [
        {name: rt.my_slice(column, rank, world) for name, column in batch.items()}
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, dtypes=torch.long)
    ]


@torch.no_grad()
def _evaluate(model: BERT4Rec, batches: list[dict], cfg: EvalConfig, *, device: torch.device) -> dict:
    """Full-ranking metrics over every rank's users (sums all-reduced, then averaged)."""
    model.eval()
    names = METRIC_NAMES
    totals = dict.fromkeys(names, 0.0)
    users = 0
    for batch in batches:
        seq, target, history = batch["seq"], batch["target"], batch.get("history")
        placeholder = len(seq) == 0
        if placeholder:  # no users left for this rank: still take part, score one dummy row, count nothing
            seq, target, history = torch.full((1, seq.shape[1]), model.mask_token), torch.ones(1).long(), None
        seq, target = rt.on_device(seq, device), rt.on_device(target, device)
        history = None if history is None else rt.on_device(history, device)
        hidden = model.encode(seq)[:, -1]  # under ZeRO-3 the forward hooks gather what it needs
        with rt.full_parameters(model.token_parameters()):
            ranks = target_ranks(
                lambda start, end: model.score_items(hidden, start, end), target,
                first_item=1, end_item=model.num_items + 1, chunk_size=cfg.chunk_size, history=history,
            )
        if not placeholder:
            for name, value in metric_sums(ranks).items():
                totals[name] += value
            users += len(ranks)
    model.train()
    summed = rt.all_reduce_sum([totals[n] for n in names] + [users])
    return metric_means(dict(zip(names, summed[:-1])), int(summed[-1]))


def _report_metrics(state: LoopState) -> dict:
    best = state.best
    total = max(sum(state.mask_counts), 1)
    mixture = {name: round(count / total, 4) for name, count in zip(STRATEGIES, state.mask_counts) if count}
    return {"done": True, "step": state.step, "epochs": state.epochs, "resumed_at": state.resumed_at,
            "train_s": state.train_s, "train_sequences": state.train_sequences,
            "mask_mixture": mixture,
            "best_phase": best.get("phase"), "best_epoch": best.get("epoch"),
            "best_params_sha256": best.get("params_sha256"), "curve": state.curve,
            **{f"{evaluation}/{k}": v for evaluation in EVALUATIONS for k, v in best.get(evaluation, {}).items()}}
