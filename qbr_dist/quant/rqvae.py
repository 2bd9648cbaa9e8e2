"""RQ-VAE: an MLP encoder maps item vectors to a latent space, residual codebooks quantize the
latent, and an MLP decoder reconstructs the vector from the sum of the chosen codes.

Codebooks are buffers, moved by exponential moving averages of the latents assigned to each code
(no gradient): the per-code sums and counts of a step are all-reduced over ranks, so every rank
computes the same update, and `verify_identical` checks that and broadcasts rank 0's copy after
every update. The encoder and decoder learn through the straight-through estimator
(reconstruction loss) and the commitment loss. A code whose moving count falls below a fraction
of an even share of the batch is dead and is re-seeded with a latent residual of the current
global batch. Codebooks start from the distributed residual k-means on the initial latents.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qbr_dist.quant.codebook import verify_identical
from qbr_dist.quant.kmeans import nearest
from qbr_dist.train import collective


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers through `dims` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def in_chunks(net: nn.Module, vectors: torch.Tensor, out_dim: int, *, chunk_size: int = 65536) -> torch.Tensor:
    """`net` over `vectors` `chunk_size` rows at a time: (n, out_dim), no rows included."""
    if not len(vectors):
        return vectors.new_zeros(0, out_dim)
    return torch.cat([net(chunk) for chunk in vectors.split(chunk_size)])


class RQVAE(nn.Module):
    def __init__(self, *, input_dim: int, hidden: list[int] = (256,), latent_dim: int = 64, levels: int = 3,
                 codebook_size: int = 256, commitment: float = 0.25):
        super().__init__()
        self.encoder_dims = [input_dim, *hidden, latent_dim]
        self.encoder = mlp(self.encoder_dims)
        self.decoder = mlp(self.encoder_dims[::-1])
        self.commitment = commitment
        self.register_buffer("codebooks", torch.zeros(levels, codebook_size, latent_dim))
        self.register_buffer("ema_counts", torch.zeros(levels, codebook_size, dtype=torch.float64))
        self.register_buffer("ema_sums", torch.zeros(levels, codebook_size, latent_dim, dtype=torch.float64))

    def forward(self, vectors: torch.Tensor) -> dict:
        latent = self.encoder(vectors)
        quantized, residual = torch.zeros_like(latent), latent
        codes, inputs, commit = [], [], latent.new_zeros(())
        for codebook in self.codebooks:
            _, chosen = nearest(residual.detach(), codebook)
            code_vectors = codebook[chosen]
            commit = commit + F.mse_loss(residual, code_vectors)
            inputs.append(residual.detach())
            codes.append(chosen)
            quantized = quantized + code_vectors
            residual = residual - code_vectors
        straight_through = latent + (quantized - latent).detach()
        reconstruction = F.mse_loss(self.decoder(straight_through), vectors)
        return {"loss": reconstruction + self.commitment * commit, "reconstruction": reconstruction,
                "commitment": commit, "codes": torch.stack(codes, 1), "inputs": inputs}

    @torch.no_grad()
    def start_codebooks(self, codebooks: torch.Tensor, counts: torch.Tensor, batch_share: float) -> None:
        """Codebooks from k-means; moving counts start at each code's share of a global batch."""
        self.codebooks.copy_(codebooks)
        self.ema_counts.copy_(counts.double() * batch_share)
        self.ema_sums.copy_(codebooks.double() * self.ema_counts[..., None])

    @torch.no_grad()
    def update_codebooks(self, inputs: list[torch.Tensor], codes: torch.Tensor, *, decay: float, dead_fraction: float,
                         seed: list[int]) -> int:
        """One EMA step of every level from this step's latents on all ranks; returns codes re-seeded."""
        levels, size, _ = self.codebooks.shape
        reseeded = 0
        for level in range(levels):
            counts = collective.all_reduce_sum_(torch.bincount(codes[:, level], minlength=size).double())
            sums = torch.zeros_like(self.ema_sums[level]).index_add_(0, codes[:, level], inputs[level].double())
            collective.all_reduce_sum_(sums)
            self.ema_counts[level].mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_sums[level].mul_(decay).add_(sums, alpha=1 - decay)
            even_share = float(counts.sum()) / size
            dead = torch.nonzero(self.ema_counts[level] < dead_fraction * even_share).flatten()
            if len(dead):
                pool = collective.all_gather_rows(inputs[level]).double()
                picks = np.random.default_rng([*seed, level]).choice(len(pool), size=len(dead),
                                                                     replace=len(dead) > len(pool))
                self.ema_counts[level, dead] = even_share
                self.ema_sums[level, dead] = pool[torch.from_numpy(picks)] * even_share
                reseeded += len(dead)
            self.codebooks[level] = (self.ema_sums[level] / self.ema_counts[level].clamp_min(1e-12)[:, None]).float()
        verify_identical(self.codebooks, what="RQ-VAE codebooks after an update")
        return reseeded

    @torch.no_grad()
    def latents(self, vectors: torch.Tensor, *, chunk_size: int = 65536) -> torch.Tensor:
        return in_chunks(self.encoder, vectors, self.encoder_dims[-1], chunk_size=chunk_size)

    @torch.no_grad()
    def reconstruct(self, latents: torch.Tensor, *, chunk_size: int = 65536) -> torch.Tensor:
        return in_chunks(self.decoder, latents, self.encoder_dims[0], chunk_size=chunk_size)

    @classmethod
    def from_tokenizer_tensors(cls, tensors: dict[str, torch.Tensor], encoder_dims: list[int]) -> "RQVAE":
        """A plain model (no training state) from what `tokenizer_tensors` gave."""
        levels, codebook_size, latent_dim = tensors["codebooks"].shape
        model = cls(input_dim=encoder_dims[0], hidden=encoder_dims[1:-1], latent_dim=latent_dim, levels=levels,
                    codebook_size=codebook_size)
        for part in ("encoder", "decoder"):
            getattr(model, part).load_state_dict({name.removeprefix(f"{part}."): tensor for name, tensor
                                                  in tensors.items() if name.startswith(f"{part}.")})
        model.codebooks.copy_(tensors["codebooks"])
        return model

    def tokenizer_tensors(self) -> dict[str, torch.Tensor]:
        """What the codebook file keeps: codebooks, encoder and decoder weights."""
        return {"codebooks": self.codebooks} | {f"{part}.{name}": tensor for part in ("encoder", "decoder")
                                                 for name, tensor in getattr(self, part).state_dict().items()}
