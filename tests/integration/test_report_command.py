"""`qbr report` of the shared tiny run: the same report from the stages as they are, also under
settings that change only where or how fast stages run; and a refusal naming the first stage a
changed setting feeds, so every stage is shown to be keyed by its own settings. A raw file gone since
the run is taken as the ingest stage recorded it; another file in its place is refused."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qbr_dist import pipeline
from qbr_dist.config import config_from_dict
from qbr_dist.data.quarantine import DataError

pytestmark = pytest.mark.integration

RESOURCES = {("encode", "actors"): 2, ("quant", "retokenize_actors"): 2, ("eval", "chunk_size"): 7,
             ("eval", "batch_size"): 3, ("runtime", "num_workers"): 1, ("runtime", "checkpoint_every"): 3}
# each setting, and the first stage of the run it feeds
RESULTS = [(("data", "cold_seed"), 1, "ingest"), (("structure", "window"), 2, "structure"),
           (("encode", "max_image_pixels"), 10**6, "encode"), (("fusion", "lr"), 0.5, "fusion"),
           (("quant", "codebook_size"), 4, "quantize"), (("eval", "exclude_history"), True, "popularity"),
           (("model", "hidden"), 8, "bert4rec"), (("train", "lr"), 0.5, "bert4rec")]


def changed(cfg, settings: dict):
    raw = cfg.to_dict()
    for (section, name), value in settings.items():
        raw[section][name] = value
    return config_from_dict(raw)


def manifests(run) -> dict:
    return {path: path.read_bytes() for path in sorted(run.glob("*/manifest.json"))}


def test_report_renders_the_run_and_refuses_a_config_that_did_not_make_it(tokenized_run):
    import ray

    cfg = tokenized_run.cfg
    before = manifests(pipeline.run_dir(cfg))
    report = pipeline.report_only(changed(cfg, RESOURCES))
    assert report["models"] == tokenized_run.report["models"]
    again = pipeline.report_only(cfg)
    assert again["config"] == cfg.to_dict()  # rendered again with the run's own config
    assert again["quarantined"] == tokenized_run.report["quarantined"]
    for stage, entry in again["quarantined"].items():  # each stage's own count, as its file lists them
        assert entry["records"] == len(Path(entry["file"]).read_text().splitlines()) > 0
    listed = "Input records skipped" if again["quarantined"] else "No input record was quarantined."
    assert listed in (pipeline.run_dir(cfg) / "report.md").read_text()

    for setting, value, stage in RESULTS:  # each names the setting that changed
        named = rf"/{stage}: computed with other settings \([^;]*\b{setting[1]} [^;]* -> [^;]*\); run `qbr run`"
        with pytest.raises(pipeline.StageNotCurrent, match=named):
            pipeline.report_only(changed(cfg, {setting: value}))
    assert manifests(pipeline.run_dir(cfg)) == before and not ray.is_initialized()  # it ran nothing


def test_report_of_a_run_whose_raw_files_are_gone_takes_them_as_ingest_recorded(tokenized_run, tmp_path, caplog):
    cfg = tokenized_run.cfg
    interactions = Path(cfg.data.interactions)
    kept = tmp_path / interactions.name
    shutil.move(interactions, kept)
    try:
        with caplog.at_level("WARNING", logger=pipeline.log.name):
            assert pipeline.report_only(cfg)["models"] == tokenized_run.report["models"]
        assert f"{interactions}: not found, so not checked" in caplog.text
        with pytest.raises(DataError, match="file not found"):
            pipeline.raw_fingerprints(cfg)  # only a report takes the record: a run needs the file
        interactions.write_bytes(b"another file")
        with pytest.raises(pipeline.StageNotCurrent, match="ingest: computed with another 'interactions' input"):
            pipeline.report_only(cfg)
    finally:
        interactions.unlink(missing_ok=True)
        shutil.move(kept, interactions)
