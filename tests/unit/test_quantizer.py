"""Residual k-means, codebook versions and files, and unique semantic IDs, in one process."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from qbr_dist.quant.codebook import CodebookMismatch, codebook_version, load_codebooks, save_codebooks
from qbr_dist.quant.residual import decode, encode, level_stats, reconstruction_error, residual_kmeans
from qbr_dist.quant.semantic_ids import Previous, assign_suffixes, collision_rate


def vectors(n=600, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_each_level_reduces_the_reconstruction_error():
    data = vectors()
    codebooks, codes, stats = residual_kmeans(data, levels=3, codebook_size=8, iterations=10)
    assert codebooks.shape == (3, 8, 16) and codes.shape == (600, 3)
    errors = [reconstruction_error(data, decode(codes[:, :level], codebooks[:level])) for level in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.9
    assert [s.level for s in stats] == [0, 1, 2] and all(s.dead_codes == 0 for s in stats)


def test_encode_reproduces_the_training_codes():
    data = vectors(seed=1)
    codebooks, codes, _ = residual_kmeans(data, levels=2, codebook_size=6, iterations=8)
    assert torch.equal(encode(data, codebooks, chunk_size=50), codes)
    assert decode(codes, codebooks).shape == data.shape


def test_level_stats_usage_perplexity_dead_codes():
    stats = level_stats(0, torch.tensor([5, 5, 0, 0]), inertia=1.0)
    assert stats.usage == 0.5 and stats.dead_codes == 2 and stats.perplexity == pytest.approx(2.0)


def test_codebook_file_round_trip_and_tampering(tmp_path):
    codebooks = torch.randn(2, 4, 3)
    version = save_codebooks(tmp_path / "cb.safetensors", {"codebooks": codebooks}, levels="2")
    loaded, loaded_version, metadata = load_codebooks(tmp_path / "cb.safetensors", expected_version=version)
    assert torch.equal(loaded["codebooks"], codebooks) and metadata["levels"] == "2"
    assert loaded_version == version == codebook_version({"codebooks": codebooks})
    with pytest.raises(CodebookMismatch, match="version .* was expected"):
        load_codebooks(tmp_path / "cb.safetensors", expected_version="0" * 16)
    from safetensors.torch import save_file

    save_file({"codebooks": codebooks + 1}, str(tmp_path / "cb.safetensors"), metadata={"version": version})
    with pytest.raises(CodebookMismatch, match="changed after it was written"):
        load_codebooks(tmp_path / "cb.safetensors")


def test_suffixes_make_every_id_unique_in_item_order():
    ids = np.array(["d", "b", "a", "c", "e"])
    codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4]])
    suffixes = assign_suffixes(ids, codes)
    assert dict(zip(ids, suffixes)) == {"b": 0, "c": 1, "d": 2, "a": 0, "e": 1}
    assert len({(*c, s) for c, s in zip(codes.tolist(), suffixes)}) == 5
    assert collision_rate(codes) == 1.0 and collision_rate(np.array([[1], [2]])) == 0.0


def test_new_items_never_change_existing_suffixes():
    ids, codes = np.array(["b", "c"]), np.array([[1, 2], [1, 2]])
    first = assign_suffixes(ids, codes)
    grown_ids = np.array(["a", "b", "c", "z"])
    grown_codes = np.array([[1, 2], [1, 2], [1, 2], [5, 5]])
    grown = assign_suffixes(grown_ids, grown_codes, Previous(ids, codes, first))
    assert dict(zip(grown_ids, grown)) == {"b": 0, "c": 1, "a": 2, "z": 0}  # "a" sorts first but comes later


def test_an_item_whose_codes_changed_takes_a_fresh_suffix():
    previous = Previous(np.array(["a", "b"]), np.array([[1], [1]]), np.array([0, 1]))
    suffixes = assign_suffixes(np.array(["a", "b"]), np.array([[2], [1]]), previous)
    assert suffixes.tolist() == [0, 1]  # "a" moved to tuple (2,), "b" kept its 1


def test_new_items_never_take_a_suffix_their_tuple_had_before():
    previous = Previous(np.array(["a", "b"]), np.array([[1], [1]]), np.array([0, 1]))
    assert assign_suffixes(np.array(["n"]), np.array([[1]]), previous).tolist() == [2]  # a table of new items only
    kept_and_new = assign_suffixes(np.array(["a", "c"]), np.array([[1], [1]]), previous)  # "b" left the catalog
    assert kept_and_new.tolist() == [0, 2]
    assert assign_suffixes(np.array(["z"]), np.array([[7]]), previous).tolist() == [0]  # a tuple never seen


def test_earlier_files_that_disagree_never_give_two_items_one_semantic_id():
    """Two earlier files, concatenated first file first: one gave "n" the ID "a" holds in the other."""
    previous = Previous(np.array(["n", "a"]), np.array([[1], [1]]), np.array([0, 0]))
    assert assign_suffixes(np.array(["a", "n"]), np.array([[1], [1]]), previous).tolist() == [0, 1]


def test_an_item_keeps_the_suffix_of_its_current_tuple_whichever_file_lists_it_first():
    previous = Previous(np.array(["x", "x", "y"]), np.array([[2], [1], [1]]), np.array([0, 0, 1]))
    assert assign_suffixes(np.array(["x", "y"]), np.array([[1], [1]]), previous).tolist() == [0, 1]


def test_duplicate_item_ids_are_refused():
    with pytest.raises(ValueError, match="duplicate item ids"):
        assign_suffixes(np.array(["a", "a"]), np.array([[1], [2]]))


def test_wide_code_ranges_group_correctly_and_arrow_ids_are_accepted():
    import pyarrow as pa

    big = 2**40
    codes = np.array([[big, 1], [big, 1], [1, big]])  # 41 + 41 bits: too wide for one int64 key
    assert collision_rate(codes) == pytest.approx(2 / 3)
    suffixes = assign_suffixes(pa.array(["y", "x", "z"]), codes)
    assert suffixes.tolist() == [1, 0, 0]


def staged_table(ids, codes, buckets, *, content_query=None, contentless=None):
    """Staged rows as a Retokenizer actor writes them; the flags False unless given."""
    import pyarrow as pa

    from qbr_dist.quant.retokenize import with_buckets

    flat = pa.array(np.asarray(codes, dtype=np.int32).ravel())
    unflagged = np.zeros(len(ids), bool)
    return with_buckets(pa.table({"item_id": ids, "codes": pa.FixedSizeListArray.from_arrays(flat, codes.shape[1]),
                                  "content_query": unflagged if content_query is None else content_query,
                                  "contentless": unflagged if contentless is None else contentless}), buckets)


def test_the_bucketed_suffix_pass_gives_the_single_pass_assignment(tmp_path):
    import pyarrow.parquet as pq

    from qbr_dist.data.quarantine import Quarantine
    from qbr_dist.quant.codes import SUFFIX_KEY, read_codes, write_codes
    from qbr_dist.quant.retokenize import assign_in_buckets

    rng = np.random.default_rng(0)
    n, buckets = 3000, 16  # 64 code tuples of ~47 items each, ~190 items per bucket
    ids = np.array([f"item{i}" for i in rng.permutation(n)])
    codes = rng.integers(0, 4, size=(n, 3))
    old = rng.choice(n, size=2000, replace=False)
    old_ids, old_codes = np.r_[ids[old], ["gone0", "gone1"]], np.r_[codes[old], [[0, 0, 0], [1, 1, 1]]]
    moved = rng.random(len(old_codes)) < 0.2
    old_codes[moved] = rng.integers(0, 4, size=(moved.sum(), 3))
    old_suffixes = assign_suffixes(old_ids, old_codes)
    write_codes(tmp_path / "previous.parquet", old_ids, old_codes, old_suffixes, "v1")
    expected = assign_suffixes(ids, codes, Previous(old_ids, old_codes, old_suffixes))

    staged = staged_table(ids, codes, buckets)
    assert len(set(staged.column("bucket").to_pylist())) == buckets
    pq.write_table(staged, tmp_path / "staged.parquet", row_group_size=500)
    counts = assign_in_buckets([tmp_path / "staged.parquet"], [tmp_path / "previous.parquet"], tmp_path / "codes.parquet",
                               "v1", buckets, work=tmp_path / "work", source="features", quarantine=Quarantine(None),
                               trained=[tmp_path / "previous.parquet"])

    table = read_codes(tmp_path / "codes.parquet", expected_version="v1")
    got = dict(zip(table.column("item_id").to_pylist(), map(tuple, table.column("codes").to_pylist())))
    assert got == {i: (*c, s) for i, c, s in zip(ids.tolist(), codes.tolist(), expected.tolist())}
    recoded = set(old_ids[:2000][(old_codes[:2000] != codes[old]).any(axis=1)].tolist())  # the moved ones
    new = set(ids.tolist()) - set(old_ids.tolist())
    shown = {name: counts.pop(f"{name}_shown") for name in ("recoded", "new_items")}
    assert counts == {"items": n, "collision_rate": collision_rate(codes), "suffix_table_size": expected.max() + 1,
                      "recoded": len(recoded), "new_items": len(new), "content_queries": 0, "contentless": 0}
    assert len(recoded) > 300 and shown == {"recoded": sorted(recoded)[:5], "new_items": sorted(new)[:5]}
    assert table.schema.metadata[SUFFIX_KEY] == str(expected.max() + 1).encode()

    shuffled = staged.take(pa.array(rng.permutation(n)))  # the Ray Data job's rows come in no fixed order
    pq.write_table(shuffled, tmp_path / "shuffled.parquet", row_group_size=500)
    again = assign_in_buckets([tmp_path / "shuffled.parquet"], [tmp_path / "previous.parquet"],
                              tmp_path / "again.parquet", "v1", buckets, work=tmp_path / "work-again",
                              source="features", quarantine=Quarantine(None), trained=[tmp_path / "previous.parquet"])
    assert (tmp_path / "again.parquet").read_bytes() == (tmp_path / "codes.parquet").read_bytes()
    assert again == counts | {f"{name}_shown": ids for name, ids in shown.items()}


def test_an_item_is_recoded_when_no_trained_row_of_it_has_its_codes_and_new_when_there_is_none():
    from qbr_dist.quant.semantic_ids import code_changes

    trained = Previous(np.array(["a", "b", "b", "c"]), np.array([[1, 2], [3, 4], [5, 6], [7, 8]]), np.zeros(4))
    ids, codes = np.array(["a", "b", "c", "new"]), np.array([[1, 2], [5, 6], [8, 7], [1, 2]])
    new, recoded = code_changes(ids, codes, trained)
    assert new.tolist() == [False, False, False, True] and recoded.tolist() == [False, False, True, False]
    new, recoded = code_changes(ids, codes, None)
    assert new.all() and not recoded.any()


def test_suffixes_of_an_earlier_retokenization_are_kept_across_runs(tmp_path):
    """Quantize coded a (tuple 1); a first retokenization added n5; a second adds n0, which sorts before n5.
    Given the first's codes to keep, n5 keeps its suffix; from the quantize codes alone it would move."""
    import pyarrow.parquet as pq

    from qbr_dist.data.quarantine import Quarantine
    from qbr_dist.quant.codes import read_codes, write_codes
    from qbr_dist.quant.retokenize import assign_in_buckets

    def run(ids, previous, name):
        pq.write_table(staged_table(np.array(ids), np.ones((len(ids), 2), np.int64), 4), tmp_path / f"{name}.staged")
        assign_in_buckets([tmp_path / f"{name}.staged"], previous, tmp_path / f"{name}.parquet", "v1", 4,
                          work=tmp_path / f"{name}-work", source="features", quarantine=Quarantine(None))
        table = read_codes(tmp_path / f"{name}.parquet", expected_version="v1")
        return dict(zip(table.column("item_id").to_pylist(), (c[-1] for c in table.column("codes").to_pylist())))

    write_codes(tmp_path / "quantize.parquet", np.array(["a"]), np.ones((1, 2), np.int64), np.array([0]), "v1")
    quantize = tmp_path / "quantize.parquet"
    assert run(["a", "n5"], [quantize], "first") == {"a": 0, "n5": 1}
    assert run(["a", "n0", "n5"], [quantize], "alone") == {"a": 0, "n0": 1, "n5": 2}
    assert run(["a", "n0", "n5"], [tmp_path / "first.parquet", quantize], "kept") == {"a": 0, "n0": 2, "n5": 1}
    # n0 and n5 leave; a later item gets none of the IDs of the files given, however many runs back
    assert run(["a"], [tmp_path / "kept.parquet", quantize], "left") == {"a": 0}
    later = run(["a", "z"], [tmp_path / "left.parquet", tmp_path / "kept.parquet", quantize], "later")
    assert later == {"a": 0, "z": 3}


