"""BERT4Rec: a bidirectional transformer over item sequences (Sun et al., 2019).

Vocabulary: 0 is padding, items are 1..num_items, num_items + 1 is [MASK].
Sequences are left-padded, so the newest item sits at the last position.
Scores are dot products with the (tied) item embedding table plus a per-item bias.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

PAD = 0


class BERT4Rec(nn.Module):
    def __init__(
        self,
        *,
        num_items: int,
        hidden: int = 64,
        layers: int = 2,
        heads: int = 2,
        max_len: int = 50,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_items = num_items
        self.mask_token = num_items + 1
        self.item_emb = nn.Embedding(num_items + 2, hidden, padding_idx=PAD)
        bert_config = BertConfig(
            vocab_size=1,  # tokens arrive as inputs_embeds; BERT's own word table stays unused
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=max_len,
            type_vocab_size=1,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.bert.embeddings.word_embeddings.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.item_bias = nn.Parameter(torch.zeros(num_items + 2))
        nn.init.normal_(self.item_emb.weight, std=0.02)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state per position, (batch, length, hidden), ready to score against items."""
        out = self.bert(inputs_embeds=self.item_emb(seq), attention_mask=(seq != PAD).long())
        return self.head(out.last_hidden_state)

    def score_items(self, hidden: torch.Tensor, start: int = 1, end: int | None = None) -> torch.Tensor:
        """Scores of items [start, end) for each row of `hidden` (rows, hidden) -> (rows, end - start)."""
        end = self.num_items + 1 if end is None else end
        return hidden @ self.item_emb.weight[start:end].T + self.item_bias[start:end]

    def forward(self, seq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the full catalog at positions whose label is an item (> 0)."""
        picked = labels > 0
        logits = self.score_items(self.encode(seq)[picked])
        return nn.functional.cross_entropy(logits, labels[picked] - 1, reduction="sum")

    def tied_parameters(self) -> list[nn.Parameter]:
        """Parameters used outside their own module's forward (ZeRO-3 must gather them for ours)."""
        return [self.item_emb.weight]

    def scoring_parameters(self) -> list[nn.Parameter]:
        """What `score_items` reads; ZeRO-3 callers gather these around it."""
        return [self.item_emb.weight, self.item_bias]
