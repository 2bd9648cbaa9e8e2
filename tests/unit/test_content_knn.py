"""Content k-NN baseline: cosine of every item to the mean of the user's last items, text only."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from qbr_dist.seqrec.content_knn import content_knn_scorer, text_matrix
from qbr_dist.seqrec.metrics import evaluate_examples


def test_text_matrix_is_in_item_order_normalised_with_zero_rows_for_missing(tmp_path):
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.array([3, 4, 0, 2, 9, 9], np.float32)), 2,
                                                mask=pa.array([False, False, True]))
    pq.write_table(pa.table({"item_id": ["b", "a", "zz"], "text_emb": vectors}), tmp_path / "part.parquet")
    matrix = text_matrix([tmp_path / "part.parquet"], ["a", "b", "c"])
    assert matrix.shape == (4, 2)
    np.testing.assert_allclose(matrix, [[0, 0], [0, 1], [0.6, 0.8], [0, 0]], atol=1e-6)


def test_the_item_closest_to_the_last_items_ranks_first():
    text = torch.nn.functional.normalize(torch.tensor(
        [[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    text[0] = 0
    scorer = content_knn_scorer(text, last=2)
    scores = scorer([np.array([3, 1, 2])])(1, 5)  # last two: items 1 and 2, both along the first axis
    assert scores.argmax().item() + 1 in (1, 2) and scores[0, 3].item() < scores[0, 0].item()
    metrics = evaluate_examples([(np.array([3, 1]), 2), (np.array([1, 3]), 4)], content_knn_scorer(text, last=1),
                                num_items=4, chunk_size=2, exclude_history=True)
    assert metrics["MRR"] == pytest.approx(1.0)  # the last item's neighbour, with the history left out, comes first
