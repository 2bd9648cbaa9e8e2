"""The few torch.distributed collectives the stages use, also correct in a single process.

Inside a Ray Train worker the process group (gloo on CPU, NCCL on GPU) is already set up; in a
plain process (tests, benchmarks, one-worker runs outside Ray Train) every call is the identity,
so the same algorithm code runs with 1 or N workers.
"""
from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n rows; ranks get ceil(n / world) rows, the last fewer."""
    size = -(-n // world)
    return min(rank * size, n), min((rank + 1) * size, n)


def backend_device() -> torch.device:
    """Where the process group's collectives run: NCCL takes only CUDA tensors, gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place."""
    if dist.is_initialized():
        moved = tensor.to(backend_device())
        dist.all_reduce(moved)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values on every rank, in place."""
    if dist.is_initialized():
        moved = tensor.to(backend_device())
        dist.broadcast(moved, src=src)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order; ranks may hold different numbers of rows."""
    if not dist.is_initialized():
        return tensor
    device = backend_device()
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([len(tensor)], dtype=torch.int64, device=device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[:len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(c.item())] for g, c in zip(gathered, counts)]).to(tensor.device)


def row_offset(local_rows: int) -> tuple[int, int]:
    """(index of this rank's first row in the global order, global row count)."""
    counts = all_gather_rows(torch.tensor([local_rows], dtype=torch.int64))
    return int(counts[:rank()].sum()), int(counts.sum())


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def digests_by_rank(digest: str) -> list[str]:
    """Every rank's hex digest (sha256), in rank order."""
    raw = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8).view(1, -1)
    return [bytes(row.tolist()).hex() for row in all_gather_rows(raw)]
