"""Throughput on one NVIDIA GPU, without Ray: Q-BERT4Rec training under DeepSpeed ZeRO-2 (samples/s) and
open_clip ViT-B-32 image encoding (items/s), both with random weights. Run by bench/gpu/run.sh, which
installs the carried wheels; bench/README.md says what each figure covers.

The model is the project's own (`qbr_dist.seqrec.trained.build_model`, semantic tokens), trained the way
`qbr_dist.seqrec.train_loop` trains it past `train.sampled_softmax_above` items: random item masking and a
popularity-sampled softmax with log-Q correction, in the engine the training workers build
(`qbr_dist.train.engine`, which needs no Ray). Images go through the project's `ImageEncoder`.

`--smoke` runs the same code tiny on the CPU (DeepSpeed's CPU accelerator, gloo) so it can be tested
without a GPU. Each part's result, or its error, is written as soon as it is known.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

GPU = {"items": 1_000_000, "code_sizes": [256, 256, 256, 64], "hidden": 256, "layers": 4, "heads": 4,
       "max_len": 200, "batch": 256, "negatives": 1024, "warmup": 10, "seconds": 40.0,
       "clip_batch": 256, "clip_warmup": 5, "clip_seconds": 30.0}
SMOKE = {"items": 1_000, "code_sizes": [16, 16, 16, 4], "hidden": 32, "layers": 1, "heads": 2,
         "max_len": 20, "batch": 8, "negatives": 64, "warmup": 1, "seconds": 0.0,
         "clip_batch": 2, "clip_warmup": 1, "clip_seconds": 0.0}
MIN_TIMED_STEPS = 2
DISTINCT_BATCHES = 4  # made before timing and cycled, so host-side data work stays out of the figure
MASK_RATIO = 0.2  # TrainConfig.mask_ratio
LR, WEIGHT_DECAY = 1e-3, 0.01  # TrainConfig defaults
CLIP_MODEL = "ViT-B-32"


def main() -> int:
    args = parse_args()
    settings = {**(SMOKE if args.smoke else GPU), "precision": "bf16", "zero_stage": 2}
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch (bench/gpu/run.sh --smoke runs on the CPU)")
    os.environ["DS_ACCELERATOR"] = device  # before DeepSpeed is imported
    result = {"device": device_name(device), "device_details": device_details(device), "smoke": args.smoke,
              "started": now(), "settings": settings, "versions": versions(),
              "host": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    path = args.out_dir / f"gpu-{'smoke-cpu' if args.smoke else slug(result['device'])}.json"
    parts = {"qbert4rec_zero2": lambda: bench_qbert(settings, device),
             "open_clip_vit_b_32": lambda: bench_clip(settings, device)}
    for name, run in parts.items():
        result[name] = attempt(name, run)
        write(path, result)
    print(path.read_text())
    print(f"wrote {path}", file=sys.stderr)
    return 1 if any("error" in result[name] for name in parts) else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    return parser.parse_args()


def attempt(name: str, run: Callable[[], dict]) -> dict:
    """One part's result; a failure is recorded and the next part still runs (device time is scarce)."""
    log(f"{name}: start")
    try:
        result = run()
    except Exception as error:  # recorded in the JSON; the exit status says a part failed
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}
    log(f"{name}: {json.dumps(result)}")
    return result


# ---------------------------------------------------------------- Q-BERT4Rec under DeepSpeed ZeRO-2


def bench_qbert(settings: dict, device: str) -> dict:
    from qbr_dist.config import RuntimeConfig
    from qbr_dist.seqrec.sampled_softmax import NegativeSampler
    from qbr_dist.seqrec.trained import build_model
    from qbr_dist.train.engine import init_engine

    init_distributed(device)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            model = build_model(qbert_spec(settings, Path(tmp)))
        sampler = NegativeSampler(zipf_counts(settings["items"]), settings["negatives"], device)
        runtime = RuntimeConfig(zero_stage=settings["zero_stage"], precision=settings["precision"])
        engine = init_engine(model, runtime=runtime, micro_batch=settings["batch"], lr=LR, weight_decay=WEIGHT_DECAY)
        batches = make_batches(settings, model.mask_token, sampler, device)
        losses = []

        def step() -> None:
            batch = batches[len(losses) % len(batches)]
            loss_sum = engine(batch["inputs"], batch["labels"], negatives=batch["negatives"], log_kq=sampler.log_kq)
            loss = loss_sum / batch["targets"]  # the mean over the batch's masked positions
            engine.backward(loss)
            engine.step()
            losses.append(loss.detach())

        steps, seconds = timed(step, settings["warmup"], settings["seconds"], device)
        return {"samples_per_s": round(steps * settings["batch"] / seconds, 1), "timed_steps": steps,
                "seconds": round(seconds, 3), "ms_per_step": round(1000 * seconds / steps, 2),
                "params": sum(p.numel() for p in model.parameters()), "final_loss": round(float(losses[-1]), 4),
                "precision": engine_precision(engine), "peak_memory_gib": peak_memory_gib(device),
                "workload": "semantic tokens, random item masking (ratio 0.2), sampled softmax with log-Q, "
                            "full-length random sequences; batches made before timing"}
    finally:
        torch.distributed.destroy_process_group()


