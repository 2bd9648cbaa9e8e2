"""Run a training function in Ray Train workers, each with a DeepSpeed ZeRO engine.

Driver side: `start_ray` (embedded one-node Ray, or the cluster named by RAY_ADDRESS) and `fit`
(TorchTrainer with scaling, failure and checkpoint settings from RuntimeConfig).
Worker side: `engine.init_engine`, `save_checkpoint`, `restore_checkpoint`, `all_reduce_sum`.

Every worker streams the same ordered datasets (nothing is split by Ray Data) and keeps its
own slice of each global batch: data order is then fixed by the seed alone, so a run is
reproducible across worker counts and resumes mid-epoch exactly.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import ray.data
import torch

from qbr_dist.config import RuntimeConfig
from qbr_dist.obs.serve import Endpoint, retire, serve, unregister
from qbr_dist.train import INTERRUPTED, SIGTERM_RECEIVED, collective

log = logging.getLogger("qbr.train")

CHECKPOINT_TAG = "state"
CHECKPOINT_ROOT = "checkpoint_root"  # loop-config key: the only folder this run's workers restore from


class ForeignCheckpoint(RuntimeError):
    """A checkpoint outside the run's own folder: DeepSpeed unpickles checkpoints, so they are never followed."""


EMBEDDED_RAY_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",
    # Ray Data's parquet reader starts a pool of footer-reader actors (32 by default) for every read: on one
    # machine, 32 processes to read a few footers (retokenization's joins 1.5x slower; bench/parquet_reads.py).
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
}


def use_embedded_environment() -> None:
    """Settings for a Ray this process starts (its workers inherit its environment); a value already set wins."""
    for name, value in EMBEDDED_RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def start_ray(runtime: RuntimeConfig) -> None:
    """Connect to the cluster in RAY_ADDRESS (as `ray.init` reads it), else start an embedded one."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Per-operator progress bars of every worker's stream drown the log; the loop logs its own progress.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        use_embedded_environment()
        ray.init(
            num_cpus=runtime.ray_num_cpus or os.cpu_count(),
            object_store_memory=runtime.object_store_mb * 1024**2,
            include_dashboard=runtime.dashboard,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
        )
    quiet_ray_info_on_console()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame) -> None:
    """Set once Ray runs, whose core worker otherwise answers SIGTERM with a stack dump and an abort."""
    SIGTERM_RECEIVED.set()
    INTERRUPTED.set()
    raise KeyboardInterrupt


@dataclass
class TrainJob:
    name: str  # Ray Train run name: rerunning the same name in the same storage resumes it
    storage_path: Path
    loop: Callable[[dict], None]
    loop_config: dict
    datasets: dict
    metrics: Endpoint | None = None  # where the workers serve and register their metrics


class RayInfoFilter(logging.Filter):
    """Drops the INFO records of Ray's own code from a console: Ray Train's line per report and per checkpoint and
    Ray Data's three per dataset run (the driver's evaluation inputs, each worker's shards; a worker's console reaches
    the driver's) bury the stages' own; warnings and errors pass, and Ray's session log files keep everything."""

    package = str(Path(ray.__file__).parent) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.package)


def quiet_ray_info_on_console() -> None:
    """`RayInfoFilter` on the console handlers this process's loggers write through (Ray names some of its loggers by
    file path, so a level set on the `ray` logger would miss them)."""
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    for handler in {handler for logger in loggers if isinstance(logger, logging.Logger) for handler in logger.handlers}:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, RayInfoFilter) for f in handler.filters):
            handler.addFilter(RayInfoFilter())


