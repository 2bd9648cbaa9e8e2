"""The quantize stage on real Ray Train workers (gloo): 1 and 2 workers agree, IDs are unique,
versions are enforced; and the cross-rank codebook check, on two real gloo processes, catches a
rank whose codebook was tampered with."""
from __future__ import annotations

import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from prometheus_client import REGISTRY

from qbr_dist import artifacts, pipeline
from qbr_dist.config import load_config
from qbr_dist.data.quarantine import DataError, Quarantine
from qbr_dist.quant import CODEBOOKS, CODES, STATS
from qbr_dist.quant.codebook import CodebookMismatch, load_codebooks, verify_identical
from qbr_dist.quant.codes import read_codes
from qbr_dist.quant.retokenize import retokenize as retokenize_job

pytestmark = pytest.mark.integration


def run_quantize(tmp_path, encode_dir, workers: int):
    cfg = load_config(None, [f"run.root='{tmp_path / f'w{workers}'}'", "run.name=q", "quant.levels=2",
                             "quant.input=text_emb", "quant.codebook_size=6", "quant.iterations=20",
                             f"runtime.num_workers={workers}",
                             "runtime.ray_num_cpus=2", "runtime.object_store_mb=256", "runtime.dashboard=false"])
    return pipeline.quantize(cfg, pipeline.run_dir(cfg), encode_dir)


def test_one_and_two_workers_give_the_same_codebooks_and_unique_ids(tmp_path, encode_dir, ray_cluster):
    one, two = run_quantize(tmp_path, encode_dir, 1), run_quantize(tmp_path, encode_dir, 2)
    (books_1, version_1, _), (books_2, _, _) = load_codebooks(one / CODEBOOKS), load_codebooks(two / CODEBOOKS)
    assert torch.allclose(books_1["codebooks"], books_2["codebooks"], atol=1e-5)
    codes_1, codes_2 = read_codes(one / CODES), read_codes(two / CODES, expected_version=None)
    assert codes_1.column("item_id").to_pylist() == [f"item{i}" for i in range(500)]
    assert codes_1.column("codes").to_pylist() == codes_2.column("codes").to_pylist()

    full = codes_1.column("codes").to_pylist()
    assert all(len(c) == 3 for c in full) and len({tuple(c) for c in full}) == 500  # 2 levels + suffix: unique
    assert set(codes_1.column("codebook_version").to_pylist()) == {version_1}
    with pytest.raises(CodebookMismatch, match="retokenize with that codebook first"):
        read_codes(one / CODES, expected_version="f" * 16)

    stats = artifacts.read_manifest(one)["rows"]
    assert stats["items"] == 500 and 0 < stats["collision_rate"] <= 1 and stats["suffix_table_size"] >= 2
    levels = __import__("json").loads((one / STATS).read_text())["levels"]
    assert [lv["level"] for lv in levels] == [0, 1] and levels[0]["usage"] == 1.0
    assert not (one / "parts").exists()

    manifest = (one / artifacts.MANIFEST).read_text()
    run_quantize(tmp_path, encode_dir, 1)
    assert (one / artifacts.MANIFEST).read_text() == manifest  # current: skipped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_codebooks(rank: int, port: int, tamper: bool, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        codebooks = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
        if tamper and rank == 1:
            codebooks[1, 2, 3] += 1e-3
        try:
            verify_identical(codebooks, what="codebooks")
            message = "ok"
        except CodebookMismatch as err:
            message = str(err)
        with open(f"{out}/rank{rank}.txt", "w") as handle:
            handle.write(message)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tamper", [False, True], ids=["identical", "tampered"])
def test_a_rank_with_a_different_codebook_is_an_error(tmp_path, tamper):
    mp.start_processes(_check_codebooks, args=(_free_port(), tamper, str(tmp_path)), nprocs=2, start_method="spawn")
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    if tamper:
        assert all("codebooks differs between ranks (rank 0:" in m and "rank 1:" in m for m in messages)
    else:
        assert messages == ["ok", "ok"]