def test_every_row_of_an_item_id_repeated_in_two_buckets_is_quarantined_and_the_others_get_their_codes(tmp_path):
    import json

    import pyarrow.parquet as pq

    from qbr_dist.data.quarantine import DataError, Quarantine
    from qbr_dist.quant.codes import read_codes
    from qbr_dist.quant.retokenize import assign_in_buckets

    codes = np.arange(40).reshape(20, 2)
    flags = np.isin(np.arange(20), [3, 7, 19])  # i3's row and both of i7's
    staged = staged_table(np.array([f"i{k}" for k in range(19)] + ["i7"]), codes, 8, content_query=flags,
                          contentless=flags)
    bucket = staged.column("bucket").to_pylist()
    assert bucket[7] != bucket[19]  # the two rows of "i7" have their codes in different buckets
    pq.write_table(staged, tmp_path / "staged.parquet")
    with Quarantine(tmp_path / "quarantine.jsonl") as quarantine:
        counts = assign_in_buckets([tmp_path / "staged.parquet"], [], tmp_path / "codes.parquet", "v1", 8,
                                   work=tmp_path / "work", source="features", quarantine=quarantine)
    assert counts["items"] == 18 and counts["content_queries"] == counts["contentless"] == 1  # i3's; i7 is left out
    coded = read_codes(tmp_path / "codes.parquet", expected_version="v1").column("item_id").to_pylist()
    assert sorted(coded) == sorted(f"i{k}" for k in range(19) if k != 7)
    records = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert records == [{"source": "features", "where": f"item 'i7' (occurrence {k} of 2)", "field": "item_id",
                        "reason": "item id repeated in the table (every item must appear once)"} for k in (1, 2)]

    pq.write_table(staged_table(np.array(["a", "a", "b", "b"]), codes[:4], 8), tmp_path / "twice.parquet")
    with pytest.raises(DataError, match="^features: every codable row \\(4\\) repeats an item id; every item must appear once$"):
        assign_in_buckets([tmp_path / "twice.parquet"], [], tmp_path / "twice-codes.parquet", "v1", 8,
                          work=tmp_path / "work2", source="features", quarantine=Quarantine(None))
    assert not (tmp_path / "twice-codes.parquet").exists()


