"""The whole semantic tokenizer on a small synthetic catalog, from the shared tiny `qbr run`:
ingest with a 10 % cold-item split -> prebuilt shards -> encode (MiniLM + a tiny random ViT, on
purpose) -> structure -> fusion (2 Ray Train workers, DeepSpeed ZeRO-2) -> distributed residual
k-means on the warm items -> unique IDs -> retokenization giving the cold items codes through the
exported fusion model; retokenization of a grown catalog; then Q-BERT4Rec trained on those
semantic IDs and evaluated on warm and cold test targets, next to content-knn."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from qbr_dist import artifacts, pipeline
from qbr_dist.fusion import STATS as FUSION_STATS
from qbr_dist.fusion.model import MODALITIES
from qbr_dist.inspect.recommend import recommend
from qbr_dist.quant import CODEBOOKS, CODES, STATS as QUANT_STATS
from qbr_dist.quant.codes import read_codes

pytestmark = pytest.mark.integration

ITEMS = 480  # the shared run's catalog (tests/conftest.py)


def test_tokenizer_end_to_end(tmp_path, tokenized_run, ray_cluster):
    cfg = tokenized_run.cfg
    dirs = pipeline.tokenize(cfg, pipeline.run_dir(cfg))  # every stage is current: only their folders

    stats = json.loads((dirs["fusion"] / FUSION_STATS).read_text())
    assert stats["items"] == ITEMS and len(stats["modality_weights"]) == 2
    assert set(stats["modality_weights"][0]) == set(MODALITIES)
    for layer in stats["modality_weights"]:  # mean weight over the items that have the modality
        assert all(0 < weight < 1 for weight in layer.values())
    assert stats["modality_presence"]["image"] == ITEMS and len(stats["curve"]) == 2
    assert sum(stats["depth_histogram"]) == ITEMS and 0 <= stats["mean_depth"] <= 2

    fused = pq.read_table(dirs["fusion"] / "fused-rank0000.parquet")
    assert fused.schema.field("fused").type.list_size == 16
    assert sum(pq.read_metadata(p).num_rows for p in pipeline.feature_files(dirs["fusion"])) == ITEMS

    cold = artifacts.read_manifest(dirs["ingest"])["rows"]["cold_items"]
    assert cold == ITEMS // 10 and stats["cold_items"] >= cold
    codes = read_codes(dirs["quantize"] / CODES)  # fitted on warm items only
    assert codes.num_rows == ITEMS - cold and len({tuple(c) for c in codes.column("codes").to_pylist()}) == ITEMS - cold
    everything = read_codes(dirs["retokenize"] / CODES)  # cold items coded afterwards
    assert everything.num_rows == ITEMS and len({tuple(c) for c in everything.column("codes").to_pylist()}) == ITEMS
    quant = json.loads((dirs["quantize"] / QUANT_STATS).read_text())
    assert [lv["level"] for lv in quant["levels"]] == [0, 1] and 0 <= quant["collision_rate"] <= 1
    assert (dirs["quantize"] / CODEBOOKS).is_file()

    check_fused_retokenize(cfg, dirs, tmp_path, cold_items=stats["cold_items"])
    # `qbr retokenize` codes with the run's own codebook: it takes a current tokenizer, and refuses one its config
    # would fit again instead of fitting it
    assert pipeline.finished_tokenizer(cfg) == dirs
    changed = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, iterations=cfg.quant.iterations + 1))
    with pytest.raises(pipeline.StageNotCurrent, match=r"quantize: computed with other settings \(quant.iterations"):
        pipeline.finished_tokenizer(changed)
    check_a_new_item_never_takes_a_cold_items_semantic_id(cfg, dirs, tmp_path)

    def manifests(stages: dict) -> dict:  # prebuilt shards (as here) have an index but no manifest
        return {name: artifacts.read_manifest(folder) for name, folder in stages.items()}

    finished = manifests(dirs)
    again = pipeline.tokenize(cfg, pipeline.run_dir(cfg))
    assert again.keys() == dirs.keys() and manifests(again) == finished and finished["encode"]

    qbert = pipeline.run_dir(cfg) / "qbert4rec"
    metrics = json.loads((qbert / pipeline.METRICS).read_text())
    assert metrics["codebook_version"] == quant["codebook_version"]
    assert 0 <= metrics["test"]["NDCG@10"] <= 1 and metrics["steps"] > 0
    assert 0 <= metrics["test_cold"]["HR@10"] <= 1  # cold test targets, scored from their codes
    knn = json.loads((pipeline.run_dir(cfg) / "content-knn" / pipeline.METRICS).read_text())
    assert set(knn) >= {"valid", "test", "test_cold"} and 0 <= knn["test_cold"]["HR@10"] <= 1


def check_a_new_item_never_takes_a_cold_items_semantic_id(cfg, dirs: dict, tmp_path) -> None:
    """A new item with a cold item's features (its encoder vectors and structure row) gets that item's codes: the
    run's own retokenize codes keep the cold item's suffix, so the new one takes the next; `qbr recommend` then
    takes it into a history, with the trained model as it is. A new item with no content at all is quarantined."""
    cold_id = next(i for i, cold in zip(pipeline.load_item_ids(dirs["ingest"]),
                                        np.load(dirs["ingest"] / pipeline.COLD)) if cold)

    def row_of(files):
        table = pa.concat_tables(pq.read_table(f) for f in files)
        return table.filter(pc.equal(table.column("item_id"), cold_id))

    features = row_of(pipeline.feature_files(dirs["encode"]))
    structure = row_of([dirs["structure"] / pipeline.STRUCTURE])
    for name in ("struct_tokens", "cooc_emb", "has_cooc"):
        features = features.append_column(name, structure.column(name))
    features = features.set_column(0, "item_id", pa.array(["new-cold"]))
    empty = pa.table({field.name: pa.nulls(1, field.type) for field in features.schema}).set_column(
        0, "item_id", pa.array(["no-content"]))  # no vector, no structure token, no trained ID vector
    pq.write_table(pa.concat_tables([features, empty]), tmp_path / "new-cold.parquet")
    stage = pipeline.retokenize(cfg, pipeline.run_dir(cfg), tmp_path / "new-cold.parquet", dirs,
                                stage="retokenize-new-cold")
    assert read_codes(stage / CODES).column("item_id").to_pylist() == ["new-cold"]
    (record,) = [json.loads(line) for line in (stage / pipeline.QUARANTINE).read_text().splitlines()]
    assert record["where"] == "item 'no-content'" and record["reason"].startswith("no content:")
    new = read_codes(stage / CODES).to_pylist()[0]["codes"]
    cold = {r["item_id"]: r["codes"] for r in read_codes(dirs["retokenize"] / CODES).to_pylist()}[cold_id]
    assert new[:-1] == cold[:-1] and new[-1] > cold[-1]
    found = recommend(pipeline.run_dir(cfg), history=["new-cold"], k=3, new_items=[stage])  # its folder; no retraining
    assert found["new_items"] == 1 and found["history"] == ["new-cold"] and len(found["items"]) == 3


def check_fused_retokenize(cfg, dirs: dict, tmp_path, *, cold_items: int) -> None:
    """Retokenizing the catalog through the exported fusion model gives the quantize stage's codes;
    brand-new items (features only, no trained ID vector, no structure row) get codes from the
    content-predicted query, and no existing item's codes change."""
    grown = tmp_path / "grown"
    grown.mkdir()
    for part in pipeline.feature_files(dirs["encode"]):
        (grown / part.name).write_bytes(part.read_bytes())
    copies = pq.read_table(pipeline.feature_files(dirs["encode"])[0]).slice(0, 10)
    copies = copies.set_column(0, "item_id", pa.array([f"new{i}" for i in range(10)], copies.schema.field(0).type))
    pq.write_table(copies, grown / "zz-new.parquet")

    stage = pipeline.retokenize(cfg, tmp_path / "elsewhere", grown, dirs)
    summary = artifacts.read_manifest(stage)["rows"]
    assert summary["items"] == ITEMS + 10 and summary["content_queries"] == cold_items + 10
    assert summary["recoded"] == 0  # the run's items, coded again, keep their codes
    quantized = read_codes(dirs["quantize"] / CODES).num_rows  # the copies, and the cold items it did not code, are new
    assert summary["new_items"] == ITEMS + 10 - quantized
    before = {r["item_id"]: r["codes"] for r in read_codes(dirs["retokenize"] / CODES).to_pylist()}
    after = {r["item_id"]: r["codes"] for r in read_codes(stage / CODES).to_pylist()}
    assert {i: after[i] for i in before} == before
    assert len({tuple(c) for c in after.values()}) == ITEMS + 10

    # The same table bringing its items' structure tokens, as the README asks of new items: the catalog items
    # still take their co-occurrence vectors from the run, so none is coded otherwise
    table = pa.concat_tables(pq.read_table(part) for part in sorted(grown.iterdir()))
    tokens = pq.read_table(dirs["structure"] / pipeline.STRUCTURE, columns=["item_id", "struct_tokens"])
    rows = pc.index_in(table.column("item_id"), value_set=tokens.column("item_id"))  # null for the new items
    pq.write_table(table.append_column("struct_tokens", tokens.column("struct_tokens").take(rows)),
                   tmp_path / "with-tokens.parquet")
    stage = pipeline.retokenize(cfg, tmp_path / "elsewhere", tmp_path / "with-tokens.parquet", dirs,
                                stage="retokenize-with-tokens")
    assert artifacts.read_manifest(stage)["rows"]["recoded"] == 0
    with_tokens = {r["item_id"]: r["codes"] for r in read_codes(stage / CODES).to_pylist()}
    assert {i: with_tokens[i] for i in before} == before