def fit(job: TrainJob, runtime: RuntimeConfig):
    """Run `job.loop` on `runtime.num_workers` workers; returns Ray Train's Result. Each worker
    serves its metrics meanwhile; their registrations are retired when the run returns."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": runtime.cpus_per_worker}
    if runtime.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _serving(job.loop, job.metrics),
        train_loop_config={**job.loop_config, "runtime": runtime.__dict__,
                           CHECKPOINT_ROOT: str(Path(job.storage_path).resolve() / job.name)},
        scaling_config=ScalingConfig(
            num_workers=runtime.num_workers, use_gpu=runtime.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=job.name,
            storage_path=str(Path(job.storage_path).resolve()),
            failure_config=FailureConfig(max_failures=runtime.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=runtime.keep_checkpoints),
        ),
        datasets=job.datasets,
        dataset_config=DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)
        ),
    )
    remove_untracked_checkpoints(Path(job.storage_path) / job.name)
    try:
        with ctrl_c_as_keyboard_interrupt():
            return trainer.fit()
    finally:
        retire(job.metrics, "train-worker")


def remove_untracked_checkpoints(run_folder: Path) -> list[str]:
    """Remove the checkpoint folders Ray Train's snapshot does not list: written by a run stopped before Ray
    recorded them (Ctrl-C, a kill), never resumed from, and outside `keep_checkpoints`, so each stop would
    otherwise leave a model-sized folder for good. A snapshot of another layout leaves everything in place."""
    import shutil

    tracked = recorded_checkpoints(run_folder)
    if tracked is None:
        return []
    untracked = sorted(path.name for path in run_folder.glob("checkpoint_*")
                       if path.is_dir() and path.name not in tracked)
    for name in untracked:
        shutil.rmtree(run_folder / name)
    if untracked:
        log.info("%s: removed %d checkpoint(s) Ray Train never recorded: %s", run_folder, len(untracked),
                 ", ".join(untracked))
    return untracked


def recorded_checkpoints(run_folder: Path) -> set[str] | None:
    """The checkpoint folders Ray Train's snapshot of a training run lists; None without a snapshot this reads."""
    try:
        results = json.loads((run_folder / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
        return {result["checkpoint_dir_name"] for result in results}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def ctrl_c_as_keyboard_interrupt():
    """Ray Train's fit() answers Ctrl-C by aborting the run, then returning or calling sys.exit (whose code reaches
    here as 1 when Ray's core worker passes it on), and leaves its handler installed; here a Ctrl-C during the block
    ends as a KeyboardInterrupt, as everywhere else in a stage, and later ones reach Python again. Whether one came
    is read from the wakeup descriptor, to which Python writes every handled signal's number, whoever handles it."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    reader.setblocking(False)
    earlier_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield
    except SystemExit:
        if signal.SIGINT in _signals(reader, earlier_fd):
            raise KeyboardInterrupt from None
        raise
    else:
        if signal.SIGINT in _signals(reader, earlier_fd):
            raise KeyboardInterrupt
    finally:
        signal.set_wakeup_fd(earlier_fd)
        reader.close()
        writer.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _signals(reader: socket.socket, earlier_fd: int) -> bytes:
    """The signal numbers the wakeup descriptor took during the block, passed on to the one set before it, if any."""
    seen = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := reader.recv(4096):
            seen += chunk
    if seen and earlier_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(earlier_fd, seen)
    return seen


def _serving(loop: Callable[[dict], None], metrics: Endpoint | None) -> Callable[[dict], None]:
    """`loop`, run while the worker serves /metrics and is registered for discovery."""
    def serving_loop(loop_config: dict) -> None:
        serve(metrics, process="train-worker")
        try:
            loop(loop_config)
        finally:
            unregister()

    return serving_loop


# ---------------------------------------------------------------- worker side


def worker_runtime(loop_config: dict) -> RuntimeConfig:
    return RuntimeConfig(**loop_config["runtime"])


def prepare_worker(runtime: RuntimeConfig) -> None:
    """Thread count, console and DeepSpeed accelerator; must run before DeepSpeed is imported."""
    torch.set_num_threads(runtime.threads_per_worker)
    quiet_ray_info_on_console()
    # DeepSpeed's ZeRO-2 gathers with a collective this torch marks deprecated: one FutureWarning per step
    # and rank (hundreds a run) that says nothing a user can act on.
    warnings.filterwarnings("ignore", message="`torch.distributed.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)
    if not runtime.use_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"


def scheduled_lr(base_lr: float, step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then constant or linear decay to 0 at `total_steps`.

    A pure function of the step: a resumed run needs no scheduler state to continue exactly.
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "constant":
        return base_lr * warm
    return base_lr * warm * max(0.0, 1.0 - step / max(total_steps, 1))


def on_device(value, device: torch.device, dtype: torch.dtype | None = None):
    """A tensor, or a dict of them, on `device`: Ray Data and numpy hand inputs over on the CPU, and the
    engine's outputs go back there for numpy and parquet. Floating tensors also take `dtype` when given:
    DeepSpeed casts a bf16 run's parameters but not its float inputs."""
    if isinstance(value, dict):
        return {name: on_device(item, device, dtype) for name, item in value.items()}
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, dtype=dtype) if dtype is not None and value.is_floating_point() else value.to(device)


def parameter_dtype(module: torch.nn.Module) -> torch.dtype:
    """What the engine made of the parameters (bf16 or fp32); the float inputs must match it."""
    return next(module.parameters()).dtype


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def save_checkpoint(engine, metrics: dict, state: dict, meter=None) -> None:
    """Every rank saves its ZeRO shard and reports it; Ray Train gathers them into one checkpoint.

    Each rank also writes the sha256 of the parameters it holds, so a checkpoint shows whether
    the ranks were in sync (`params-rank<N>.sha256`). `meter` (a TrainMeter) records the seconds.
    """
    from ray.train import Checkpoint

    timer = meter.checkpoint_seconds.time() if meter is not None else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, timer:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state={"loop_state": state})
        (Path(tmp) / f"params-rank{collective.rank()}.sha256").write_text(parameter_digest(engine.module) + "\n")
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def save_best(engine, loop_config: dict, step: int) -> str:
    """The model and optimizer state of a new best point, as a DeepSpeed checkpoint tagged by its step in the
    run's checkpoint folder (every rank writes its shard); returns the tag. Earlier tags stay until `prune_best`."""
    tag = f"best-step{step}"
    engine.save_checkpoint(str(best_folder(loop_config)), tag=tag, save_latest=False)
    return tag