def test_buckets_are_fixed_functions_of_the_codes_and_the_id_bytes():
    import pyarrow as pa

    from qbr_dist.data.buckets import id_buckets
    from qbr_dist.quant.retokenize import code_buckets

    ids = pa.array(["x", "item1", "", "élan", "item1"]).slice(1)  # an offset into the buffers
    assert id_buckets(ids, 1000).tolist() == id_buckets(["item1", "", "élan", "item1"], 1000).tolist()
    assert id_buckets(ids, 1000)[0] == id_buckets(ids, 1000)[3] and id_buckets([], 5).shape == (0,)
    spread = id_buckets([f"item{i:09d}" for i in range(10_000)], 10)
    assert np.bincount(spread, minlength=10).min() > 900  # ids that differ in one digit spread evenly
    codes = np.array([[1, 2, 3], [3, 2, 1], [1, 2, 3]])
    assert code_buckets(codes, 1000)[0] == code_buckets(codes, 1000)[2] != code_buckets(codes, 1000)[1]


def test_a_feature_table_without_the_vectors_the_tokenizer_was_fit_on_is_refused_naming_the_file(tmp_path):
    from qbr_dist.quant.retokenize import check_feature_files

    good, plain = tmp_path / "good.parquet", tmp_path / "plain.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(8, np.float32)), 4)
    pq.write_table(pa.table({"item_id": ["a", "b"], "text_emb": vectors}), good)
    pq.write_table(pa.table({"item_id": ["a", "b"], "text_emb": pa.array([[0.0] * 4] * 2)}), plain)
    check_feature_files([good, plain], {"text_emb": 4})  # plain lists: sampled here, every row checked as read
    wide_plain, mixed = tmp_path / "wide_plain.parquet", tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "text_emb": pa.array([None, [0.0] * 8])}), wide_plain)
    with pytest.raises(ValueError, match=r"wide_plain.parquet: column 'text_emb' is list<.*>; expected vectors of 4"):
        check_feature_files([wide_plain], {"text_emb": 4})
    pq.write_table(pa.table({"item_id": ["a", "b", "c"], "text_emb": pa.array([None, [0.0] * 5, [0.0] * 4])}), mixed)
    check_feature_files([mixed], {"text_emb": 4})  # one bad vector is the stream's to quarantine, not the table's end
    cases = {"no_text": ({"item_id": ["a"]}, r"no column 'text_emb' \(.*found item_id\)"),
             "wide": ({"item_id": ["a"], "text_emb": pa.FixedSizeListArray.from_arrays(pa.array([0.0] * 8), 8)},
                      r"column 'text_emb' is fixed_size_list<\w+: double>\[8\]; expected vectors of 4 floats"),
             "words": ({"item_id": ["a"], "text_emb": ["a film"]}, r"column 'text_emb' is string; expected"),
             "nulls": ({"item_id": ["a"], "text_emb": pa.array([[None] * 4])},
                       r"column 'text_emb' is list<\w+: null>: every value null \(how pandas writes NaN\); expected")}
    for name, (columns, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table(columns), path)
        with pytest.raises(ValueError, match=rf"^{path}: {message}"):
            check_feature_files([good, path], {"text_emb": 4})
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"broken.parquet: not a parquet feature table"):
        check_feature_files([tmp_path / "broken.parquet"], {})
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"item_id": [1, 2], "text_emb": vectors}), numbers)
    with pytest.raises(ValueError, match=r"numbers.parquet: column 'item_id' is int64; expected item ids as text"):
        check_feature_files([good, numbers], {"text_emb": 4})
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string()), "text_emb": pa.array([], vectors.type)}), empty)
    with pytest.raises(ValueError, match=r"empty.parquet: a feature table of no rows"):
        check_feature_files([empty], {"text_emb": 4})
    check_feature_files([good, empty], {"text_emb": 4})  # an empty file among others is fine


