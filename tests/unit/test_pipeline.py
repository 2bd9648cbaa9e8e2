"""Driver-side stages without Ray: ingest and popularity, their manifests and skipping."""
import json

import pyarrow.parquet as pq
import pytest

from qbr_dist import artifacts, pipeline
from qbr_dist.config import load_config


def config(tmp_path, interactions, *extra):
    return load_config(None, [f"run.root='{tmp_path}'", "run.name=t", "data.dataset=files",
                              f"data.interactions='{interactions}'", *extra])


def test_ingest_writes_tables_and_manifest(tmp_path, interactions_file):
    cfg = config(tmp_path, interactions_file)
    stage = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    manifest = artifacts.read_manifest(stage)
    assert manifest["rows"]["users"] == 48 and manifest["rows"]["items"] == 30
    assert manifest["key"]["inputs"]["interactions"] == artifacts.file_fingerprint(interactions_file)
    assert "package" in manifest["code_version"]
    sequences = pq.read_table(stage / pipeline.SEQUENCES)
    assert sequences.num_rows == 48
    assert all(len(items) >= 3 for items in sequences.column("items").to_pylist())


def test_finished_stage_is_skipped_and_a_changed_config_reruns_it(tmp_path, interactions_file):
    cfg = config(tmp_path, interactions_file)
    root = pipeline.run_dir(cfg)
    stage = pipeline.ingest(cfg, root)
    first = (stage / artifacts.MANIFEST).read_text()
    pipeline.ingest(cfg, root)
    assert (stage / artifacts.MANIFEST).read_text() == first  # skipped: nothing rewritten
    pipeline.ingest(config(tmp_path, interactions_file, "data.k_core=5"), root)
    assert (stage / artifacts.MANIFEST).read_text() != first


def test_popularity_stage_metrics(tmp_path, interactions_file):
    cfg = config(tmp_path, interactions_file)
    root = pipeline.run_dir(cfg)
    stage = pipeline.popularity(cfg, root, pipeline.ingest(cfg, root))
    metrics = json.loads((stage / pipeline.METRICS).read_text())
    assert set(metrics["test"]) == {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"}
    assert 0 < metrics["test"]["HR@20"] <= 1 and metrics["epochs"] == 0


def test_bad_rows_are_quarantined_and_reported(tmp_path):
    inter = tmp_path / "x.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                     + "".join(f"u\ti{t}\t{t}\n" for t in range(5)) + "u\ti9\tnot-a-time\nbroken-row\n")
    cfg = config(tmp_path, inter)
    stage = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    rows = artifacts.read_manifest(stage)["rows"]
    assert rows["interactions"] == 5 and sum(rows["quarantined"].values()) == 2
    lines = (stage / pipeline.QUARANTINE).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["field"] == "timestamp"


def test_missing_input_file_is_a_clear_error(tmp_path):
    cfg = config(tmp_path, tmp_path / "absent.parquet")
    with pytest.raises(FileNotFoundError, match="absent.parquet: file not found"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))
