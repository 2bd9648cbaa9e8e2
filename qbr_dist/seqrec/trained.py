"""A BERT4Rec built from its spec: the same way in the training workers and when loading the
weights a training stage exported (`<stage>/model.safetensors`, described by `<stage>/model.json`).

The spec holds the model config, the item count, and for semantic tokens the codes file and the
code table sizes; a cold-item split adds the cold mask (items kept out of training).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qbr_dist.config import ModelConfig
from qbr_dist.seqrec.bert4rec import BERT4Rec, SemanticTokens

MODEL_SPEC = "model.json"
CODES_FILE = "codes.npy"  # a semantic-token stage's codes by item index, beside its weights
SPEC_KEYS = ("model", "num_items", "code_sizes", "codebook_version")  # what model.json keeps; files travel apart


def build_model(spec: dict) -> BERT4Rec:
    """`spec`: SPEC_KEYS plus `codes_file` (semantic tokens), `cold_file` (a cold-item split) and
    `level_rows_file` (code tables started from the codebooks, for training), each or None."""
    cfg = ModelConfig(**spec["model"])
    excluded = _tensor(spec.get("cold_file"))
    tokens = None
    if cfg.tokens != "id":
        tokens = SemanticTokens(codes=torch.from_numpy(np.load(spec["codes_file"])), code_sizes=spec["code_sizes"],
                                hidden=cfg.hidden, hybrid=cfg.tokens == "hybrid", untrained=excluded,
                                id_dropout=cfg.id_dropout, level_rows=_tensor(spec.get("level_rows_file")),
                                cold_codes_only=cfg.cold_codes_only)
    return BERT4Rec(num_items=spec["num_items"], hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                    max_len=cfg.max_len, dropout=cfg.dropout, tokens=tokens, excluded=excluded)


def _tensor(path: str | None) -> torch.Tensor | None:
    return torch.from_numpy(np.load(path)) if path else None


def load_trained(stage_dir: Path, cold_file: Path | None, **scoring: bool) -> tuple[BERT4Rec, dict]:
    """The stage's model with its exported weights, in eval mode, and its spec; `scoring` changes model settings
    that need no other weights (`cold_codes_only`: how items no training saw are scored)."""
    if set(scoring) - {"cold_codes_only"}:
        raise ValueError(f"load_trained: {sorted(set(scoring) - {'cold_codes_only'})} would change the weights")
    from qbr_dist.train.export import WEIGHTS, load_weights

    if not (stage_dir / WEIGHTS).is_file():
        raise FileNotFoundError(f"{stage_dir / WEIGHTS}: no exported weights (a finished training stage with "
                                "runtime.zero_stage >= 1 writes them)")
    spec = json.loads((stage_dir / MODEL_SPEC).read_text())
    spec["model"] |= scoring
    ModelConfig(**spec["model"]).check()  # e.g. cold_codes_only on a model without an ID part
    codes = stage_dir / CODES_FILE
    spec |= {"codes_file": str(codes) if codes.is_file() else None,
             "cold_file": str(cold_file) if cold_file and cold_file.is_file() else None}
    model = build_model(spec)
    model.load_state_dict(load_weights(stage_dir / WEIGHTS))
    return model.eval(), spec
