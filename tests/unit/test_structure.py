"""Structural item features: field tokens, co-occurrence counts, PPMI-SVD embedding, table layout."""
import numpy as np
import pyarrow as pa
import pytest

from qbr_dist.encode.structure import cooccurrence_embedding, cooccurrence_matrix, field_tokens, structure_table


def test_field_tokens_split_on_separator_and_order_vocab_by_field_then_value():
    tokens, vocab = field_tokens({"class": ["Comedy Animation", None, " Drama  Comedy "], "brand": ["x", "", "x"]},
                                 separator=" ")
    assert vocab == ["<pad>", "class=Animation", "class=Comedy", "class=Drama", "brand=x"]
    assert tokens == [[1, 2, 4], [], [2, 3, 4]]


def test_field_tokens_keep_a_whole_value_without_separator():
    tokens, vocab = field_tokens({"category": ["Home & Kitchen", "Books", "Home & Kitchen"]})
    assert vocab == ["<pad>", "category=Books", "category=Home & Kitchen"]
    assert tokens == [[2], [1], [2]]
    assert all(0 not in item for item in tokens)


def test_field_tokens_drop_rare_tokens_counting_items_not_occurrences():
    tokens, vocab = field_tokens({"genre": ["a a b", "a", "c"]}, separator=" ", min_count=2)
    assert vocab == ["<pad>", "genre=a"]
    assert tokens == [[1], [1], []]


def test_field_tokens_refuse_fields_of_different_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        field_tokens({"category": ["a", "b"], "brand": ["x"]})


def dense(matrix):
    return matrix.toarray().astype(int)


def test_cooccurrence_window_one_counts_neighbours_within_a_sequence():
    sequences = [np.array([0, 0, 1, 2, 3]), np.array([3, 1, 1])]
    got = dense(cooccurrence_matrix(sequences, 4, window=1))
    expected = np.zeros((5, 5), int)
    for a, b in [(1, 2), (2, 3), (3, 1)]:  # padding skipped; (1, 1) and the 3|3 boundary are not pairs
        expected[a, b] += 1
        expected[b, a] += 1
    np.testing.assert_array_equal(got, expected)


def test_cooccurrence_window_two_reaches_one_further_but_not_across_sequences():
    sequences = [np.array([1, 2, 3]), np.array([4, 1, 0])]
    matrix = cooccurrence_matrix(sequences, 4, window=2)
    got = dense(matrix)
    expected = np.zeros((5, 5), int)
    for a, b in [(1, 2), (2, 3), (1, 3), (4, 1)]:
        expected[a, b] += 1
        expected[b, a] += 1
    np.testing.assert_array_equal(got, expected)
    assert matrix.dtype == np.float32 and matrix.shape == (5, 5)
    assert got[3, 4] == 0  # 3 ends the first sequence, 4 starts the second


def test_cooccurrence_refuses_unknown_item_indices():
    with pytest.raises(ValueError, match="out of range"):
        cooccurrence_matrix([np.array([1, 7])], 4, window=1)


def random_sequences(num_items, count, seed=0):
    rng = np.random.default_rng(seed)
    return [np.concatenate([np.zeros(rng.integers(0, 3), int), rng.integers(1, num_items + 1, rng.integers(0, 12))])
            for _ in range(count)]


def test_chunked_counts_equal_one_chunk():
    sequences = random_sequences(20, 50)
    whole = cooccurrence_matrix(sequences, 20, window=3)
    chunked = cooccurrence_matrix(iter(sequences), 20, window=3, chunk_sequences=3)
    assert whole.nnz > 0
    np.testing.assert_array_equal(whole.toarray(), chunked.toarray())
    np.testing.assert_array_equal(whole.toarray(), whole.toarray().T)


def test_embedding_is_deterministic_unit_length_and_zero_without_cooccurrence():
    matrix = cooccurrence_matrix(random_sequences(30, 80), 33, window=2)  # items 31..33 never seen
    first, has_first = cooccurrence_embedding(matrix, dim=8, seed=3)
    second, has_second = cooccurrence_embedding(matrix, dim=8, seed=3)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(has_first, has_second)
    assert first.shape == (34, 8) and first.dtype == np.float32
    assert not has_first[[0, 31, 32, 33]].any() and has_first[1:31].all()
    assert not first[~has_first].any()
    np.testing.assert_allclose(np.linalg.norm(first[has_first], axis=1), 1.0, atol=1e-5)


def test_embedding_dim_beyond_the_items_is_clamped_and_zero_padded():
    matrix = cooccurrence_matrix([np.array([1, 2, 3, 1, 3])], 3, window=1)
    embedding, has_cooc = cooccurrence_embedding(matrix, dim=6, seed=0)
    assert embedding.shape == (4, 6)
    assert has_cooc.tolist() == [False, True, True, True]
    assert not embedding[:, 2:].any()  # 3 items with co-occurrence: ARPACK allows 2 components


def test_planted_groups_are_closer_within_than_across():
    rng = np.random.default_rng(0)
    groups = [np.arange(1, 21), np.arange(21, 41)]
    sequences = [rng.choice(groups[i % 2], size=10) for i in range(400)]
    embedding, has_cooc = cooccurrence_embedding(cooccurrence_matrix(sequences, 40, window=2), dim=8, seed=0)
    assert has_cooc[1:].all()
    cosine = embedding[1:] @ embedding[1:].T
    label = np.repeat([0, 1], 20)
    same = label[:, None] == label[None, :]
    off_diagonal = ~np.eye(40, dtype=bool)
    within, across = cosine[same & off_diagonal].mean(), cosine[~same].mean()
    assert within - across > 0.5, (within, across)


def test_structure_table_layout():
    embedding = np.zeros((3, 4), np.float32)
    embedding[1] = [1, 0, 0, 0]
    table = structure_table(["a", "b"], [[1, 3], []], embedding, np.array([False, True, False]))
    assert table.num_rows == 2
    assert table.schema == pa.schema([("item_id", pa.string()), ("struct_tokens", pa.list_(pa.int32())),
                                      ("cooc_emb", pa.list_(pa.float32(), 4)), ("has_cooc", pa.bool_())])
    assert table.to_pydict() == {"item_id": ["a", "b"], "struct_tokens": [[1, 3], []],
                                 "cooc_emb": [[1.0, 0.0, 0.0, 0.0], [0.0] * 4], "has_cooc": [True, False]}


def test_structure_table_refuses_misaligned_inputs():
    with pytest.raises(ValueError, match="padding"):
        structure_table(["a", "b"], [[1], []], np.zeros((2, 4), np.float32), np.zeros(2, bool))