def test_a_codes_file_knows_its_levels_without_the_suffix(tmp_path):
    from qbr_dist.quant.codes import code_levels, write_codes

    write_codes(tmp_path / "c.parquet", pa.array(["a", "b"]), np.array([[1, 2, 3], [1, 2, 4]]), np.array([0, 0]), "v")
    write_codes(tmp_path / "empty.parquet", pa.array([], pa.string()), np.zeros((0, 3), int), np.zeros(0, int), "v")
    assert code_levels(tmp_path / "c.parquet") == 3 and code_levels(tmp_path / "empty.parquet") == 0


def test_fused_retokenization_needs_one_of_the_runs_vectors_and_checks_the_width_of_those_there(tmp_path):
    from qbr_dist.quant.retokenize import check_feature_files

    text_only = tmp_path / "text.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "text_emb": pa.FixedSizeListArray.from_arrays(pa.array([0.0] * 4), 4)}),
                   text_only)
    run = {"text_emb": 4, "image_emb": 8}
    check_feature_files([text_only], run, any_of=True)  # no images for these items: fusion takes them as missing
    with pytest.raises(ValueError, match=r"no column 'image_emb' \(a feature table has item_id and each of"):
        check_feature_files([text_only], run)
    with pytest.raises(ValueError, match=r"fixed_size_list<\w+: double>\[4\]; expected vectors of 6"):
        check_feature_files([text_only], {"text_emb": 6, "image_emb": 8}, any_of=True)
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"item_id": ["a"], "struct_tokens": [[1]]}), bare)
    with pytest.raises(ValueError, match=r"no column 'text_emb', 'image_emb' \(a feature table has item_id and one of"):
        check_feature_files([bare], run, any_of=True)
    pq.write_table(pa.table({"id": ["a"]}), bare)
    with pytest.raises(ValueError, match=r"bare.parquet: no column 'item_id'"):
        check_feature_files([bare], {})


