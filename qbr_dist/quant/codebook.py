"""Codebook identity: versions, cross-rank checks, and saving/loading with the version verified.

A codebook file holds every tensor that decides an item's codes (the residual codebooks, and in
RQ-VAE mode the encoder and decoder weights); its version is the hash of those tensors. Ranks
must hold bit-identical codebooks: after each update every rank hashes its copy and the hashes
are compared across ranks (a mismatch is an error, never averaged away), then rank 0's copy is
broadcast. The file is safetensors with the version in its metadata; loading recomputes it, so
a file changed on disk, or one from another version than the caller expects, is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from qbr_dist import artifacts
from qbr_dist.train import collective

VERSION_CHARS = 16


class CodebookMismatch(RuntimeError):
    """Ranks, files or artifacts disagree about which codebook is in use."""


def codebook_version(tensors: dict[str, torch.Tensor]) -> str:
    """Hash over the named tensors in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(collective.tensor_digest(tensors[name].float()).encode())
    return digest.hexdigest()[:VERSION_CHARS]


def verify_identical(tensor: torch.Tensor, *, what: str) -> torch.Tensor:
    """Compare this tensor's hash across ranks (error on any difference), then broadcast rank 0's copy."""
    digests = collective.digests_by_rank(collective.tensor_digest(tensor))
    if len(set(digests)) > 1:
        listing = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise CodebookMismatch(f"{what} differs between ranks ({listing})")
    return collective.broadcast_(tensor)


def save_codebooks(path: Path, tensors: dict[str, torch.Tensor], **metadata: str) -> str:
    """Write the tensors (at least "codebooks") as safetensors, atomically; returns the version it records."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().float().contiguous() for name, tensor in tensors.items()}
    version = codebook_version(tensors)
    with artifacts.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"version": version, **metadata})
    return version


def load_codebooks(path: Path, *, expected_version: str | None = None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(tensors, version, metadata); refuses a file whose tensors do not hash to its recorded
    version, or whose version differs from `expected_version`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: codebook file not found")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    recorded = metadata.get("version", "")
    actual = codebook_version(tensors)
    if actual != recorded:
        raise CodebookMismatch(f"{path}: codebook tensors hash to {actual}, but the file records version "
                               f"{recorded or '(none)'}; the file was changed after it was written")
    if expected_version is not None and actual != expected_version:
        raise CodebookMismatch(f"{path}: codebook version {actual}, but version {expected_version} was expected "
                               "(codes and models made with one codebook cannot be mixed with another)")
    return tensors, actual, metadata
