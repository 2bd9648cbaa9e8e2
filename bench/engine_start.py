"""DeepSpeed engine start on CPU: 2 gloo processes, each start with an empty torch extensions folder
(a fresh machine or venv). The peer is `deepspeed.initialize` as installed, which JIT-compiles its
shared-memory all-reduce kernel when the process group starts; qbr-dist's `init_engine` skips that
kernel (only DeepSpeed's inference all-reduce uses it). Same model, optimizer and ZeRO config.

    python bench/engine_start.py

Writes bench/results/engine_start.json: seconds from before the engine call to a ready engine on
rank 0 (imports excluded) for each, their ratio, and whether each left a compiled kernel behind.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result

WORLD = 2
PORTS = {False: 29541, True: 29542}  # one per measurement: the first's may linger in TIME_WAIT


def start(rank: int, skip_kernel: bool, port: int, folder: str, out: str) -> None:
    """One rank: the process group's environment, then an engine around a small model; rank 0 writes the seconds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), TORCH_EXTENSIONS_DIR=folder)
    import deepspeed
    import torch

    from qbr_dist.config import RuntimeConfig
    from qbr_dist.train.engine import deepspeed_config, init_engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    runtime = RuntimeConfig()
    started = time.perf_counter()
    if skip_kernel:
        init_engine(model, runtime=runtime, micro_batch=8, lr=1e-3, weight_decay=0.0)
    else:
        deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                             config=deepspeed_config(runtime, micro_batch=8))
    seconds = time.perf_counter() - started
    torch.distributed.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": round(seconds, 2)}))
    torch.distributed.destroy_process_group()


def measure(skip_kernel: bool) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        extensions = Path(folder) / "torch_extensions"
        mp.spawn(start, args=(skip_kernel, PORTS[skip_kernel], str(extensions), str(out)), nprocs=WORLD)
        kernel_built = any(extensions.rglob("*.so"))
        return json.loads(out.read_text()) | {"kernel_built": kernel_built}


def main() -> int:
    peer, ours = measure(skip_kernel=False), measure(skip_kernel=True)
    result = {"benchmark": "engine_start", "machine": machine(), "workers": WORLD, "backend": "gloo (CPU)",
              "deepspeed_as_installed": peer, "init_engine": ours,
              "ratio_as_installed_over_init_engine": round(peer["seconds"] / max(ours["seconds"], 1e-9), 1)}
    print(json.dumps(result, indent=2))
    print(write_result(result, "engine_start"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
