"""`qbr inspect codes` and `qbr recommend` on the shared tiny run over the synthetic catalog:
first-level codes group the planted categories far better than the same codes shuffled across
items, explanations cite only code prefixes that the item and its history really share, the
ID-only model recommends no cold item and reads none (it never trained their vectors), items added
after training join from a codes file of the run's codebook, and a config that did not train the
model is refused."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from qbr_dist import artifacts, pipeline
from qbr_dist.cli import main
from qbr_dist.inspect.codes import summarize_codes
from qbr_dist.inspect.recommend import recommend
from qbr_dist.inspect.run import CATALOG, run_codes
from qbr_dist.quant.codebook import CodebookMismatch
from qbr_dist.quant.codes import codes_version, read_codes, write_codes
from qbr_dist.seqrec.trained import CODES_FILE

pytestmark = pytest.mark.integration


def shuffled_codes(codes_file, out, seed: int = 0):
    """The same codes, dealt to the items in a random order."""
    table = read_codes(codes_file)
    codes = np.array(table.column("codes").to_pylist())
    order = np.random.default_rng(seed).permutation(len(codes))
    write_codes(out, table.column("item_id"), codes[order, :-1], codes[order, -1], "shuffled")
    return out


def test_first_level_codes_recover_the_planted_categories(tmp_path, tokenized_run):
    run = pipeline.run_dir(tokenized_run.cfg)
    codes, catalog = run_codes(run), run / CATALOG
    ours = summarize_codes(codes, catalog, fields=["category"])["levels"][0]["purity"]["category"]
    bucketed = summarize_codes(codes, catalog, fields=["category"], bucket_rows=100, work=tmp_path)
    assert bucketed["levels"][0]["purity"]["category"] == ours  # 5 buckets of the item id, joined one by one
    chance = summarize_codes(shuffled_codes(codes, tmp_path / "shuffled.parquet"), catalog,
                             fields=["category"])["levels"][0]["purity"]["category"]
    assert ours >= 2 * chance, (ours, chance)


def test_the_command_writes_the_summary_and_lists_a_prefix(tokenized_run, capsys):
    cfg = tokenized_run.cfg
    args = ["--set", f"run.root='{cfg.run.root}'", "--set", f"run.name={cfg.run.name}",
            "--set", "structure.fields=['category', 'brand']"]
    assert main(["inspect", "codes", *args]) == 0
    assert "| code | items | words | category | brand | example |" in capsys.readouterr().out
    run = pipeline.run_dir(cfg)
    assert (run / "inspect" / "codes.json").is_file() and (run / "inspect" / "codes.md").is_file()
    levels = tokenized_run.cfg.quant.levels
    assert main(["inspect", "codes", *args, "--levels", str(levels + 1)]) == 2
    assert f"--levels {levels + 1}: the codes of" in capsys.readouterr().err
    first = pq.read_table(run_codes(run)).column("codes")[0].as_py()[0]
    assert main(["inspect", "codes", *args, "--prefix", str(first), "--limit", "3"]) == 0
    listed = capsys.readouterr().out
    assert f"items under code prefix {first} (showing 3)" in listed
    user = pq.read_table(run / "ingest" / "sequences.parquet").column("user_id")[0].as_py()
    same = [arg for option in as_overrides(cfg) for arg in ("--set", option)]  # the config that trained the run
    assert main(["recommend", *same, "--user", user, "--k", "3"]) == 0
    assert f"Top 3 from qbert4rec after user {user}'s history" in capsys.readouterr().out
    assert (run / "inspect" / f"recommend-qbert4rec-user-{user}-top3.json").is_file()
    assert main(["recommend", *same, "--history", "no-such-item"]) == 2
    assert "no item 'no-such-item' in the run's catalog" in capsys.readouterr().err
    assert main(["recommend", *same, "--set", "model.hidden=32", "--user", user]) == 2
    assert "qbert4rec: computed with other settings (model.hidden 16 -> 32); run `qbr run`" in capsys.readouterr().err
    assert main(["recommend", *same, "--model", "bert4rec", "--user", user, "--k", "2"]) == 0
    assert f"Top 2 from bert4rec after user {user}'s history" in capsys.readouterr().out
    assert main(["recommend", *same, "--set", "train.lr=0.5", "--model", "bert4rec", "--user", user]) == 2
    assert "bert4rec: computed with other settings (train.lr 0.001 -> 0.5)" in capsys.readouterr().err


def as_overrides(cfg) -> list[str]:
    """`cfg` as `--set` options (a value TOML reads as JSON writes it)."""
    return [f"{section}.{key}={json.dumps(value)}" for section, values in cfg.to_dict().items()
            for key, value in values.items() if value is not None]


def test_recommendations_cite_only_codes_the_item_and_the_history_really_have(tokenized_run):
    run = pipeline.run_dir(tokenized_run.cfg)
    user = pq.read_table(run / "ingest" / "sequences.parquet").column("user_id")[0].as_py()
    found = recommend(run, user=user, k=10)
    codes = np.load(run / "qbert4rec" / CODES_FILE)
    index = {item: i + 1 for i, item in enumerate(pq.read_table(run / CATALOG).column("item_id").to_pylist())}
    cold = np.load(run / "ingest" / "cold_items.npy")
    history = codes[[index[item] for item in found["history"]]]
    assert len(found["items"]) == 10 and not {i["item_id"] for i in found["items"]} & set(found["history"])
    assert [i["score"] for i in found["items"]] == sorted((i["score"] for i in found["items"]), reverse=True)
    for item in found["items"]:
        own = codes[index[item["item_id"]]]
        assert item["codes"] == own.tolist() and item["cold"] == bool(cold[index[item["item_id"]]])
        for level, cited in enumerate(item["shared"]):
            prefix = own[: level + 1]
            assert cited["prefix"] == "-".join(map(str, prefix))
            assert cited["history_items"] == int((history[:, : level + 1] == prefix).all(axis=1).sum()) > 0
            assert cited["words"], cited
    id_only = recommend(run, stage="bert4rec", user=user, k=len(index))  # every item it can score
    assert id_only["cold_left_out"] == int(cold.sum()) > 0 and found["cold_left_out"] == 0
    assert id_only["items"] and not any(item["cold"] for item in id_only["items"])


def test_items_added_after_training_join_from_a_codes_file_of_the_run_s_codebook(tokenized_run, tmp_path):
    run = pipeline.run_dir(tokenized_run.cfg)
    codes_file = run_codes(run)
    everything = {r["item_id"]: r["codes"] for r in read_codes(codes_file).to_pylist()}
    ids = pq.read_table(run / CATALOG).column("item_id").to_pylist()
    cold = np.load(run / "ingest" / "cold_items.npy")
    cold_id, warm_id = next(i for i, c in zip(ids, cold[1:]) if c), next(i for i, c in zip(ids, cold[1:]) if not c)
    fresh = everything[cold_id][:-1] + [max(c[-1] for c in everything.values()) + 1]  # past the trained suffixes
    write_codes(tmp_path / "new.parquet", ["fresh", cold_id], np.array([fresh[:-1], everything[cold_id][:-1]]),
                np.array([fresh[-1], everything[cold_id][-1]]), codes_version(codes_file))

    found = recommend(run, history=[warm_id, "fresh"], k=len(ids) + 1, new_items=[tmp_path / "new.parquet"])
    assert found["new_items"] == 1 and found["history"] == [warm_id, "fresh"]  # the catalog's own row is not new
    assert found["new_items_known"] == 1
    shared = recommend(run, history=[warm_id, cold_id], k=len(ids), new_items=[tmp_path / "new.parquet"])
    new = {item["item_id"]: item for item in shared["items"]}["fresh"]
    assert new["new"] and not new["cold"] and new["codes"] == fresh and new["text"] is None
    assert new["shared"][0]["history_items"] >= 1  # it shares the cold item's prefixes

    (tmp_path / "later").mkdir()  # a second batch, given as the folder `qbr retokenize` prints
    write_codes(tmp_path / "later" / "codes.parquet", ["fresh", "fresher"], np.array([fresh[:-1]] * 2),
                np.array([fresh[-1], fresh[-1] + 1]), codes_version(codes_file))
    with pytest.raises(ValueError, match=r"later: no finished `qbr retokenize` in this folder \(no manifest.json"):
        recommend(run, history=["fresh"], new_items=[tmp_path / "new.parquet", tmp_path / "later"])
    artifacts.write_manifest(tmp_path / "later", {}, outputs=["codes.parquet"], rows={})
    both = recommend(run, history=["fresh", " fresher"], new_items=[tmp_path / "new.parquet", tmp_path / "later"])
    assert both["new_items"] == 2 and both["history"] == ["fresh", "fresher"]  # the first file's "fresh" is kept
    assert both["new_items_known"] == 2  # the catalog's item in the first file, "fresh" in the second
    with pytest.raises(ValueError, match=r"no item 'nope' in the run's catalog \(.*\) or the --new-items files"):
        recommend(run, history=["nope"], new_items=[tmp_path / "new.parquet"])
    write_codes(tmp_path / "other.parquet", ["fresh"], np.array([fresh[:-1]]), np.array([0]), "another-codebook")
    with pytest.raises(CodebookMismatch, match="other.parquet: codes made with codebook version another-codebook"):
        recommend(run, history=[warm_id], new_items=[tmp_path / "other.parquet"])
    with pytest.raises(ValueError, match=r"items.parquet: not a codes file \(expected fields item_id: string and "
                                         r"codes: list<int32>; found item_id: string, text: string"):
        recommend(run, history=[warm_id], new_items=[run / CATALOG])
    write_codes(tmp_path / "twice.parquet", [cold_id, cold_id, "fresh"], np.array([fresh[:-1]] * 3),
                np.array([0, 1, 2]), codes_version(codes_file))  # a catalog item listed twice is a bad file too
    with pytest.raises(ValueError, match=f"twice.parquet: field 'item_id' repeats '{cold_id}'"):
        recommend(run, history=[warm_id], new_items=[tmp_path / "twice.parquet"])
    with pytest.raises(ValueError, match="bert4rec is an ID-only model, it cannot score items it never trained"):
        recommend(run, stage="bert4rec", history=[warm_id], new_items=[tmp_path / "new.parquet"])


def test_the_id_only_model_does_not_read_cold_history_items(tokenized_run):
    run = pipeline.run_dir(tokenized_run.cfg)
    ids = pq.read_table(run / CATALOG).column("item_id").to_pylist()
    cold = np.load(run / "ingest" / "cold_items.npy")
    cold_id, warm_id = next(i for i, c in zip(ids, cold[1:]) if c), next(i for i, c in zip(ids, cold[1:]) if not c)
    mixed = recommend(run, stage="bert4rec", history=[warm_id, cold_id], k=5)
    alone = recommend(run, stage="bert4rec", history=[warm_id], k=5)
    assert mixed["history_left_out"] == [cold_id] and alone["history_left_out"] == []
    assert [item["score"] for item in mixed["items"]] == [item["score"] for item in alone["items"]]
    assert recommend(run, history=[warm_id, cold_id], k=5)["history_left_out"] == []  # codes place it
    with pytest.raises(ValueError, match=rf"every history item is cold \({cold_id}\)"):
        recommend(run, stage="bert4rec", history=[cold_id])
