"""The encode stage's driver side with Ray Data stood in for: how often a run reads each shard file."""
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from qbr_dist import artifacts, pipeline
from qbr_dist.config import load_config
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import write_shards
from qbr_dist.encode import job


class Chain:
    """What the job builds on a Ray dataset, reduced to `map_batches` giving itself back."""

    def map_batches(self, *args, **kwargs):
        return self


def encoded(dataset, counter) -> pa.Table:
    """One kept item with text and no image, as the encoder actors would give it back."""
    return pa.table({"item_id": ["x"], "text_emb": list(np.ones((1, 4), np.float32)), "has_text": [True],
                     "image_emb": list(np.zeros((1, 0), np.float32)), "has_image": [False], "problem": [""],
                     "fatal": [False]})


def shards(folder: Path) -> dict:
    catalog = folder / "items.parquet"
    pq.write_table(pa.table({"item_id": [f"i{n}" for n in range(6)], "text": [f"text {n}" for n in range(6)]}), catalog)
    with Quarantine() as quarantine:
        return write_shards(catalog, folder, max_bytes=100, images_dir=None, image_max_side=64, max_pixels=10**6,
                            jpeg_quality=90, quarantine=quarantine)


def test_an_encode_run_reads_each_shard_once_even_a_damaged_one(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    folder.mkdir()
    damaged, intact = (folder / shard["file"] for shard in shards(folder)["shards"])
    damaged.write_bytes(damaged.read_bytes()[:5000])  # its first two samples are complete, the third is cut
    reads, fingerprint = Counter(), artifacts.file_fingerprint

    def counted(path):
        reads[Path(path).name] += 1
        return fingerprint(path)

    monkeypatch.setattr(artifacts, "file_fingerprint", counted)
    monkeypatch.setattr(pipeline, "start_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(ray.data, "read_webdataset", lambda *args, **kwargs: Chain())
    monkeypatch.setattr(job, "batch_blocks", lambda dataset, batch_size: dataset)
    monkeypatch.setattr(job, "_collect_counting", encoded)
    cfg = load_config(None, [f"run.root='{tmp_path}'", "run.name=t", "obs.enabled=false"])
    root = pipeline.run_dir(cfg)

    stage = pipeline.encode(cfg, root, folder)  # salvages the damaged shard, then keys the stage by it
    assert reads == {intact.name: 1, damaged.name: 1}
    done = job._read_done(stage)
    assert done[damaged.name]["salvaged"] == fingerprint(damaged) and "salvaged" not in done[intact.name]
    assert artifacts.read_manifest(stage)["key"]["inputs"]["damaged_shards"] == {damaged.name: fingerprint(damaged)}

    reads.clear()
    damaged.write_bytes(damaged.read_bytes() + b"\0")  # changed since: checked for the key, the skip and the salvage
    pipeline.encode(cfg, root, folder)
    assert reads == {damaged.name: 1}
    assert job._read_done(stage)[damaged.name]["salvaged"] == fingerprint(damaged)
