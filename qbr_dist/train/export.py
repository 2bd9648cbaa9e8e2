"""Trained weights out of their ZeRO checkpoint: one safetensors file, consolidated by DeepSpeed.

A DeepSpeed checkpoint holds each rank's optimizer partition as a pickle; the exported file is
plain tensors (no code runs when it is loaded) in fp32, as one unpartitioned state dict.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import torch

from qbr_dist import artifacts

log = logging.getLogger("qbr.train")

WEIGHTS = "model.safetensors"


def export_weights(checkpoint_dir: str | Path, out_file: Path, *, tag: str) -> Path:
    """Consolidate the ZeRO (stage 1-3) checkpoint `checkpoint_dir/tag` into `out_file`, atomically."""
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory(dir=out_file.parent) as tmp, contextlib.redirect_stdout(io.StringIO()) as said:
        # DeepSpeed's converter prints its progress; it goes to the debug log instead.
        convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint_dir), tmp, tag=tag, safe_serialization=True,
                                                   max_shard_size="1000GB")  # one file
        with artifacts.atomic_path(out_file) as target:
            (Path(tmp) / WEIGHTS).replace(target)
    log.debug("%s", said.getvalue())
    return out_file


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