def test_retokenize_reproduces_the_codes_and_only_appends_suffixes(tmp_path, encode_dir, ray_cluster, monkeypatch):
    quantized = run_quantize(tmp_path, encode_dir, 1)
    cfg = load_config(None, [f"run.root='{tmp_path / 'w1'}'", "run.name=q", "quant.levels=2", "quant.codebook_size=6",
                             "quant.input=text_emb", "quant.iterations=20", "quant.retokenize_batch_size=64",
                             "quant.retokenize_actors=2", "runtime.dashboard=false"])
    root = pipeline.run_dir(cfg)
    counted = _retokenized_items("q")
    dirs = {"quantize": quantized, "encode": encode_dir}  # as `pipeline.tokenize` gives them, for encoder vectors
    first = read_codes(pipeline.retokenize(cfg, root, encode_dir, dirs) / CODES)
    original = read_codes(quantized / CODES)
    assert _retokenized_items("q") - counted == len(original)  # the driver counted each item once
    assert sorted(first.to_pylist(), key=lambda r: r["item_id"]) == sorted(original.to_pylist(),
                                                                          key=lambda r: r["item_id"])
    # The catalog in one file (one block as read) with other batches and 8 buckets: the same rows, and
    # both actors code batches once both are up.
    one_file = tmp_path / "one-file.parquet"
    pq.write_table(pa.concat_tables(pq.read_table(f) for f in sorted(encode_dir.glob("*.parquet"))), one_file)
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 120)
    twice = tmp_path / "twice"
    summary = retokenize_job([one_file], "text_emb", quantized / CODEBOOKS, twice, previous=[], batch_size=50,
                             actors=2, bucket_rows=64, quarantine=Quarantine(twice / "quarantine.jsonl"))
    assert summary["actors_busy"] == 2
    assert sorted(read_codes(twice / CODES).to_pylist(), key=lambda r: r["item_id"]) == sorted(
        first.to_pylist(), key=lambda r: r["item_id"])
    check_bad_rows_are_quarantined(cfg, root, one_file, dirs, first)

    # a grown catalog: copies of existing vectors under new ids, so they collide with old items
    grown = tmp_path / "grown"
    grown.mkdir()
    for part in encode_dir.glob("shard-*.parquet"):
        (grown / part.name).write_bytes(part.read_bytes())
    copies = pq.read_table(encode_dir / "shard-000000.parquet").slice(0, 40)
    copies = copies.set_column(0, "item_id", pa.array([f"new{i}" for i in range(40)]))
    pq.write_table(copies, grown / "shard-000002.parquet")
    again = read_codes(pipeline.retokenize(cfg, root, grown, dirs) / CODES)
    before = {r["item_id"]: r["codes"] for r in original.to_pylist()}
    after = {r["item_id"]: r["codes"] for r in again.to_pylist()}
    assert len(after) == 540 and all(after[i] == c for i, c in before.items())  # old items: unchanged
    assert len({tuple(c) for c in after.values()}) == 540  # still unique
    assert all(after[f"new{i}"][:-1] == before[f"item{i}"][:-1] for i in range(40))
    assert all(after[f"new{i}"][-1] > before[f"item{i}"][-1] for i in range(40))  # appended after the old ones


def check_bad_rows_are_quarantined(cfg, root, features, dirs, codes) -> None:
    """Bad rows in a plain-list feature table (a vector too long, a NaN, no vector, no item id, an id given twice)
    are each left out and listed, a whole batch of them too (a receipt without a file beside receipts with one);
    every other item gets the codes it gets from the clean table."""
    table = pq.read_table(features)
    vectors = table.column("text_emb").to_pylist()
    vectors[3], vectors[7][0], vectors[11] = vectors[3] + [0.5], float("nan"), None
    batch = cfg.quant.retokenize_batch_size
    vectors[batch:2 * batch] = [None] * batch  # the second batch: not one codable row
    ids = table.column("item_id").to_pylist()
    ids[13], ids[21] = None, ids[20]
    bad = features.with_name("bad-rows.parquet")
    pq.write_table(table.set_column(0, "item_id", pa.array(ids)).set_column(
        table.schema.get_field_index("text_emb"), "text_emb", pa.array(vectors, pa.list_(pa.float32()))), bad)
    stage = pipeline.retokenize(cfg, root, bad, dirs, stage="retokenize-bad")
    listed = [json.loads(line) for line in (stage / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((r["where"], r["field"], r["reason"]) for r in listed) == sorted([
        (f"item {ids[3]!r}", "text_emb", f"a vector of {len(vectors[3])} values; expected {len(vectors[3]) - 1}"),
        (f"item {ids[7]!r}", "text_emb", "a NaN value"),
        ("a row without item id", "item_id", "no item id"),
        *[(f"item {ids[row]!r}", "text_emb", "no vector") for row in [11, *range(batch, 2 * batch)]],
        *[(f"item {ids[20]!r} (occurrence {k} of 2)", "item_id",
           "item id repeated in the table (every item must appear once)") for k in (1, 2)]])
    manifest = artifacts.read_manifest(stage)
    assert "quarantine.jsonl" in manifest["outputs"] and manifest["rows"]["quarantined"] == len(listed) == 6 + batch
    counted = {"stage": "retokenize-bad", "run": cfg.run.name}  # the stage's own labels, not the pipeline's
    assert REGISTRY.get_sample_value("qbr_quarantined_records_total", counted) == len(listed)
    assert REGISTRY.get_sample_value("qbr_input_records_total", counted) == len(ids)
    left_out = {ids[3], ids[7], ids[11], ids[20], *ids[batch:2 * batch]} | {
        table.column("item_id")[row].as_py() for row in (13, 21)}
    expected = [r for r in codes.to_pylist() if r["item_id"] not in left_out]
    assert sorted(read_codes(stage / CODES).to_pylist(), key=lambda r: r["item_id"]) == sorted(
        expected, key=lambda r: r["item_id"])
    all_bad = features.with_name("all-bad.parquet")  # a batch without one codable row: a receipt without a file
    pq.write_table(pa.table({"item_id": ["n1", "n2"], "text_emb": pa.array([[float("nan")] * (len(vectors[3]) - 1)] * 2,
                                                                            pa.list_(pa.float32()))}), all_bad)
    with pytest.raises(DataError, match=r"all-bad.parquet: all 2 rows were quarantined, none could be coded \(reasons"):
        pipeline.retokenize(cfg, root, all_bad, dirs, stage="retokenize-all-bad")


def _retokenized_items(run: str) -> float:
    """This process's (the driver's) count of items retokenized for `run`."""
    return REGISTRY.get_sample_value("qbr_retokenized_items_total", {"stage": "retokenize", "run": run}) or 0.0
