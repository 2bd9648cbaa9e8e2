"""The code inspector on a hand-made catalog whose codes follow its categories."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qbr_dist.inspect.codes import items_under, parse_prefix, prefix_title, summarize_codes
from qbr_dist.quant.codes import write_codes

CATALOG = [  # item, text, category; code 0 holds the mugs, code 1 the lamps
    ("m1", "Red ceramic mug", "mug"), ("m2", "Blue ceramic mug", "mug"), ("m3", "Green mug, ceramic", "mug"),
    ("l1", "Brass desk lamp", "lamp"), ("l2", "Brass floor lamp", "lamp"), ("x1", "Loose item", "rug"),
]
CODES = {"m1": (0, 3), "m2": (0, 3), "m3": (0, 5), "l1": (1, 3), "l2": (1, 4)}  # x1 has no codes


@pytest.fixture
def files(tmp_path):
    catalog = tmp_path / "items.parquet"
    pq.write_table(pa.table({name: [row[i] for row in CATALOG] for i, name in enumerate(("item_id", "text",
                                                                                          "category"))}), catalog)
    codes = tmp_path / "codes.parquet"
    ids = list(CODES)
    write_codes(codes, ids, np.array([CODES[i] for i in ids]), np.zeros(len(ids), dtype=np.int64), "v1")
    return codes, catalog


def code(summary, level, prefix):
    return next(c for c in summary["levels"][level]["codes"] if c["prefix"] == prefix)


def test_each_code_gets_its_items_words_fields_and_examples(files):
    summary = summarize_codes(*files, levels=2, fields=["category", "brand"], examples=2, batch_rows=2)
    assert summary["fields"] == ["category"] and summary["catalog_items"] == 6
    assert summary["items_without_codes"] == 1
    mugs, lamps = code(summary, 0, "0"), code(summary, 0, "1")
    assert (mugs["items"], lamps["items"]) == (3, 2)
    assert {w for w, _ in mugs["words"][:2]} == {"mug", "ceramic"}  # in every mug, rare elsewhere
    assert lamps["words"][0][0] in ("brass", "lamp") and "red" not in [w for w, _ in lamps["words"]]
    assert mugs["fields"]["category"] == [("mug", 3)]
    assert [e["item_id"] for e in mugs["examples"]] == ["m1", "m2"]
    assert summary["levels"][0]["purity"]["category"] == 1.0
    assert [c["prefix"] for c in summary["levels"][1]["codes"]] == ["0-3", "0-5", "1-3", "1-4"]


def test_bucketed_summary_equals_the_one_bucket_summary(tmp_path, files):
    """Spreading the files over many buckets (what a catalog of millions does) changes nothing but
    which items serve as examples, and leaves nothing behind in the work folder."""
    def without_examples(summary):
        for code in [c for level in summary["levels"] for c in level["codes"]]:
            assert {e["item_id"] for e in code.pop("examples")} <= {i for i, c in CODES.items()
                                                                    if "-".join(map(str, c)).startswith(code["prefix"])}
        return summary

    one = summarize_codes(*files, levels=2, fields=["category"])
    work = tmp_path / "work"
    work.mkdir()
    many = summarize_codes(*files, levels=2, fields=["category"], bucket_rows=1, batch_rows=1, work=work)
    assert without_examples(many) == without_examples(one)
    assert list(work.iterdir()) == []


def test_deeper_prefixes_asked_for_are_summarised_alone(files):
    summary = summarize_codes(*files, levels=0, also=frozenset({"0-3", "1-4", "7-7"}))
    assert summary["levels"] == []
    assert [(c["prefix"], c["items"]) for c in summary["also"]] == [("0-3", 2), ("1-4", 1)]
    assert {w for w, _ in summary["also"][0]["words"]} >= {"mug", "ceramic"}


def test_purity_drops_when_codes_do_not_follow_the_categories(tmp_path, files):
    _, catalog = files
    shuffled = tmp_path / "shuffled.parquet"
    ids = list(CODES)
    mixed = {"m1": (0, 0), "l1": (0, 0), "m2": (1, 0), "l2": (1, 0), "m3": (2, 0)}
    write_codes(shuffled, ids, np.array([mixed[i] for i in ids]), np.zeros(len(ids), dtype=np.int64), "v1")
    assert summarize_codes(shuffled, catalog, fields=["category"])["levels"][0]["purity"]["category"] == 0.6


def test_items_under_a_prefix_are_counted_and_shown_with_their_text(files):
    found = items_under(*files, parse_prefix("0-3"), limit=1, batch_rows=2)
    assert found["prefix"] == "0-3" and found["items"] == 2
    assert found["shown"] == [{"item_id": "m1", "codes": [0, 3, 0], "text": "Red ceramic mug"}]
    assert items_under(*files, (7,))["items"] == 0


def test_a_prefix_no_item_carries_says_which_level_is_out_of_range(files):
    assert prefix_title(items_under(*files, (0, 3))) == "2 items under code prefix 0-3 (showing 2)"
    assert prefix_title(items_under(*files, (0, 9))) == \
        "0 items under code prefix 0-9: level 1's codes run from 0 to 5, not to 9"
    assert prefix_title(items_under(*files, (1, 5))) == "0 items under code prefix 1-5 (showing 0)"  # in range
    empty = files[0].with_name("empty.parquet")
    write_codes(empty, [], np.zeros((0, 2), np.int64), np.zeros(0, np.int64), "v1")
    assert prefix_title(items_under(empty, files[1], (0,))) == \
        "0 items under code prefix 0: the codes file holds no items"


def test_a_bad_prefix_is_a_one_line_error():
    with pytest.raises(ValueError, match="expected codes joined by '-'"):
        parse_prefix("3/41")
    assert parse_prefix("3-41") == (3, 41)


def test_the_run_codes_are_the_retokenized_ones_only_with_the_current_codebook(tmp_path):
    from qbr_dist import artifacts
    from qbr_dist.inspect.run import run_codes

    with pytest.raises(FileNotFoundError, match="no finished quantize stage"):
        run_codes(tmp_path)
    artifacts.write_manifest(tmp_path / "quantize", {}, outputs=[], rows={"codebook_version": "new"})
    artifacts.write_manifest(tmp_path / "retokenize", {}, outputs=[], rows={"codebook_version": "old"})
    assert run_codes(tmp_path) == tmp_path / "quantize" / "codes.parquet"  # an earlier config's retokenize/
    artifacts.write_manifest(tmp_path / "retokenize", {}, outputs=[], rows={"codebook_version": "new"})
    assert run_codes(tmp_path) == tmp_path / "quantize" / "codes.parquet"  # no cold split: another table's codes
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "cold_items.npy").write_bytes(b"")
    assert run_codes(tmp_path) == tmp_path / "retokenize" / "codes.parquet"


def test_words_keep_letters_of_every_script_whole():
    from qbr_dist.inspect.codes import words

    assert words("Bäckerei Müller: Œuvres, 2024's 東京タワー and the x1") == {"bäckerei", "müller", "œuvres", "東京タワー"}
    assert words("Ba\u0308ckerei cafe\u0301 हिन्दी किताब foo_bar") == {"bäckerei", "café", "हिन्दी", "किताब", "foo", "bar"}
