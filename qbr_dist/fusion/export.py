"""The trained fusion model outside its training job, so any catalog can be fused later.

The model file holds every weight except the ID table: trained ID vectors are a column of the
fused parquet files (one row per item), which retokenization joins by item id, so a worker's
memory does not grow with the catalog. Items without a trained ID vector (new or cold) take
their query from the content head. Features come from Arrow batches in the encode and
structure table formats; a null or absent column is a missing modality.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from qbr_dist import artifacts
from qbr_dist.fusion.features import padded_tokens, vector_rows
from qbr_dist.fusion.model import CrossModalFusion

MODEL = "fusion_model.safetensors"
ID_VECTOR = "id_vector"  # column of the fused parquet files: the trained ID vector, null for items never seen
VECTOR_COLUMNS = {"text": "text_emb", "image": "image_emb", "cooc": "cooc_emb"}


def save_model(path: Path, model: CrossModalFusion, *, arguments: dict, max_tokens: int) -> None:
    """Weights without the ID table, and the constructor arguments to rebuild the model."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().float().contiguous().clone() for name, tensor in model.state_dict().items()
               if not name.startswith("id_embedding.")}
    with artifacts.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"arguments": json.dumps(arguments), "max_tokens": str(max_tokens)})


def load_model(path: Path) -> tuple[CrossModalFusion, int]:
    """(model in eval mode with an empty ID table, max tokens per item)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    model = CrossModalFusion(num_items=0, **json.loads(metadata["arguments"]))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not name.startswith("id_embedding.") for name in missing):
        raise ValueError(f"{path}: fusion weights do not fit the model (missing {missing}, unexpected {unexpected})")
    return model.eval(), int(metadata["max_tokens"])


def input_widths(model: CrossModalFusion) -> dict[str, int]:
    """{column: width} of every vector column the model reads from a batch, the trained ID vector's included."""
    return {column: model.project[name][1].in_features for name, column in VECTOR_COLUMNS.items()} | {
        ID_VECTOR: model.final_norm.normalized_shape[0]}


def batch_inputs(batch: pa.Table, model: CrossModalFusion, max_tokens: int) -> dict[str, torch.Tensor]:
    """The model's feature inputs from an Arrow batch of item features."""
    inputs, widths = {}, input_widths(model)
    for name, column in VECTOR_COLUMNS.items():
        matrix, present = vector_rows(batch, column, widths[column])
        inputs[name], inputs[f"{name}_present"] = torch.from_numpy(matrix), torch.from_numpy(present)
    inputs["tokens"] = torch.from_numpy(padded_tokens(batch, max_tokens))
    return inputs


@torch.no_grad()
def fuse_batch(model: CrossModalFusion, batch: pa.Table, max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fused vectors (B, d), whether each item had a trained ID vector, whether it had anything at all: an ID
    vector, a vector of some modality or a structure token; without any, its fused vector is the same constant
    for every such item)."""
    id_vectors, has_id = vector_rows(batch, ID_VECTOR, input_widths(model)[ID_VECTOR])
    out = model.fuse(torch.from_numpy(id_vectors), batch_inputs(batch, model, max_tokens),
                     use_id=torch.from_numpy(has_id))
    return out["fused"].float().numpy(), has_id, has_id | out["present"].any(1).numpy()
