"""A user's history comes from the ingest sequences, read one user at a time."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbr_dist.inspect.recommend import user_history
from qbr_dist.pipeline import SEQUENCES


def test_a_users_history_is_found_across_row_groups_and_an_unknown_user_is_a_one_line_error(tmp_path):
    table = pa.table({"user_id": ["a", "b", "c"], "items": [[1, 2], [3], [4, 5, 6]]})
    pq.write_table(table, tmp_path / SEQUENCES, row_group_size=1)
    assert user_history(tmp_path, "c") == [4, 5, 6]
    assert user_history(tmp_path, "a") == [1, 2]
    with pytest.raises(ValueError, match=r"sequences.parquet: no user 'zz'"):
        user_history(tmp_path, "zz")


def test_a_run_without_the_trained_stage_is_a_one_line_error(tmp_path):
    from qbr_dist.inspect.recommend import Recommender

    from qbr_dist import artifacts

    with pytest.raises(FileNotFoundError, match=r"nope: no finished bert4rec stage; run `qbr run`"):
        Recommender(tmp_path / "nope", "bert4rec")
    artifacts.write_manifest(tmp_path / "ids" / "bert4rec", {}, outputs=[], rows={})  # a run without the tokenizer
    with pytest.raises(FileNotFoundError, match=r"ids: no finished qbert4rec stage; --model bert4rec names the one"):
        Recommender(tmp_path / "ids")


def found(**fields) -> dict:
    return {"stage": "qbert4rec", "user": None, "history": ["a", "b"], "k": 10, "items": [], "cold_left_out": 0,
            "history_left_out": [], "new_items": 0, "new_items_known": 0, "new_items_files": []} | fields


def test_each_model_user_and_history_has_its_own_answer_file():
    from qbr_dist.inspect.run import recommend_file

    assert recommend_file(found(user="196")) == "recommend-qbert4rec-user-196-top10.json"
    assert recommend_file(found(user="196", stage="bert4rec")) == "recommend-bert4rec-user-196-top10.json"
    given, other = recommend_file(found()), recommend_file(found(history=["a", "c"]))
    assert given.startswith("recommend-qbert4rec-history~") and given != other
    assert given == recommend_file(found())  # the same question, the same file
    assert recommend_file(found(history=["a\nb"])) != recommend_file(found(history=["a", "b"]))
    odd = recommend_file(found(user="../a/b"))  # never a path out of inspect/
    assert "/" not in odd and odd.startswith("recommend-qbert4rec-user~")
    assert recommend_file(found(user="..")).startswith("recommend-qbert4rec-user~")
    digest = odd.removeprefix("recommend-qbert4rec-user~").removesuffix(".json")
    assert recommend_file(found(user=digest)) != odd  # a user named like another's digest


def test_another_k_or_other_new_items_get_their_own_answer_file(tmp_path):
    from qbr_dist.inspect.run import recommend_file

    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    first.write_bytes(b"codes of some new items")
    second.write_bytes(b"codes of other new items")
    assert recommend_file(found(user="196", k=20)) == "recommend-qbert4rec-user-196-top20.json"
    with_first = recommend_file(found(user="196", new_items_files=[str(first)]))
    assert with_first.startswith("recommend-qbert4rec-user-196-top10-new~")
    assert with_first != recommend_file(found(user="196", new_items_files=[str(second)]))
    moved = tmp_path / "moved.parquet"
    first.rename(moved)
    assert with_first == recommend_file(found(user="196", new_items_files=[str(moved)]))  # by content, not by name


def test_the_title_says_how_many_given_items_the_catalog_already_had():
    from qbr_dist.inspect.recommend import recommend_title

    title = recommend_title(found(new_items=2, new_items_known=1))
    assert "2 new items from --new-items in the catalog; 1 item of --new-items already known" in title
    assert "already known" not in recommend_title(found(new_items=2))


def test_an_id_only_models_table_has_no_codes_column():
    from qbr_dist.inspect.recommend import recommend_table

    plain = {"item_id": "i1", "score": 1.0, "cold": False, "new": False, "text": "t"}
    header, rows = recommend_table(found(stage="bert4rec", items=[plain]))
    assert header == ["#", "item", "score", "text"] and rows == [["1", "i1", "1.0", "t"]]
    coded = plain | {"codes": [1, 2, 0], "shared": [{"prefix": "1", "history_items": 2, "words": ["w"]}]}
    header, rows = recommend_table(found(items=[coded]))
    assert len(header) == 5 and rows[0][3] == "1 (2; w)"


def test_a_history_with_an_empty_id_is_refused_in_one_line():
    import pyarrow as pa

    from qbr_dist.inspect.recommend import history_indexes

    ids = pa.array(["a", "b"])
    assert history_indexes(ids, [" b", "a "], "the catalog") == [2, 1]
    with pytest.raises(ValueError, match=r"^--history holds an empty item id"):
        history_indexes(ids, ["", ""], "the catalog")
    with pytest.raises(ValueError, match=r"^no item 'c' in the catalog$"):
        history_indexes(ids, ["a", "c"], "the catalog")
