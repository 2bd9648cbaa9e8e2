"""BERT4Rec over item IDs (Sun et al., 2019) or over semantic IDs (Q-BERT4Rec).

Vocabulary: 0 is padding, items are 1..num_items, num_items + 1 is [MASK].
Sequences are left-padded, so the newest item sits at the last position.
An item's input vector comes from its tokens: its own ID vector (`IdTokens`, the baseline), or
the sum of its code embeddings, one table per RVQ level plus the disambiguation code
(`SemanticTokens`), optionally plus its ID vector (hybrid). Scores are dot products with the
same (tied) item vectors plus a bias that the tokens also give (per item for IDs, the sum of
per-code biases for semantic IDs), so a new item with codes can be scored without retraining.
Items left out of training (the cold items of a cold-item split) never enter its softmax: they
do not exist yet as far as training knows, and evaluation then ranks them like any other.
Training scores the whole catalog, or, past a configured catalog size, only the targets and a
sample of negatives (`sampled_softmax.py`); evaluation always ranks the whole catalog.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from qbr_dist.seqrec.sampled_softmax import sampled_softmax_loss

PAD = 0


class IdTokens(nn.Module):
    """Each item its own learned vector; row num_items + 1 is [MASK]."""

    def __init__(self, *, num_items: int, hidden: int):
        super().__init__()
        self.table = nn.Embedding(num_items + 2, hidden, padding_idx=PAD)
        nn.init.normal_(self.table.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(num_items + 2))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.table(seq)

    def vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.table.weight[items]

    def weights(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table.weight[items], self.bias[items]


class SemanticTokens(nn.Module):
    """Each item the sum of its code embeddings (one table per code position), plus its ID vector
    when `hybrid`. `codes` (num_items + 1, positions): row i holds item i's codes (row 0 unused).

    In hybrid mode an item left out of training (`untrained`, e.g. the cold items) has no trained ID
    vector; it takes the mean ID vector and bias of the trained items that share its longest code
    prefix instead, computed from the current tables when scoring outside training, so new items still
    need no retraining; or, with `cold_codes_only`, none: its codes alone place it, as ID dropout trains
    them to. In training such items are never inputs and are masked out of the softmax, so the training
    forward skips that work.

    `id_dropout` (hybrid): in training, the chance that one lookup of an item leaves out its ID vector
    and bias, so its codes must place it without them, as for every item no training has seen.

    `level_rows` (levels, codebook_size, hidden), when given, start the level tables instead of random
    rows (`code_init.codebook_rows`) and the hybrid ID vectors at zero; the disambiguation code's
    table always starts random."""

    def __init__(self, *, codes: torch.Tensor, code_sizes: list[int], hidden: int, hybrid: bool = False,
                 untrained: torch.Tensor | None = None, id_dropout: float = 0.0,
                 level_rows: torch.Tensor | None = None, cold_codes_only: bool = False):
        super().__init__()
        self.num_items = len(codes) - 1
        self.id_dropout = id_dropout
        self.register_buffer("codes", codes.long(), persistent=False)
        self.tables = nn.ModuleList(nn.Embedding(size, hidden) for size in code_sizes)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)
        self.code_biases = nn.ModuleList(nn.Embedding(size, 1) for size in code_sizes)
        for table in self.code_biases:
            nn.init.zeros_(table.weight)
        self.mask = nn.Parameter(torch.randn(hidden) * 0.02)
        self.ids = IdTokens(num_items=self.num_items, hidden=hidden) if hybrid else None
        if level_rows is not None:
            self._start_from(level_rows)
        self.untrained_ids = None  # the ID rows of untrained items, when scoring outside training
        if hybrid and untrained is not None and bool(untrained[1:].any()):
            self.untrained_ids = LeftOut(untrained.bool()) if cold_codes_only else \
                PrefixBackoff(codes[:, :len(code_sizes) - 1], untrained.bool())

    @torch.no_grad()
    def _start_from(self, level_rows: torch.Tensor) -> None:
        """Level tables from `level_rows`; hybrid ID vectors at zero, so each item starts at its codes' place."""
        for table, rows in zip(self.tables, level_rows):
            table.weight.copy_(rows)
        if self.ids is not None:
            self.ids.table.weight.zero_()

    def vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Vectors (..., hidden) of `items`: the input side, which needs no biases."""
        return self._compose(items, self.tables, self.ids and self.ids.table.weight, self._id_kept(items))

    def weights(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors (..., hidden) and biases (...) of `items`; one ID-dropout draw per lookup covers both."""
        kept = self._id_kept(items)
        vectors = self._compose(items, self.tables, self.ids and self.ids.table.weight, kept)
        biases = self._compose(items, self.code_biases, self.ids and self.ids.bias.unsqueeze(-1), kept)
        return vectors, biases.squeeze(-1)

    def _compose(self, items: torch.Tensor, code_tables: nn.ModuleList, id_table: torch.Tensor | None,
                 kept: torch.Tensor | None) -> torch.Tensor:
        """Sum of the rows of an item's codes, plus its ID row (when hybrid) unless ID dropout left it out."""
        codes = self.codes[items]
        composed = sum(table(codes[..., position]) for position, table in enumerate(code_tables))
        if id_table is None:
            return composed
        id_rows = self._id_part(id_table, items)
        return composed + (id_rows if kept is None else id_rows * kept)

    def _id_kept(self, items: torch.Tensor) -> torch.Tensor | None:
        """In training with ID dropout: True where a lookup keeps its item's ID row (..., 1)."""
        if self.ids is None or not self.training or self.id_dropout == 0:
            return None
        return torch.rand((*items.shape, 1), device=items.device) >= self.id_dropout

    def _id_part(self, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return table[items] if self.untrained_ids is None or self.training else self.untrained_ids(table, items)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        vectors = self.vectors(seq.clamp(max=self.num_items))
        vectors = torch.where((seq == self.num_items + 1).unsqueeze(-1), self.mask, vectors)
        return vectors.masked_fill((seq == PAD).unsqueeze(-1), 0.0)


class LeftOut(nn.Module):
    """Rows of an item table (ID vectors or biases) with the untrained items' rows at zero: their codes alone."""

    def __init__(self, untrained: torch.Tensor):
        super().__init__()
        self.register_buffer("kept", ~untrained, persistent=False)

    def forward(self, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        rows = table[items]
        return torch.where(self.kept[items].view(*items.shape, *[1] * (rows.dim() - items.dim())), rows, 0.0)


MEAN_BLOCK = 65536  # member rows gathered at once for the prefix means: most of the trained items at catalog scale


class PrefixBackoff(nn.Module):
    """Rows of an item table (ID vectors or biases) where each untrained item's row is the mean row of
    the trained items sharing its longest code prefix (down to the empty prefix: all trained items).

    The means of the groups untrained items use are computed from the current table. Outside training
    (scoring reads them for every chunk of every user batch) they are kept until `train()` or `eval()` is
    called (as every evaluation does around its scoring) or the table is replaced or changed in place
    (`load_state_dict`); where gradients flow they are computed at each call. With no trained item at all
    the untrained items' rows are zeros."""

    def __init__(self, level_codes: torch.Tensor, untrained: torch.Tensor):
        super().__init__()
        import numpy as np

        codes, cold = level_codes.numpy(), untrained.numpy().copy()
        cold[0] = False  # row 0 is padding
        trained = ~cold
        trained[0] = False
        group_of = np.full(len(codes), -1)  # per untrained item: its group, numbered over the groups any item uses
        members, sizes = [], []  # per used group, in that numbering: its trained items, and how many
        for depth in range(codes.shape[1], -1, -1):  # deepest prefix first
            _, inverse = np.unique(codes[:, :depth] if depth else np.zeros((len(codes), 1)), axis=0,
                                   return_inverse=True)
            inverse = inverse.ravel()
            covered = np.zeros(inverse.max() + 1, dtype=bool)
            covered[inverse[trained]] = True
            pick = cold & (group_of < 0) & covered[inverse]
            used = np.unique(inverse[pick])
            group_of[pick] = np.searchsorted(used, inverse[pick]) + sum(len(size) for size in sizes)
            items = np.nonzero(trained & np.isin(inverse, used))[0]
            local = np.searchsorted(used, inverse[items])
            members.append(items[np.argsort(local, kind="stable")])
            sizes.append(np.bincount(local, minlength=len(used)))
        size = torch.from_numpy(np.concatenate(sizes))
        self.register_buffer("cold", torch.from_numpy(cold), persistent=False)
        self.register_buffer("group_of", torch.from_numpy(group_of.clip(min=0)), persistent=False)
        self.register_buffer("members", torch.from_numpy(np.concatenate(members)), persistent=False)
        self.register_buffer("member_group", torch.repeat_interleave(torch.arange(len(size)), size), persistent=False)
        self.register_buffer("sizes", size, persistent=False)
        self._kept: dict[tuple, tuple] = {}  # table shape -> (its storage and version, its group means)

    def forward(self, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        rows = table[items]
        cold = self.cold[items]
        if bool(cold.any()):
            rows[cold] = self._group_means(table)[self.group_of[items[cold]]] if len(self.sizes) else 0.0
        return rows

    def _group_means(self, table: torch.Tensor) -> torch.Tensor:
        state = (table.data_ptr(), table._version)
        kept = self._kept.get(tuple(table.shape))
        if kept is not None and kept[0] == state and not torch.is_grad_enabled():
            return kept[1]
        sums = torch.zeros((len(self.sizes), *table.shape[1:]), dtype=table.dtype, device=table.device)
        for start in range(0, len(self.members), MEAN_BLOCK):  # the members' rows a block at a time, not all at once
            block = slice(start, start + MEAN_BLOCK)
            sums.index_add_(0, self.member_group[block], table[self.members[block]])
        means = sums / self.sizes.view(-1, *[1] * (table.dim() - 1))
        if not torch.is_grad_enabled():
            self._kept[tuple(table.shape)] = (state, means)
        return means

    def train(self, mode: bool = True) -> "PrefixBackoff":
        self._kept.clear()  # training changes the table in place
        return super().train(mode)


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
        tokens: nn.Module | None = None,
        excluded: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_items = num_items
        self.mask_token = num_items + 1
        self.tokens = tokens if tokens is not None else IdTokens(num_items=num_items, hidden=hidden)
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
        # (num_items + 1,) bool by item: items kept out of the training softmax
        if excluded is None:
            excluded = torch.zeros(num_items + 1, dtype=torch.bool)
        self.register_buffer("excluded", excluded, persistent=False)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state per position, (batch, length, hidden), ready to score against items."""
        out = self.bert(inputs_embeds=self.tokens(seq), attention_mask=(seq != PAD).long())
        return self.head(out.last_hidden_state)

    def score_items(self, hidden: torch.Tensor, start: int = 1, end: int | None = None) -> torch.Tensor:
        """Scores of items [start, end) for each row of `hidden` (rows, hidden) -> (rows, end - start)."""
        end = self.num_items + 1 if end is None else end
        return self.score_given(hidden, torch.arange(start, end, device=hidden.device))

    def score_given(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of `items` (n,) for each row of `hidden` -> (rows, n); only those items' vectors are built."""
        vectors, biases = self.tokens.weights(items)
        return hidden @ vectors.T + biases

    def score_own(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Score of each row of `hidden` for its own item, `items` (rows,) -> (rows,)."""
        vectors, biases = self.tokens.weights(items)
        return (hidden * vectors).sum(-1) + biases

    def forward(self, seq: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor | None = None,
                log_kq: torch.Tensor | None = None) -> torch.Tensor:
        """Summed cross-entropy at positions whose label is an item (> 0): over the full catalog, or, given
        `negatives`, sampled softmax over target and negatives with log-Q correction `log_kq` (indexed by item);
        excluded items are out of both."""
        picked = labels > 0
        hidden, targets = self.encode(seq)[picked], labels[picked]
        if negatives is None:
            scores = self.score_items(hidden).masked_fill(self.excluded[1:], float("-inf"))
            return nn.functional.cross_entropy(scores, targets - 1, reduction="sum")
        negative_scores = self.score_given(hidden, negatives).masked_fill(self.excluded[negatives], float("-inf"))
        return sampled_softmax_loss(self.score_own(hidden, targets), negative_scores, targets, negatives, log_kq)

    def token_parameters(self) -> list[nn.Parameter]:
        """The item token tables: the scoring methods read them outside the tokens' own forward, so under
        ZeRO-3 they are registered as external parameters and gathered around scoring."""
        return list(self.tokens.parameters())
