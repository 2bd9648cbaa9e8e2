"""Driver-side stages without Ray: ingest and popularity, their manifests and skipping."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from qbr_dist import artifacts, pipeline
from qbr_dist.config import load_config
from qbr_dist.data.quarantine import DataError
from tests.conftest import synthetic_interactions


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


def test_finished_stage_is_skipped_and_a_changed_config_reruns_it_saying_which_setting(tmp_path, interactions_file,
                                                                                      caplog):
    cfg = config(tmp_path, interactions_file)
    root = pipeline.run_dir(cfg)
    stage = pipeline.ingest(cfg, root)
    first = (stage / artifacts.MANIFEST).read_text()
    pipeline.ingest(cfg, root)
    assert (stage / artifacts.MANIFEST).read_text() == first  # skipped: nothing rewritten
    with caplog.at_level("INFO", logger="qbr"):
        pipeline.ingest(config(tmp_path, interactions_file, "data.k_core=5"), root)
    assert (stage / artifacts.MANIFEST).read_text() != first
    assert "stage ingest: running (computed with other settings (data.k_core 0 -> 5))" in caplog.text


def test_a_cold_split_turned_off_leaves_no_cold_items_behind(tmp_path, interactions_file):
    stage = pipeline.ingest(config(tmp_path, interactions_file, "data.cold_fraction=0.3"), tmp_path / "t")
    assert np.load(stage / pipeline.COLD).sum() > 0
    pipeline.ingest(config(tmp_path, interactions_file), tmp_path / "t")
    assert not (stage / pipeline.COLD).exists()  # training would otherwise keep those items out


def test_another_run_reuses_finished_stages_with_the_same_key(tmp_path, interactions_file):
    first = config(tmp_path, interactions_file)
    ingest = pipeline.ingest(first, pipeline.run_dir(first))
    popularity = pipeline.popularity(first, pipeline.run_dir(first), ingest)
    second = config(tmp_path, interactions_file, "run.name=t2", "eval.exclude_history=true")
    reused = pipeline.ingest(second, pipeline.run_dir(second))
    assert reused.parent.name == "t2" and (reused / pipeline.SEQUENCES).is_file()
    assert (reused / artifacts.MANIFEST).read_text() == (ingest / artifacts.MANIFEST).read_text()
    assert (reused / pipeline.SEQUENCES).stat().st_ino == (ingest / pipeline.SEQUENCES).stat().st_ino  # linked
    assert not list(pipeline.run_dir(second).glob("*.reusing"))
    # eval settings that change results enter the popularity key: that stage is not taken from the first run
    again = pipeline.popularity(second, pipeline.run_dir(second), reused)
    assert artifacts.read_manifest(again)["key"] != artifacts.read_manifest(popularity)["key"]
    changed = config(tmp_path, interactions_file, "run.name=t3", "data.k_core=5")
    assert (pipeline.ingest(changed, pipeline.run_dir(changed)) / artifacts.MANIFEST).read_text() != (
        ingest / artifacts.MANIFEST).read_text()


def test_shards_are_shared_by_runs_of_one_catalog_under_other_roots_or_split_settings(tmp_path, interactions_file):
    def run(root, *extra):
        cfg = load_config(None, [f"run.root='{tmp_path / root}'", "run.name=t", "data.dataset=files",
                                 f"data.interactions='{interactions_file}'", f"shards.root='{tmp_path / 'shards'}'",
                                 *extra])
        ingest = pipeline.ingest(cfg, pipeline.run_dir(cfg))
        return ingest, pipeline.shards(cfg, ingest)

    first_ingest, folder = run("a")
    written = (folder / artifacts.MANIFEST).read_text()
    other_ingest, shared = run("b", "data.cold_fraction=0.3")  # another ingest manifest, the same catalog table
    assert artifacts.manifest_fingerprint(other_ingest) != artifacts.manifest_fingerprint(first_ingest)
    assert shared == folder and (folder / artifacts.MANIFEST).read_text() == written  # not rewritten

    manifest = artifacts.read_manifest(folder)  # shards written before the key took the catalog's sha256
    artifacts.write_manifest(folder, {name: value for name, value in manifest["key"].items() if name != "settings"} | {
        "inputs": {"ingest": artifacts.manifest_fingerprint(first_ingest)}}, outputs=manifest["outputs"],
        rows=manifest["rows"])
    earlier = (folder / artifacts.MANIFEST).read_text()
    assert run("a")[1] == folder and (folder / artifacts.MANIFEST).read_text() == earlier  # still current


def test_interactions_whose_item_ids_the_catalog_lacks_are_named_with_an_id_from_each_file(tmp_path, caplog):
    interactions = synthetic_interactions()
    events = tmp_path / "events.parquet"
    pq.write_table(interactions, events)
    ids = sorted(set(interactions.column("item_id").to_pylist()))
    padded = tmp_path / "padded.parquet"  # the same items, their ids written another way
    pq.write_table(pa.table({"item_id": [f"00{i[1:]}" for i in ids], "title": ids}), padded)
    cfg = config(tmp_path, events, f"data.catalog='{padded}'", "data.text_fields=['title']")
    with pytest.raises(DataError, match=r"events.parquet: (\d|,)+ of (\d|,)+ interactions name an item id that "
                                        r".*padded.parquet lacks \(e.g. 'i\d+'; the catalog's ids look like '00\d+'\)"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))
    most = tmp_path / "most.parquet"  # two thirds of the items written another way: a warning, the rest trains
    pq.write_table(pa.table({"item_id": [f"00{i[1:]}" if k % 3 else i for k, i in enumerate(ids)], "title": ids}), most)
    cfg = config(tmp_path, events, f"data.catalog='{most}'", "data.text_fields=['title']", "run.name=most")
    with caplog.at_level("WARNING", logger="qbr"):
        stage = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    assert "most.parquet lacks" in caplog.text and artifacts.read_manifest(stage)["rows"]["users"] > 0
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}), empty)
    cfg = config(tmp_path, events, f"data.catalog='{empty}'", "data.text_fields=['title']", "run.name=empty")
    with pytest.raises(DataError, match=r"empty.parquet lacks \(e.g. 'i\d+'; the catalog has no readable item\)"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))


def test_a_batch_larger_than_a_phases_windows_stops_a_run_right_after_ingest(tmp_path, interactions_file, monkeypatch):
    cfg = config(tmp_path, interactions_file, "train.batch_size=5000", "run.tokenize=true")
    monkeypatch.setattr(pipeline, "structure", lambda *args: pytest.fail("the tokenizer ran"))
    with pytest.raises(ValueError, match=r"config key 'train.batch_size': 5000 exceeds the training windows of a "
                                         r"phase \(\{'pretrain': \d+, 'finetune': \d+\}\); set it to at most \d+"):
        pipeline.run_pipeline(cfg)
    assert artifacts.read_manifest(pipeline.run_dir(cfg) / "ingest") is not None


def test_a_structure_field_the_catalog_lacks_is_named_beside_the_fields_it_has_as_the_file_calls_them(tmp_path):
    events, items = tmp_path / "events.parquet", tmp_path / "items.parquet"
    pq.write_table(synthetic_interactions().rename_columns(["user_id", "sku", "timestamp"]), events)
    ids = pq.read_table(events).column("sku").unique()
    pq.write_table(pa.table({"sku": ids, "title": ids, "brand": ids}), items)
    cfg = config(tmp_path, events, f"data.catalog='{items}'", "data.item_id_field=sku", "data.text_fields=['title']",
                 "structure.fields=['category']")
    with pytest.raises(ValueError, match=r"items.parquet: structure.fields names 'category', which the catalog does "
                                         r"not have \(fields: sku, title, brand\)"):
        pipeline.check_structure_fields(cfg, pipeline.ingest(cfg, pipeline.run_dir(cfg)))


def test_ingest_reads_a_shop_exports_own_field_names(tmp_path):
    events = tmp_path / "events.parquet"
    pq.write_table(synthetic_interactions().rename_columns(["customer_id", "sku", "event_time"]), events)
    cfg = config(tmp_path, events, "data.user_id_field=customer_id", "data.item_id_field=sku",
                 "data.timestamp_field=event_time")
    assert artifacts.read_manifest(pipeline.ingest(cfg, pipeline.run_dir(cfg)))["rows"]["users"] == 48


def test_ingest_names_the_likely_encoding_of_a_catalog_with_rows_that_are_not_utf8(tmp_path, caplog):
    events, items = tmp_path / "events.csv", tmp_path / "items.csv"
    events.write_text("user_id,item_id,timestamp\n" + "".join(f"u{i % 4},i{i % 6},{i}\n" for i in range(48)))
    items.write_bytes(b"item_id,title\n" + b"".join(f"i{i},Caf\xe9 {i}\n".encode("latin-1") if i < 2 else
                                                    f"i{i},Tea {i}\n".encode() for i in range(6)))
    cfg = config(tmp_path, events, f"data.catalog='{items}'", "data.text_fields=['title']")
    with caplog.at_level("WARNING", logger="qbr"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))
    assert ("items.csv: 2 rows hold bytes that are not UTF-8, and are quarantined; if the file was exported as "
            "Latin-1 or Windows-1252, convert it and run again: iconv -f cp1252 -t utf-8") in caplog.text


def test_ingest_refuses_a_file_whose_every_row_is_bad_with_the_reason_and_an_example(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("customer_id;sku;event_time\n" + "".join(f"c{i % 3};s{i};0{i % 9 + 1}.01.2024 14:23\n"
                                                                for i in range(30)))
    cfg = config(tmp_path, events, "data.user_id_field=customer_id", "data.item_id_field=sku",
                 "data.timestamp_field=event_time")
    with pytest.raises(DataError, match=r"events.csv: none of its 30 rows could be read; most often 'timestamp is "
                                        r"neither a finite number nor an ISO 8601 time' \(30 rows, e.g. field "
                                        r"'event_time', line 2 '01.01.2024 14:23'\); each listed in .*quarantine"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))


def test_an_unreadable_catalog_is_named_with_an_example_of_its_own(tmp_path):
    events, items = tmp_path / "events.csv", tmp_path / "items.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,1\nu1,,2\n" + "".join(f"u{i},i{i},3\n" for i in range(9)))
    items.write_text("item_id,title\n\n,a\n,b\n")
    cfg = config(tmp_path, events, f"data.catalog='{items}'", "data.text_fields=['title']")
    with pytest.raises(DataError, match=r"items.csv: none of its 2 rows could be read; most often 'empty item id' "
                                        r"\(2 rows, e.g. field 'item_id', line 3\)"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))


def test_ingest_of_csv_files_gives_the_sequences_of_the_same_data_in_parquet(tmp_path):
    interactions = synthetic_interactions()
    ids = sorted(set(interactions.column("item_id").to_pylist()))
    catalog = pa.table({"item_id": ids, "title": [f"Item, {i}" for i in ids]})
    stages = {}
    for kind in ("parquet", "csv"):
        events, items = tmp_path / f"events.{kind}", tmp_path / f"items.{kind}"
        if kind == "parquet":
            pq.write_table(interactions, events)
            pq.write_table(catalog, items)
        else:
            pa_csv.write_csv(interactions, events)
            pa_csv.write_csv(catalog, items)
        cfg = config(tmp_path, events, f"data.catalog='{items}'", "data.text_fields=['title']", f"run.name={kind}")
        stages[kind] = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    for table in (pipeline.SEQUENCES, pipeline.ITEMS):
        assert pq.read_table(stages["csv"] / table).equals(pq.read_table(stages["parquet"] / table))


def test_a_change_of_the_catalog_text_alone_keeps_the_stages_that_read_only_the_sequences(tmp_path):
    interactions = synthetic_interactions()
    events, items = tmp_path / "events.parquet", tmp_path / "items.parquet"
    pq.write_table(interactions, events)
    ids = sorted(set(interactions.column("item_id").to_pylist()))
    pq.write_table(pa.table({"item_id": ids, "title": [f"t{i}" for i in ids], "brand": ["b"] * len(ids)}), items)

    def run(*settings):
        cfg = config(tmp_path, events, f"data.catalog='{items}'", "structure.fields=['brand']", *settings)
        root = pipeline.run_dir(cfg)
        ingest = pipeline.ingest(cfg, root)
        return ingest, pipeline.popularity(cfg, root, ingest), pipeline.structure(cfg, root, ingest)

    def texts(ingest):
        return pq.read_table(ingest / pipeline.ITEMS).column("text").to_pylist()

    ingest, popularity, structure = run("data.text_fields=['title']")
    first, first_texts = artifacts.read_manifest(popularity), texts(ingest)
    first_structure = artifacts.read_manifest(structure)
    assert artifacts.read_manifest(ingest)["content"]["sequences"] == pipeline.sequences_input(ingest)["sequences"]
    ingest, popularity, structure = run("data.text_fields=['title', 'brand']")
    assert texts(ingest) != first_texts  # ingest ran again
    assert artifacts.read_manifest(popularity) == first  # the same sequences: not ranked again
    assert artifacts.read_manifest(structure) == first_structure  # the same sequences and brand field
    ingest, popularity, structure = run("data.text_fields=['title', 'brand']", "data.max_history=5")
    assert artifacts.read_manifest(popularity)["key"]["inputs"] != first["key"]["inputs"]
    pq.write_table(pq.read_table(items).set_column(2, "brand", pa.array(["c"] * len(ids))), items)
    ingest, popularity, structure = run("data.text_fields=['title']")
    # a brand changed: popularity's key is its first one again (it runs, as the max_history run stands in its
    # folder; its finished_at may differ), and structure's is a new one
    assert artifacts.read_manifest(popularity)["key"] == first["key"]
    assert artifacts.read_manifest(structure)["key"]["inputs"]["fields"] != first_structure["key"]["inputs"]["fields"]


def test_stages_after_an_ingest_that_recorded_no_content_keep_its_manifest_fingerprint(tmp_path, interactions_file):
    cfg = config(tmp_path, interactions_file)
    ingest = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    manifest = artifacts.read_manifest(ingest)
    artifacts.write_json(ingest / artifacts.MANIFEST, {k: v for k, v in manifest.items() if k != "content"})
    assert pipeline.sequences_input(ingest) == {"ingest": artifacts.manifest_fingerprint(ingest)}
    assert artifacts.stage_is_current(ingest, manifest["key"])


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
    assert len(lines) == 2 and [json.loads(line)["field"] for line in lines] == ["*", "timestamp"]


def test_missing_input_file_is_a_clear_error(tmp_path):
    cfg = config(tmp_path, tmp_path / "absent.parquet")
    with pytest.raises(DataError, match="absent.parquet: file not found"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))


def test_structure_stage_tokens_and_training_only_cooccurrence(tmp_path):
    """Two items that only ever meet as validation and test targets must not co-occur."""
    rows = [("u0", "a"), ("u0", "b"), ("u0", "x"), ("u0", "y"), ("u1", "b"), ("u1", "a"), ("u1", "c"),
            ("u2", "c"), ("u2", "a"), ("u2", "b")]
    inter = tmp_path / "i.parquet"
    pq.write_table(pa.table({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows],
                             "timestamp": [float(t) for t in range(len(rows))]}), inter)
    catalog = tmp_path / "c.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b", "c", "x", "y"], "title": ["A", "B", "C", "X", "Y"],
                             "genre": ["Drama Comedy", "Drama", None, "Comedy", "Drama"]}), catalog)
    cfg = config(tmp_path, inter, f"data.catalog='{catalog}'", "data.text_fields=['title']",
                 "structure.fields=['genre']", "structure.separator=' '", "structure.min_count=1", "structure.dim=2")
    root = pipeline.run_dir(cfg)
    stage = pipeline.structure(cfg, root, pipeline.ingest(cfg, root))
    table = {r["item_id"]: r for r in pq.read_table(stage / pipeline.STRUCTURE).to_pylist()}
    vocab = json.loads((stage / pipeline.STRUCTURE_VOCAB).read_text())
    assert vocab == ["<pad>", "genre=Comedy", "genre=Drama"]
    assert table["a"]["struct_tokens"] == [1, 2] and table["c"]["struct_tokens"] == []
    assert not table["x"]["has_cooc"] and not table["y"]["has_cooc"] and table["a"]["has_cooc"]
    assert not table["c"]["has_cooc"]  # c follows a only in validation and test targets
    assert artifacts.read_manifest(stage)["rows"]["with_cooccurrence"] == 2


def test_structure_stage_names_a_missing_field_and_the_tokenizer_stops_before_encoding(tmp_path, interactions_file,
                                                                                       monkeypatch):
    cfg = config(tmp_path, interactions_file, "structure.fields=['brand']")
    root = pipeline.run_dir(cfg)
    with pytest.raises(ValueError, match=r"^the catalog made from data.interactions \(no data.catalog\): structure.fields names 'brand'"):
        pipeline.structure(cfg, root, pipeline.ingest(cfg, root))

    def unreachable(*args):
        raise AssertionError("shards written for a run whose structure.fields are wrong")

    monkeypatch.setattr(pipeline, "shards", unreachable)
    with pytest.raises(ValueError, match=r"^the catalog made from data.interactions \(no data.catalog\): structure.fields names 'brand'"):
        pipeline.tokenize(cfg, root)


def test_a_run_directory_in_use_stops_a_second_run_before_any_stage(tmp_path, interactions_file):
    cfg = config(tmp_path, interactions_file, "obs.enabled=false")
    with artifacts.exclusive(pipeline.run_dir(cfg)):
        with pytest.raises(RuntimeError, match="this run directory is in use by pid"):
            pipeline.run_pipeline(cfg)
    assert not (pipeline.run_dir(cfg) / "ingest").exists()


def test_a_report_of_a_run_still_going_names_its_holder_not_its_unfinished_stages(tmp_path, interactions_file):
    cfg = config(tmp_path, interactions_file, "obs.enabled=false")
    with pytest.raises(FileNotFoundError, match=r"/t: no such run; run `qbr run` first"):
        pipeline.report_only(cfg)
    assert not pipeline.run_dir(cfg).exists()  # a report creates no run folder
    with artifacts.exclusive(pipeline.run_dir(cfg)):
        with pytest.raises(RuntimeError, match="this run directory is in use by pid"):
            pipeline.report_only(cfg)
    with pytest.raises(FileNotFoundError, match=r"stage\(s\) ingest, popularity, bert4rec not finished"):
        pipeline.report_only(cfg)


def test_suffixes_are_kept_only_from_codes_of_the_same_codebook(tmp_path):
    from qbr_dist.quant.codes import write_codes

    codes = tmp_path / "codes.parquet"
    write_codes(codes, np.array(["a"]), np.ones((1, 2), np.int64), np.array([0]), "v1")
    pipeline.check_keep_files([codes], "v1", levels=2)
    with pytest.raises(ValueError, match="codes.parquet: codes of 2 levels, but the run's codebook has 3"):
        pipeline.check_keep_files([codes], "v1", levels=3)
    with pytest.raises(ValueError, match="codes.parquet: codes of codebook v1, but the run's codebook is v2"):
        pipeline.check_keep_files([codes], "v2")
    with pytest.raises(FileNotFoundError, match="gone.parquet: no codes file to keep suffixes from"):
        pipeline.check_keep_files([codes, tmp_path / "gone.parquet"])
    (tmp_path / "codebooks.safetensors").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="codebooks.safetensors: not a parquet codes file"):
        pipeline.check_keep_files([tmp_path / "codebooks.safetensors"])
    pq.write_table(pa.table({"item_id": ["a"]}), tmp_path / "items.parquet")  # a feature table, say
    with pytest.raises(ValueError, match="items.parquet: not a codes file [(]expected fields item_id: string and"):
        pipeline.check_keep_files([tmp_path / "items.parquet"], "v1")
    pq.write_table(pa.table({"item_id": ["a"], "codes": [[1, 0]]}), tmp_path / "by-hand.parquet")
    with pytest.raises(ValueError, match="by-hand.parquet: codes of codebook [(]none[)], but"):
        pipeline.check_keep_files([tmp_path / "by-hand.parquet"], "v1")


def test_a_stage_that_exports_no_weights_leaves_no_earlier_ones(tmp_path, interactions_file):
    from qbr_dist.seqrec.trained import MODEL_SPEC
    from qbr_dist.train.export import WEIGHTS

    for stale in (WEIGHTS, MODEL_SPEC):
        (tmp_path / stale).write_text("an earlier run's")
    cfg = config(tmp_path, interactions_file, "runtime.zero_stage=0")
    assert pipeline._export_weights(cfg, "unused", tmp_path, {}) == []
    assert not (tmp_path / WEIGHTS).exists() and not (tmp_path / MODEL_SPEC).exists()


def test_a_restart_resumes_a_training_run_only_with_the_same_checkpoint_layout(tmp_path, interactions_file):
    key = {"stage": "fusion", "inputs": {}}
    name = pipeline._train_run_name("fusion", key, config(tmp_path, interactions_file))
    assert name == pipeline._train_run_name("fusion", key, config(tmp_path, interactions_file))
    for layout in ("runtime.zero_stage=3", "runtime.num_workers=1"):  # DeepSpeed could not load the old partitions
        assert pipeline._train_run_name("fusion", key, config(tmp_path, interactions_file, layout)) != name


def test_the_cli_retokenizes_a_table_into_its_own_folder():
    from pathlib import Path

    paths = ("/data/NEW.parquet", "/data/2024-05/items.parquet", "/data/2024-06/items.parquet", ".")
    names = [pipeline.cli_retokenize_stage(Path(p)) for p in paths]
    assert names[0].startswith("retokenize-NEW-") and names[1].startswith("retokenize-items-")
    assert len(set(names)) == 4 and "retokenize" not in names  # never the pipeline's own folder
    assert pipeline.cli_retokenize_stage(Path("/data/NEW.parquet")) == names[0]  # the same table: the same folder


def test_encoder_vectors_some_items_lack_are_refused_before_quantizing(tmp_path):
    encode = tmp_path / "encode"
    artifacts.write_manifest(encode, artifacts.stage_key("encode", {}, {}), outputs=[],
                             rows={"items": 10, "with_text": 9, "with_image": 10})
    with pytest.raises(ValueError, match=r"quant.input = 'text_emb', but 1 of 10 items have no such vector"):
        pipeline.quantize(load_config(None, ["quant.input='text_emb'"]), tmp_path, encode)
    pipeline._every_item_has("image_emb", encode)  # every item has an image: nothing to refuse


@pytest.mark.parametrize("with_text", [0, 3])
def test_content_knn_runs_only_when_some_item_has_text(tmp_path, monkeypatch, caplog, with_text):
    encode = tmp_path / "encode"
    artifacts.write_manifest(encode, artifacts.stage_key("encode", {}, {}), outputs=[],
                             rows={"items": 3, "with_text": with_text, "with_image": 0})
    dirs = {"ingest": tmp_path / "ingest", "encode": encode, "quantize": tmp_path / "quantize"}
    monkeypatch.setattr(pipeline, "ingest", lambda cfg, root: dirs["ingest"])
    monkeypatch.setattr(pipeline, "check_batch_fits", lambda cfg, ingest_dir: None)
    monkeypatch.setattr(pipeline, "tokenize", lambda cfg, root, ingest_dir: dirs)
    monkeypatch.setattr(pipeline, "popularity", lambda cfg, root, ingest_dir: tmp_path / "popularity")
    monkeypatch.setattr(pipeline, "content_knn", lambda cfg, root, ingest_dir, encode_dir: encode_dir)
    monkeypatch.setattr(pipeline, "bert4rec", lambda cfg, root, ingest_dir, **codes: tmp_path / "bert4rec")
    monkeypatch.setattr(pipeline, "_report", lambda cfg, root, model_dirs, *rest, **named: model_dirs)
    with caplog.at_level("INFO", logger=pipeline.log.name):
        models = pipeline._run_stages(load_config(None, [f"run.root='{tmp_path}'", "run.tokenize=true"]))
    assert ("content-knn" in models) == bool(with_text)
    assert ("no item has text features" in caplog.text) == (not with_text)
    assert {"popularity", "bert4rec", "qbert4rec"} <= set(models)


def test_ingest_says_which_filter_left_no_user_and_logs_what_the_cold_split_took(tmp_path, interactions_file, caplog):
    cfg = config(tmp_path, interactions_file, "data.k_core=1000", "data.cold_fraction=0.1")
    with pytest.raises(ValueError, match=r"no user has the 3 interactions a leave-one-out split needs after the "
                                         r"1000-core filter \(data.k_core\) and the cold-item split"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))
    cfg = config(tmp_path, interactions_file, "data.cold_fraction=0.1")
    with caplog.at_level("INFO", logger=pipeline.log.name):
        rows = artifacts.read_manifest(pipeline.ingest(cfg, pipeline.run_dir(cfg)))["rows"]
    read = rows["files"]["interactions"]
    assert read == {"file": interactions_file.name, "read": rows["rows_read"], "quarantined": 0}
    assert (f"ingest: {interactions_file.name}: {read['read']:,} rows read, 0 quarantined; {rows['users']} users"
            in caplog.text and f"cold-item split: {rows['cold_items']} items out" in caplog.text and rows["cold_items"] > 0)


def test_recommend_refuses_a_model_stage_its_config_does_not_train(tmp_path):
    for setting in ("run.tokenize=false", "model.tokens=id"):
        cfg = load_config(None, [f"run.root='{tmp_path}'", setting])
        with pytest.raises(pipeline.StageNotCurrent, match=r"qbert4rec: this config trains no qbert4rec \(run.tokenize"):
            pipeline.finished_model(cfg, "qbert4rec")


def test_new_items_without_structure_tokens_are_said_to_be_fused_without_them(tmp_path, caplog):
    pq.write_table(pa.table({"item_id": ["n1"], "text_emb": [[0.5, 0.5]]}), tmp_path / "new.parquet")
    pq.write_table(pa.table({"item_id": ["n1"], "struct_tokens": [[1]]}), tmp_path / "tokens.parquet")
    cfg = load_config(None, ["structure.fields=['class']"])
    with caplog.at_level("WARNING", logger="qbr"):
        pipeline._warn_without_structure_tokens(cfg, [tmp_path / "tokens.parquet"], tmp_path, own_catalog=False)
        pipeline._warn_without_structure_tokens(cfg, [tmp_path / "new.parquet"], tmp_path, own_catalog=True)
        assert not caplog.records
        pipeline._warn_without_structure_tokens(cfg, [tmp_path / "new.parquet"], tmp_path, own_catalog=False)
    assert "new.parquet has no struct_tokens column" in caplog.text and "structure_vocab.json" in caplog.text


def test_rerun_computes_a_current_stage_again_from_an_empty_folder_once_per_command(tmp_path, interactions_file,
                                                                                       monkeypatch, caplog):
    cfg, second = config(tmp_path, interactions_file), config(tmp_path, interactions_file, "run.name=t2")
    ingest = pipeline.ingest(cfg, pipeline.run_dir(cfg))
    popularity = pipeline.popularity(cfg, pipeline.run_dir(cfg), ingest)
    before = {stage: (stage / artifacts.MANIFEST).read_text() for stage in (ingest, popularity)}
    (ingest / "left-by-old-code.ckpt").write_text("stale")
    with caplog.at_level("INFO", logger="qbr"), pipeline.rerunning(["ingest"]):
        assert pipeline.ingest(cfg, pipeline.run_dir(cfg)) == ingest
        rerun = (ingest / artifacts.MANIFEST).read_text()
        pipeline.ingest(cfg, pipeline.run_dir(cfg))  # the same command again: done already
        pipeline.popularity(cfg, pipeline.run_dir(cfg), ingest)
        reused = pipeline.ingest(second, pipeline.run_dir(second))  # a seed or grid point: this command's, linked
    assert "stage ingest: running (--rerun)" in caplog.text and caplog.text.count("running (--rerun)") == 1
    assert not (ingest / "left-by-old-code.ckpt").exists() and (ingest / artifacts.MANIFEST).read_text() == rerun
    # ingest wrote the same tables: the stages after it key on their content, and stay current
    assert (popularity / artifacts.MANIFEST).read_text() == before[popularity]
    assert (reused / pipeline.SEQUENCES).stat().st_ino == (ingest / pipeline.SEQUENCES).stat().st_ino
    caplog.clear()
    pipeline.ingest(cfg, pipeline.run_dir(cfg))
    assert (ingest / artifacts.MANIFEST).read_text() == rerun  # outside the command: current, skipped
    with pytest.raises(ValueError, match="--rerun ingset: no such stage"), pipeline.rerunning(["ingset"]):
        pass


def test_a_stage_skipped_says_which_commit_computed_it_when_the_code_has_moved_on(tmp_path, interactions_file,
                                                                                  monkeypatch, caplog):
    cfg = config(tmp_path, interactions_file)
    monkeypatch.setattr(artifacts, "code_version", lambda: {"package": "0.1.0", "git": "a" * 40})
    pipeline.ingest(cfg, pipeline.run_dir(cfg))
    with caplog.at_level("INFO", logger="qbr"):
        pipeline.ingest(cfg, pipeline.run_dir(cfg))
        assert "stage ingest: up to date, skipped\n" in caplog.text + "\n"
        monkeypatch.setattr(artifacts, "code_version", lambda: {"package": "0.1.0", "git": "b" * 40})
        pipeline.ingest(cfg, pipeline.run_dir(cfg))
    assert ("stage ingest: up to date, skipped (computed at commit aaaaaaaaaa, the code is at bbbbbbbbbb: --rerun "
            "ingest redoes it)") in caplog.text
