"""The ablations of Q-BERT4Rec are config flags; each changes exactly what it names: no
pretraining, a single masking strategy, hybrid vs pure semantic items, ID dropout of hybrid
items. (Codes without fusion, `quant.input = "text_emb"`, is the path
tests/integration/test_quantize.py runs.)"""
import numpy as np
import torch

from qbr_dist.config import load_config
from qbr_dist.seqrec.train_loop import _mask, phases
from qbr_dist.seqrec.trained import build_model

MASK = 99


def config(*overrides):
    return load_config(None, list(overrides))


def test_without_pretraining_only_fine_tuning_has_epochs():
    pretrain, finetune = phases(config("train.pretrain_epochs=0").train)
    assert (pretrain.name, pretrain.epochs) == ("pretrain", 0) and finetune.epochs > 0


def test_a_single_masking_strategy_is_the_only_one_drawn():
    cfg = config("train.mask_weights=[0.0, 0.0, 1.0, 0.0]", "train.mask_tail=2").train
    seq = torch.arange(1, 41).view(4, 10)
    inputs, labels, chosen = _mask(seq, "pretrain", cfg, MASK, torch.Generator().manual_seed(0),
                                   torch.Generator().manual_seed(1))
    assert chosen.tolist() == [2, 2, 2, 2]  # "tail" for every sequence
    assert (inputs[:, -2:] == MASK).all() and (inputs[:, :-2] == seq[:, :-2]).all()
    assert (labels[:, -2:] == seq[:, -2:]).all() and (labels[:, :-2] == 0).all()


def test_hybrid_items_add_an_id_vector_to_the_code_embeddings(tmp_path):
    codes = np.array([[0, 0, 0], [1, 2, 0], [1, 2, 1]])
    np.save(tmp_path / "codes.npy", codes)

    def tokens(*overrides):
        spec = {"model": config("model.hidden=8", *overrides).model.__dict__, "num_items": 2,
                "codes_file": str(tmp_path / "codes.npy"), "code_sizes": [4, 4, 2]}
        return build_model(spec).tokens

    pure, hybrid = tokens(), tokens("model.tokens=hybrid")
    assert pure.ids is None and hybrid.ids is not None
    assert not hasattr(tokens("model.tokens=id"), "tables")  # item IDs only
    items = torch.tensor([1, 2])
    shared = sum(table(torch.from_numpy(codes[[1, 2]])[:, i]) for i, table in enumerate(hybrid.tables))
    assert torch.allclose(hybrid.vectors(items), shared + hybrid.ids.vectors(items))
    assert hybrid.id_dropout == 0.0 and tokens("model.tokens=hybrid", "model.id_dropout=0.5").id_dropout == 0.5


def test_an_exported_hybrid_loads_with_either_cold_scorer_and_the_same_weights(tmp_path):
    import json

    import pytest
    from safetensors.torch import save_file

    from qbr_dist.config import ConfigError
    from qbr_dist.seqrec.bert4rec import LeftOut, PrefixBackoff
    from qbr_dist.seqrec.trained import CODES_FILE, MODEL_SPEC, load_trained
    from qbr_dist.train.export import WEIGHTS

    np.save(tmp_path / CODES_FILE, np.array([[0, 0, 0], [1, 2, 0], [1, 2, 1], [2, 0, 0]]))
    np.save(tmp_path / "cold.npy", np.array([False, False, True, False]))
    spec = {"model": config("model.hidden=8", "model.tokens=hybrid").model.__dict__, "num_items": 3,
            "code_sizes": [4, 4, 2], "codebook_version": "v"}
    (tmp_path / MODEL_SPEC).write_text(json.dumps(spec))
    trained = build_model(spec | {"codes_file": str(tmp_path / CODES_FILE), "cold_file": str(tmp_path / "cold.npy")})
    save_file(trained.state_dict(), str(tmp_path / WEIGHTS))
    prefix, _ = load_trained(tmp_path, tmp_path / "cold.npy")
    alone, alone_spec = load_trained(tmp_path, tmp_path / "cold.npy", cold_codes_only=True)
    assert isinstance(prefix.tokens.untrained_ids, PrefixBackoff) and isinstance(alone.tokens.untrained_ids, LeftOut)
    assert alone_spec["model"]["cold_codes_only"] and all(
        torch.equal(a, b) for a, b in zip(prefix.state_dict().values(), alone.state_dict().values()))
    with pytest.raises(ValueError, match="would change the weights"):
        load_trained(tmp_path, tmp_path / "cold.npy", id_dropout=0.5)
    spec["model"]["tokens"] = "semantic"
    (tmp_path / MODEL_SPEC).write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="model.cold_codes_only"):
        load_trained(tmp_path, tmp_path / "cold.npy", cold_codes_only=True)