def test_bad_vectors_names_each_row_of_another_length_or_with_a_value_that_is_not_a_finite_number():
    from qbr_dist.fusion.features import bad_vectors

    nan, inf = float("nan"), float("inf")
    plain = pa.array([[1.0, 2.0], None, [nan, 1.0], [1.0, None], [1.0, 2.0, 3.0], [], [2.0, -inf], [0.0, 0.0]],
                     pa.list_(pa.float32()))
    assert bad_vectors(plain, 2) == {2: "a NaN value", 3: "a null value", 4: "a vector of 3 values; expected 2",
                                     5: "a vector of 0 values; expected 2", 6: "an infinite value"}
    hidden = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6], pa.int32()), pa.array([1.0, 2.0, nan, 1.0, 5.0, inf]),
                                      mask=pa.array([False, True, False]))  # a null row with values behind it
    assert bad_vectors(hidden, 2) == {2: "an infinite value"}
    assert bad_vectors(pa.nulls(3), 2) == {}  # a column of nulls alone, as pandas writes one: a missing modality
    fixed = pa.array([[1.0, 2.0], None, [inf, 1.0]], pa.list_(pa.float64(), 2)).slice(1)  # an offset into the buffers
    assert bad_vectors(fixed, 2) == {1: "an infinite value"}
    assert bad_vectors(fixed, 3) == {1: "a vector of 2 values; expected 3"}  # the length is named before the values


