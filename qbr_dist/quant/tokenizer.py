"""Item vectors to level codes, as a codebook file says: the residual codebooks, behind the
RQ-VAE encoder when the file was made in 'rqvae' mode. The one place codes are computed after
the quantize stage (retokenization, any later catalog)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from qbr_dist.quant.codebook import load_codebooks
from qbr_dist.quant.residual import encode
from qbr_dist.quant.rqvae import RQVAE, in_chunks


class Tokenizer:
    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        self.codebooks = tensors["codebooks"].float()
        self.mode = metadata.get("mode", "rkmeans")
        self.encoder = None
        if self.mode == "rqvae":
            self.encoder = RQVAE.from_tokenizer_tensors(tensors, json.loads(metadata["encoder_dims"])).encoder.eval()

    @property
    def input_width(self) -> int:
        """How many values an item vector to code has."""
        return self.encoder[0].in_features if self.encoder is not None else self.codebooks.shape[-1]

    @staticmethod
    def parts(path: Path) -> dict:
        """The file's tensors (numpy) and metadata, to ship through Ray's object store once."""
        tensors, version, metadata = load_codebooks(path)
        return {"tensors": {name: t.numpy() for name, t in tensors.items()}, "metadata": metadata, "version": version}

    @classmethod
    def from_parts(cls, parts: dict) -> Tokenizer:
        return cls({name: torch.from_numpy(np.array(a)) for name, a in parts["tensors"].items()}, parts["metadata"])

    @torch.no_grad()
    def codes(self, vectors: torch.Tensor, *, chunk_size: int = 65536) -> torch.Tensor:
        """(n, L) int64 codes."""
        vectors = vectors.float()
        if self.encoder is not None:  # the latents the codebooks quantize, as wide as a code vector
            vectors = in_chunks(self.encoder, vectors, self.codebooks.shape[-1], chunk_size=chunk_size)
        return encode(vectors, self.codebooks, chunk_size=chunk_size)
