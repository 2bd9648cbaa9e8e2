"""Items added after training join a semantic-token model from their codes alone: the trained items
score exactly as before, a new item scores exactly as a cold item with the same codes does, and an
ID-only model or codes of another depth are refused."""
import numpy as np
import pytest
import torch

from qbr_dist.config import load_config
from qbr_dist.seqrec.trained import build_model, with_new_items

CODES = np.array([[0, 0, 0], [1, 2, 0], [1, 2, 1], [2, 0, 0], [1, 2, 2]])  # row 0 unused; item 4 is cold
COLD = np.array([False, False, False, False, True])


def trained(tmp_path, tokens: str):
    np.save(tmp_path / "codes.npy", CODES)
    np.save(tmp_path / "cold.npy", COLD)
    spec = {"model": load_config(None, ["model.hidden=8", "model.max_len=6", f"model.tokens={tokens}"]).model.__dict__,
            "num_items": 4, "code_sizes": [4, 4, 3], "codebook_version": "v"}
    torch.manual_seed(0)
    model = build_model(spec | {"codes_file": str(tmp_path / "codes.npy"), "cold_file": str(tmp_path / "cold.npy")})
    with torch.no_grad():
        for parameter in model.tokens.parameters():  # biases start at zero: give every row a value of its own
            parameter.add_(torch.randn_like(parameter))
    return model.eval(), spec


def scores(model, history: list[int]) -> torch.Tensor:
    seq = torch.tensor([[0] * (6 - len(history) - 1) + history + [model.mask_token]])
    with torch.no_grad():
        return model.score_items(model.encode(seq)[:, -1])[0]


@pytest.mark.parametrize("tokens", ["hybrid", "semantic"])
def test_new_items_score_as_cold_items_with_their_codes_and_the_trained_items_as_before(tmp_path, tokens):
    model, spec = trained(tmp_path, tokens)
    # 5: the cold item's codes; 6: a level prefix no item has, with a suffix past the trained table
    grown = with_new_items(model, spec, np.array([[1, 2, 2], [3, 3, 5]]))
    assert grown.num_items == 6 and grown.mask_token == 7
    before, after = scores(model, [1, 2, 3]), scores(grown, [1, 2, 3])
    assert torch.allclose(after[:4], before, atol=1e-6)
    assert torch.isclose(after[4], before[3], atol=1e-6)  # new item 5 == cold item 4
    assert torch.isfinite(after[5])
    assert torch.allclose(scores(grown, [1, 5])[:4], scores(model, [1, 4]), atol=1e-6)  # in the history too
    assert grown.tokens.tables[-1].num_embeddings == 6 and not grown.tokens.tables[-1].weight[3:].any()


def test_an_id_only_model_and_codes_of_another_depth_are_refused(tmp_path):
    model, spec = trained(tmp_path, "id")
    with pytest.raises(ValueError, match="ID-only model has no codes"):
        with_new_items(model, spec, np.array([[1, 2, 2]]))
    model, spec = trained(tmp_path, "hybrid")
    with pytest.raises(ValueError, match="new items have 3 code levels, the model 2"):
        with_new_items(model, spec, np.array([[1, 2, 2, 0]]))


def test_a_codes_file_joined_by_hand_is_refused_in_one_line_naming_it():
    import pyarrow as pa

    from qbr_dist.inspect.recommend import new_item_codes

    def refused(ids, codes):
        table = pa.table({"item_id": pa.array(ids, pa.string()), "codes": pa.array(codes, pa.list_(pa.int32()))})
        with pytest.raises(ValueError) as err:
            new_item_codes("new.parquet", table, 3, [4, 4])
        return str(err.value)

    assert new_item_codes("new.parquet", pa.table({"item_id": ["n1", "n2"], "codes": [[1, 2, 9], [3, 3, 0]]}), 3,
                          [4, 4]).tolist() == [[1, 2, 9], [3, 3, 0]]  # a suffix has no codebook: any value
    assert refused(["n1", None], [[1, 2, 0], [1, 2, 1]]) == "--new-items new.parquet: field 'item_id' is empty in some row"
    assert refused(["n1", "n1"], [[1, 2, 0], [1, 2, 1]]).endswith("field 'item_id' repeats 'n1'; every item must appear once")
    assert refused(["n1", "n2"], [[1, 2, 0], None]).endswith("field 'codes' is empty in some row")
    assert refused(["n1", "n2"], [[1, 2, 0], [1, 2]]).endswith("another length than 3 (the model's levels and suffix)")
    assert refused(["n1", "n2"], [[1, 2, 0], [1, 4, 0]]).endswith("a code outside its level's codebook (sizes [4, 4])")
    assert refused(["n1"], [[-1, 2, 0]]).endswith("a code outside its level's codebook (sizes [4, 4])")