def init_distributed(device: str) -> None:
    """One process as its own world: the environment DeepSpeed reads, then its process group."""
    import deepspeed

    from qbr_dist.train.engine import skip_inference_allreduce_kernel

    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0", "WORLD_SIZE": "1",
                        "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(name, value)
    skip_inference_allreduce_kernel()
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


def qbert_spec(settings: dict, folder: Path) -> dict:
    """A `build_model` spec with random codes: one row per item (row 0 unused), one column per code level."""
    rng = np.random.default_rng(0)
    sizes = settings["code_sizes"]
    codes = np.stack([rng.integers(0, size, settings["items"] + 1) for size in sizes], axis=1)
    np.save(folder / "codes.npy", codes)
    model = {"tokens": "semantic", "hidden": settings["hidden"], "layers": settings["layers"],
             "heads": settings["heads"], "max_len": settings["max_len"]}  # dropout: ModelConfig's
    return {"model": model, "num_items": settings["items"], "code_sizes": sizes, "codebook_version": None,
            "codes_file": str(folder / "codes.npy"), "cold_file": None}


def zipf_counts(items: int) -> torch.Tensor:
    """Training counts by item, row 0 the padding: a Zipf-like popularity, as catalogs have."""
    ranks = torch.arange(1, items + 1, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), (items / ranks).floor()])


def make_batches(settings: dict, mask_token: int, sampler, device: str) -> list[dict]:
    """Masked full-length sequences of random items, each with its own draw of negatives, on the device."""
    from qbr_dist.seqrec.masking import random_item_mask

    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(DISTINCT_BATCHES):
        seq = torch.randint(1, settings["items"] + 1, (settings["batch"], settings["max_len"]), generator=generator)
        inputs, labels = random_item_mask(seq, ratio=MASK_RATIO, mask_token=mask_token, generator=generator)
        batches.append({"inputs": inputs.to(device), "labels": labels.to(device),
                        "negatives": sampler.draw(generator).to(device), "targets": int((labels > 0).sum())})
    return batches


def engine_precision(engine) -> str:
    return str(next(engine.module.bert.parameters()).dtype).removeprefix("torch.")


# ---------------------------------------------------------------- open_clip image encoding


def bench_clip(settings: dict, device: str) -> dict:
    from qbr_dist.encode.image import ImageEncoder

    encoder = ImageEncoder(CLIP_MODEL, random_init=True, device=device)
    size, batch = encoder.image_size, settings["clip_batch"]
    images = torch.randn(batch, 3, *((size, size) if isinstance(size, int) else size), device=device)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            encoder(images)

    steps, seconds = timed(step, settings["clip_warmup"], settings["clip_seconds"], device)
    return {"items_per_s": round(steps * batch / seconds, 1), "timed_steps": steps, "seconds": round(seconds, 3),
            "ms_per_batch": round(1000 * seconds / steps, 2), "model": CLIP_MODEL, "image_size": size,
            "precision": "bf16 autocast", "peak_memory_gib": peak_memory_gib(device),
            "workload": "ImageEncoder (random init) on normalised random images already on the device; "
                        "includes the unit vectors' copy back to the host, not image decoding"}


# ---------------------------------------------------------------- timing and records


def timed(step: Callable[[], None], warmup: int, seconds: float, device: str) -> tuple[int, float]:
    """Steps run and seconds taken after `warmup` steps: at least MIN_TIMED_STEPS, until `seconds` pass."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started, steps = time.perf_counter(), 0
    while steps < MIN_TIMED_STEPS or time.perf_counter() - started < seconds:
        step()
        steps += 1
    synchronize(device)
    return steps, time.perf_counter() - started


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})"


def device_details(device: str) -> dict | None:
    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(0)
    return {"capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def versions() -> dict:
    """Versions of what the figures depend on (a package not imported yet reads as its installed metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"torch": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    for package in ("deepspeed", "open_clip_torch", "transformers", "timm", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result | {"finished": now()}, indent=2) + "\n")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def log(message: str) -> None:
    print(f"[{now()}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
