"""The DeepSpeed engine each training worker drives. Free of Ray, so a process without Ray (the GPU
benchmark) builds the same engine."""
from __future__ import annotations

import torch

from qbr_dist.config import RuntimeConfig


def deepspeed_config(runtime: RuntimeConfig, *, micro_batch: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": runtime.grad_clip,
        "zero_optimization": {"stage": runtime.zero_stage},
        "bf16": {"enabled": runtime.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def init_engine(model: torch.nn.Module, *, runtime: RuntimeConfig, micro_batch: int, lr: float, weight_decay: float):
    """DeepSpeed engine around `model` with torch's AdamW (DeepSpeed's own Adam compiles C++ first)."""
    import deepspeed

    skip_inference_allreduce_kernel()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(runtime, micro_batch=micro_batch)
    )
    return engine


def skip_inference_allreduce_kernel() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (about 45 s, again for
    every venv) when its process group starts, yet only its inference all-reduce uses it: ZeRO training
    reduces through torch.distributed. Marking the op incompatible (DeepSpeed keeps this dict for such
    edits) skips the build."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
