"""Image embeddings with any open_clip model.

Weights come from a local file (`weights`), or are explicitly declined (`random_init=True`, for
tests and benchmarks that say so). Anything else is an error: a model without its weights must
never pass for a real encoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qbr_dist.encode.text import EncoderUnavailable


def register_model_config(path: str | Path) -> str:
    """Make an open_clip architecture defined in a JSON file usable by its file name (without .json)."""
    import open_clip

    path = Path(path)
    if not path.is_file():
        raise EncoderUnavailable(f"open_clip model config {path} not found")
    open_clip.add_model_config(path)
    return path.stem


def resolve_model(model: str, model_config: str = "") -> str:
    """The open_clip name to load: `model`, after registering its JSON definition when one is given."""
    return register_model_config(model_config) if model_config else model


def input_size(model: str) -> int:
    """Side of the square images the open_clip model takes."""
    import open_clip

    config = open_clip.get_model_config(model)
    if config is None:
        raise EncoderUnavailable(f"image encoder {model!r}: not an open_clip model name")
    size = config["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


RANDOM_INIT_SEED = 0


class ImageEncoder:
    def __init__(self, model: str, *, weights: str = "", random_init: bool = False, device: str = "cpu"):
        import open_clip

        if model not in open_clip.list_models():
            raise EncoderUnavailable(f"image encoder {model!r}: not an open_clip model name")
        if weights and not Path(weights).is_file():
            raise EncoderUnavailable(f"image encoder {model!r}: weights file {weights} not found")
        if not weights and not random_init:
            raise EncoderUnavailable(
                f"image encoder {model!r}: no weights given; set encode.image_weights to a local "
                "checkpoint file (hub downloads are not used), or encode.image_random_init = true on purpose"
            )
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)  # random weights, when asked for, are the same in every run
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=weights or None)
        self.model = self.model.to(device).eval()
        self.device = device
        self.image_size = self.model.visual.image_size
        self.dim = self.model.visual.output_dim

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """images: (n, 3, H, W) float, already normalised by `preprocess`; returns (n, dim) unit vectors."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = self.model.encode_image(images.to(self.device))
        return torch.nn.functional.normalize(features, dim=-1).float().cpu().numpy()
