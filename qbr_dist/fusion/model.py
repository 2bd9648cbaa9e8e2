"""Dynamic cross-modal fusion (stage 1 of the method): an item's ID vector queries its content.

Every item has a learnable ID embedding `e_i`, the query. Its modalities (text, image, field
tokens, co-occurrence) are projected to the model width and serve as keys and values. In each
layer the modality weights are a softmax, at a learned temperature, of the cosine similarity
between the query and each modality's key; a missing modality gets no weight. A gate
`g = sigmoid(MLP(h))` scales the layer's whole update, so an item can stop fusing early: at
inference an item stops at the first layer whose gate is below `gate_threshold`, and its depth
is the number of layers applied. A small head predicts `e_i` from content, so items without a
trained ID vector (new or cold items) still get a query.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("text", "image", "tokens", "cooc")


class FusionLayer(nn.Module):
    def __init__(self, dim: int, *, temperature: float = 0.1, dropout: float = 0.0):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.out = nn.Linear(dim, dim)
        self.log_temperature = nn.Parameter(torch.tensor([float(temperature)]).log())  # 1-d: DeepSpeed broadcasts bytes
        self.gate = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        nn.init.constant_(self.gate[-1].bias, 2.0)  # open (about 0.88) at the start; training may close it
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor, modalities: torch.Tensor, present: torch.Tensor):
        """h (B, d), modalities (B, M, d), present (B, M) -> update (B, d), weights (B, M), gate (B,)."""
        query = F.normalize(self.query(h), dim=-1).unsqueeze(1)
        keys = F.normalize(self.key(modalities), dim=-1)
        similarity = (query * keys).sum(-1) / self.log_temperature.exp()
        weights = similarity.masked_fill(~present, float("-inf")).softmax(-1)
        weights = torch.nan_to_num(weights)  # an item with no modality at all gets no content update
        mixed = self.out((weights.unsqueeze(-1) * self.value(modalities)).sum(1))
        gate = torch.sigmoid(self.gate(h)).squeeze(-1)
        update = mixed + self.ffn(self.norm(h + mixed))
        return gate.unsqueeze(-1) * update, weights, gate


class CrossModalFusion(nn.Module):
    def __init__(self, *, num_items: int, input_dims: dict[str, int], vocab_size: int, dim: int = 64,
                 layers: int = 2, temperature: float = 0.1, gate_threshold: float = 0.1, dropout: float = 0.0):
        super().__init__()
        self.num_items, self.gate_threshold = num_items, gate_threshold
        self.id_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        self.project = nn.ModuleDict({
            name: nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
            for name, width in input_dims.items() if name != "tokens"
        })
        self.token_bag = nn.EmbeddingBag(max(vocab_size, 1), dim, mode="mean", padding_idx=0)
        self.layers = nn.ModuleList(FusionLayer(dim, temperature=temperature, dropout=dropout) for _ in range(layers))
        self.id_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.final_norm = nn.LayerNorm(dim)

    def views(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected modalities (B, M, d) in MODALITIES order and which are present (B, M)."""
        views, present = [], []
        for name in MODALITIES:
            if name == "tokens":
                views.append(self.token_bag(features["tokens"]))  # (B, T) padded with 0
                present.append((features["tokens"] > 0).any(1))
            else:
                views.append(self.project[name](features[name]))
                present.append(features[f"{name}_present"])
        return torch.stack(views, 1), torch.stack(present, 1)

    def content_query(self, views: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The ID vector as predicted from content (the query of items without a trained ID vector)."""
        weights = present.to(views.dtype)  # the views' type: bf16 in a bf16 run
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
        return self.id_head((weights.unsqueeze(-1) * views).sum(1))

    def forward(self, items: torch.Tensor, features: dict[str, torch.Tensor], *, use_id: torch.Tensor | None = None):
        """Fused vectors (B, d) plus what the report shows: modality weights per layer, gates, depths.

        `use_id` (B,) bool: where False the query comes from the content head (cold/new items).
        In eval mode an item stops at the first layer whose gate is below `gate_threshold`.
        """
        return self.fuse(self.id_embedding(items), features, use_id=use_id)

    def fuse(self, id_vectors: torch.Tensor, features: dict[str, torch.Tensor], *, use_id: torch.Tensor | None = None):
        """`forward` from given ID vectors (B, d): how items outside the trained table are fused."""
        views, present = self.views(features)
        predicted = self.content_query(views, present)
        h = id_vectors if use_id is None else torch.where(use_id.unsqueeze(-1), id_vectors, predicted)
        active = torch.ones(len(h), dtype=torch.bool, device=h.device)
        depth = torch.zeros(len(h), dtype=torch.long, device=h.device)
        weights, gates = [], []
        for layer in self.layers:
            update, layer_weights, gate = layer(h, views, present)
            if not self.training:
                active = active & (gate >= self.gate_threshold)
                update = update * active.unsqueeze(-1)
                depth = depth + active.long()
            h = h + update
            weights.append(layer_weights)
            gates.append(gate)
        return {"fused": self.final_norm(h), "views": views, "present": present, "id": id_vectors,
                "predicted_id": predicted, "weights": torch.stack(weights, 1), "gates": torch.stack(gates, 1),
                "depth": depth}
