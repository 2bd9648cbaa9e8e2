"""Multi-view contrastive loss of the fusion stage.

The fused vector of an item is pulled towards each of its own views (text, image, tokens,
co-occurrence; InfoNCE with the other items of the batch as negatives, over items that have the
view) and towards the fused vector of an item next to it in a training sequence (the
collaborative view). The content head learns to predict the ID vector (mean squared error
against the detached ID vector), so items without one still get a sensible query.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, valid: torch.Tensor, *, temperature: float):
    """Mean InfoNCE over valid rows, negatives being the other valid rows; 0 with fewer than 2."""
    rows = torch.nonzero(valid).flatten()
    if len(rows) < 2:
        return anchors.sum() * 0.0
    a = F.normalize(anchors[rows], dim=-1)
    p = F.normalize(positives[rows], dim=-1)
    logits = a @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(len(rows), device=logits.device))


def fusion_loss(anchor: dict, neighbour: dict, *, temperature: float, id_weight: float) -> tuple[torch.Tensor, dict]:
    """Total loss and its parts for a batch of (anchor, neighbour) items."""
    from qbr_dist.fusion.model import MODALITIES

    parts = {
        f"view_{name}": info_nce(anchor["fused"], anchor["views"][:, m], anchor["present"][:, m],
                                 temperature=temperature)
        for m, name in enumerate(MODALITIES)
    }
    everyone = torch.ones(len(anchor["fused"]), dtype=torch.bool, device=anchor["fused"].device)
    parts["collaborative"] = info_nce(anchor["fused"], neighbour["fused"], everyone, temperature=temperature)
    parts["id_head"] = F.mse_loss(anchor["predicted_id"], anchor["id"].detach()) * id_weight
    return sum(parts.values()), {name: value.item() for name, value in parts.items()}