def test_usable_rows_leaves_out_and_lists_rows_without_an_id_or_with_a_bad_vector():
    from qbr_dist.quant.retokenize import QUARANTINED, usable_rows

    batch = pa.table({"item_id": ["a", None, "c", "", "e"],
                      "text_emb": pa.array([[1.0, 1.0], [1.0, 1.0], None, [1.0, 1.0], [1.0]]),
                      "image_emb": pa.array([[1.0], [1.0], [1.0], [1.0], [float("nan")]])})
    keep, records = usable_rows(batch, {"text_emb": 2}, vector_required=True)
    assert keep.tolist() == [True, False, False, False, False]
    assert records == [{"item_id": None, "field": "item_id", "reason": "no item id"},
                       {"item_id": "c", "field": "text_emb", "reason": "no vector"},
                       {"item_id": "", "field": "item_id", "reason": "no item id"},
                       {"item_id": "e", "field": "text_emb", "reason": "a vector of 1 values; expected 2"}]
    assert pa.array([records], QUARANTINED).to_pylist() == [records]  # as the actor's receipt carries them
    keep, records = usable_rows(batch, {"text_emb": 2, "image_emb": 1, "id_vector": 4}, vector_required=False)
    assert keep.tolist() == [True, False, True, False, False]  # fusion takes a missing vector as a missing modality
    assert [r["field"] for r in records] == ["item_id", "item_id", "text_emb"]  # one record a row: its first problem
    untyped = batch.set_column(1, "text_emb", pa.nulls(5))  # all None through pandas: typed null, not list
    assert usable_rows(untyped, {"text_emb": 2}, vector_required=False)[0].tolist() == [True, False, True, False, True]
    assert [r["reason"] for r in usable_rows(untyped, {"text_emb": 2}, vector_required=True)[1]] == \
        ["no vector", "no item id", "no vector", "no item id", "no vector"]


def test_an_empty_vector_is_no_vector_a_missing_modality_for_fusion():
    from qbr_dist.fusion.features import vector_rows
    from qbr_dist.quant.retokenize import usable_rows

    batch = pa.table({"item_id": ["a", "b"], "text_emb": pa.array([[1.0, 2.0], [3.0, 4.0]]),
                      "image_emb": pa.array([[], [5.0]], pa.list_(pa.float32()))})
    keep, records = usable_rows(batch, {"text_emb": 2, "image_emb": 1}, vector_required=False)
    assert keep.tolist() == [True, True] and records == []
    matrix, present = vector_rows(batch, "image_emb", 1)
    assert present.tolist() == [False, True] and matrix.tolist() == [[0.0], [5.0]]
    keep, records = usable_rows(batch, {"image_emb": 1}, vector_required=True)  # one column to code: needed
    assert keep.tolist() == [False, True] and records[0]["reason"] == "no vector"


def test_usable_rows_leaves_out_rows_with_a_structure_token_outside_the_fusion_vocabulary():
    from qbr_dist.quant.retokenize import usable_rows

    batch = pa.table({"item_id": ["a", "b", "c", "d", "e"], "text_emb": pa.array([[1.0, 1.0]] * 5),
                      "struct_tokens": pa.array([[1, 9], [10], [-2, 1], None, [3, None]], pa.list_(pa.int32()))})
    keep, records = usable_rows(batch, {"text_emb": 2}, vector_required=False, vocab=10)
    assert keep.tolist() == [True, False, False, True, False]  # no tokens at all is a missing modality
    assert [(r["item_id"], r["field"]) for r in records] == [("b", "struct_tokens"), ("c", "struct_tokens"),
                                                             ("e", "struct_tokens")]
    assert records[0]["reason"] == "a structure token outside the run's vocabulary (0 to 9, " \
                                   "structure/structure_vocab.json)"


def test_plain_list_vectors_of_uneven_lengths_are_an_error_not_silently_reshaped():
    from qbr_dist.fusion.features import fixed_width

    with pytest.raises(ValueError, match=r"column 'text_emb': expected vectors of 3 floats each, got list.* other"):
        fixed_width(pa.array([[1.0, 1.0, 1.0], [2.0] * 5]), "text_emb", 3)
    assert fixed_width(pa.array([[1.0, 1.0, 1.0], [2.0] * 3]), "text_emb", 3).type.list_size == 3
