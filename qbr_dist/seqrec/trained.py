"""A BERT4Rec built from its spec: the same way in the training workers and when loading the
weights a training stage exported (`<stage>/model.safetensors`, described by `<stage>/model.json`).

The spec holds the model config, the item count, and for semantic tokens the codes file and the
code table sizes; a cold-item split adds the cold mask (items kept out of training).
A semantic-token model can also take items it never saw (`with_new_items`): they join its catalog with
their codes alone, no retraining.
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
    return _assemble(spec, codes=_tensor(spec.get("codes_file")), excluded=_tensor(spec.get("cold_file")),
                     level_rows=_tensor(spec.get("level_rows_file")))


def _assemble(spec: dict, *, codes: torch.Tensor | None, excluded: torch.Tensor | None,
              level_rows: torch.Tensor | None = None) -> BERT4Rec:
    cfg = ModelConfig(**spec["model"])
    tokens = None
    if cfg.tokens != "id":
        tokens = SemanticTokens(codes=codes, code_sizes=spec["code_sizes"], hidden=cfg.hidden,
                                hybrid=cfg.tokens == "hybrid", untrained=excluded, id_dropout=cfg.id_dropout,
                                level_rows=level_rows, cold_codes_only=cfg.cold_codes_only)
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


def with_new_items(model: BERT4Rec, spec: dict, new_codes: np.ndarray) -> BERT4Rec:
    """`model` (semantic tokens, its `spec`) over its catalog plus items it never saw, whose codes (M, levels + 1)
    come from the same codebook, as item indexes num_items + 1 .. num_items + M. They are scored as the cold items
    are: from their codes, with hybrid tokens plus the mean ID vector of the trained items sharing their longest
    code prefix. A suffix past the trained disambiguation table adds nothing (a zero row): no item trained it."""
    if not isinstance(model.tokens, SemanticTokens):
        raise ValueError("an ID-only model has no codes to score new items with; use a semantic-token model "
                         "(qbert4rec)")
    tokens, before, added = model.tokens, model.num_items, len(new_codes)
    if new_codes.shape[1] != tokens.codes.shape[1]:
        raise ValueError(f"new items have {new_codes.shape[1] - 1} code levels, the model {tokens.codes.shape[1] - 1}")
    sizes = [*spec["code_sizes"][:-1], max(spec["code_sizes"][-1], int(new_codes[:, -1].max(initial=-1)) + 1)]
    grown = _assemble(spec | {"num_items": before + added, "code_sizes": sizes},
                      codes=torch.cat([tokens.codes, torch.tensor(new_codes, dtype=torch.long)]),
                      excluded=torch.cat([model.excluded, torch.ones(added, dtype=torch.bool)]))
    state = model.state_dict()
    for name, rows in grown.state_dict().items():
        if rows.shape != state[name].shape:  # the ID rows (new ones before [MASK]) and the suffix tables
            at = before + 1 if name.startswith("tokens.ids.") else len(state[name])
            padding = rows.new_zeros((rows.shape[0] - state[name].shape[0], *rows.shape[1:]))
            state[name] = torch.cat([state[name][:at], padding, state[name][at:]])
    grown.load_state_dict(state)
    return grown.eval()