def load_best(engine, loop_config: dict, tag: str) -> None:
    """Back to the state `save_best` kept under `tag`."""
    engine.load_checkpoint(str(best_folder(loop_config)), tag=tag)


def prune_best(loop_config: dict, keep: str | None) -> None:
    """Rank 0 removes every best tag but `keep` (the one the checkpoint just reported refers to), once Ray Train
    has committed that checkpoint: until then a restart would resume from the one before, and its tag."""
    import shutil

    if collective.rank() != 0 or not best_folder(loop_config).is_dir():
        return
    ray.train.get_all_reported_checkpoints()  # blocks until every report so far is committed
    for path in best_folder(loop_config).iterdir():
        if path.name == keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()  # DeepSpeed's zero_to_fp32.py copy


def best_folder(loop_config: dict) -> Path:
    return Path(loop_config[CHECKPOINT_ROOT]) / "best"


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter's name and bytes (under ZeRO-3, the gathered full tensors)."""
    import hashlib

    digest = hashlib.sha256()
    with full_parameters(list(module.parameters())):
        for name, param in sorted(module.named_parameters()):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def full_parameters(parameters: list[torch.nn.Parameter]):
    """Gather ZeRO-3 partitioned parameters for the block; a no-op for the other stages."""
    import contextlib

    params = [p for p in parameters if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def restore_checkpoint(engine, loop_config: dict) -> dict | None:
    """Loop state of the latest checkpoint of this run (after a restart or a rerun), else None.
    Only a checkpoint inside the run's own folder is loaded (DeepSpeed checkpoints are pickles)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    check_own_checkpoint(checkpoint.path, loop_config[CHECKPOINT_ROOT])
    with checkpoint.as_directory() as folder:
        _, client_state = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
    return client_state["loop_state"]


def check_own_checkpoint(path: str | Path, root: str | Path) -> None:
    """Raise ForeignCheckpoint unless `path` lies inside `root` (links resolved)."""
    root = Path(root).resolve()
    if not Path(path).resolve().is_relative_to(root):
        raise ForeignCheckpoint(f"{path}: not under this run's checkpoint folder {root}; refusing to load it")


def all_reduce_sum(values: list[float]) -> list[float]:
    return collective.all_reduce_sum_(torch.tensor(values, dtype=torch.float64)).tolist()


def carry_epoch_sums(carried: dict[str, float], local: dict[str, float]) -> dict[str, float]:
    """An epoch's global running sums: `carried` (as of the last checkpoint, the same on every rank)
    plus every rank's `local` sums since then (a collective). Loops store the result in each
    checkpoint and restart `local` at zero, so an epoch resumed mid-way reports the same totals,
    summed in the same order, as one that ran straight through."""
    names = sorted(set(carried) | set(local))
    summed = all_reduce_sum([local.get(name, 0.0) for name in names])
    return {name: carried.get(name, 0.0) + value for name, value in zip(names, summed)}


def stream_seed(*parts: int) -> int:
    """A 62-bit seed from a tuple of ints: a fixed function of them (Python does not salt int hashes)."""
    return hash(parts) & (2**62 - 1)


def my_slice(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the last ranks may get fewer rows)."""
    start, stop = collective.share(len(batch), rank, world)
    return batch[start:stop]


def finish_worker() -> None:
    """Tear the process group down: ZeRO-3 workers otherwise abort at exit on some torch releases."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
