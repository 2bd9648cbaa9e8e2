"""Training inputs reach the engine's device (a GPU in production; here the meta device stands in for it)."""
import torch

from qbr_dist.train.runtime import on_device


def test_tensors_of_a_batch_move_and_other_values_stay():
    batch = {"seq": torch.ones(2, 3, dtype=torch.long), "weights": torch.zeros(2), "name": "kept"}
    moved = on_device(batch, torch.device("meta"))
    assert moved["seq"].device.type == "meta" and moved["seq"].dtype == torch.long
    assert moved["weights"].device.type == "meta" and moved["name"] == "kept"
    assert batch["seq"].device.type == "cpu", "the caller's batch is left as it was"


def test_a_single_tensor_moves():
    assert on_device(torch.arange(3), torch.device("meta")).device.type == "meta"


def test_float_inputs_take_the_parameter_type_and_indices_keep_theirs():
    batch = {"text": torch.zeros(2, 4), "tokens": torch.ones(2, 3, dtype=torch.long)}
    moved = on_device(batch, torch.device("cpu"), torch.bfloat16)
    assert moved["text"].dtype == torch.bfloat16 and moved["tokens"].dtype == torch.long
