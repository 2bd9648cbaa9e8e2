"""`qbr inspect codes` and `qbr recommend` on the shared tiny run over the synthetic catalog:
first-level codes group the planted categories far better than the same codes shuffled across
items, explanations cite only code prefixes that the item and its history really share, and the
ID-only model recommends no cold item (it never trained their vectors)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from qbr_dist import pipeline
from qbr_dist.cli import main
from qbr_dist.inspect.codes import summarize_codes
from qbr_dist.inspect.recommend import recommend
from qbr_dist.inspect.run import CATALOG, run_codes
from qbr_dist.quant.codes import read_codes, write_codes
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
    assert main(["recommend", *args, "--user", user, "--k", "3"]) == 0
    assert f"Top 3 from qbert4rec after user {user}'s history" in capsys.readouterr().out
    assert (run / "inspect" / f"recommend-user-{user}.json").is_file()
    assert main(["recommend", *args, "--history", "no-such-item"]) == 2
    assert "no item 'no-such-item' in the run's catalog" in capsys.readouterr().err


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
