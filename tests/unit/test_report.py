"""Report rendering of the tokenizer stages (stats files as the stages write them)."""
import json

import pytest

from qbr_dist.report import markdown, plot_code_usage, plots_markdown, tokenizer_summary, write_plots

QUANT = {"codebook_version": "523e0f3263b1c0b0", "items": 12, "reconstruction_error": 0.37, "collision_rate": 0.25,
         "suffix_table_size": 2, "dim": 4, "workers": 2,
         "levels": [{"level": 0, "usage": 0.75, "perplexity": 2.8, "dead_codes": 1, "inertia": 3.0, "counts": [6, 4, 2, 0]},
                    {"level": 1, "usage": 1.0, "perplexity": 3.9, "dead_codes": 0, "inertia": 1.0, "counts": [3, 3, 3, 3]}]}
FUSION = {"modality_weights": [{"text": 0.5, "image": 0.0, "tokens": 0.2, "cooc": 0.3}], "mean_gate": [0.91],
          "modality_presence": {"text": 12, "image": 0, "tokens": 12, "cooc": 10}, "mean_depth": 1.0,
          "items": 12, "cold_items": 1, "steps": 40, "curve": [{"epoch": 1, "loss": 3.0}]}
REPORT = {"dataset": "x", "split": "leave-one-out", "data": {"items": 12, "users": 5},
          "models": {"popularity": {"test": dict.fromkeys(["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"], 0.1),
                                    "valid": {"NDCG@10": 0.1}, "epochs": 0, "train_wall_s": 0}}}


def test_tokenizer_section_shows_usage_collisions_and_modality_weights(tmp_path):
    (tmp_path / "fusion").mkdir()
    (tmp_path / "quantize").mkdir()
    (tmp_path / "fusion" / "fusion_stats.json").write_text(json.dumps(FUSION))
    (tmp_path / "quantize" / "quant_stats.json").write_text(json.dumps(QUANT))
    summary = tokenizer_summary({"fusion": tmp_path / "fusion", "quantize": tmp_path / "quantize"})
    assert "curve" not in summary["fusion"]
    text = markdown(REPORT | {"tokenizer": summary})
    assert "collision rate before the suffix 0.2500" in text and "by residual k-means, 2 levels x 4 codes" in text
    assert "| 0 | 75.0% | 2.8 | 1 |" in text and "| 1 | 100.0% | 3.9 | 0 |" in text
    assert "| layer | text | image | tokens | cooc | mean gate |" in text and "| 1 | 0.500 | n/a | 0.200 | 0.300 | 0.910 |" in text


def test_under_a_cold_split_the_report_also_shows_every_items_codes(tmp_path):
    from qbr_dist import artifacts

    (tmp_path / "quantize").mkdir()
    (tmp_path / "quantize" / "quant_stats.json").write_text(json.dumps(QUANT))
    artifacts.write_manifest(tmp_path / "retokenize", {}, outputs=[], rows={
        "items": 15, "content_queries": 3, "collision_rate": 0.3333, "suffix_table_size": 3, "seconds": 2.0})
    summary = tokenizer_summary({"quantize": tmp_path / "quantize", "retokenize": tmp_path / "retokenize"})
    assert summary["retokenize"] == {"items": 15, "content_queries": 3, "collision_rate": 0.3333,
                                     "suffix_table_size": 3, "contentless": 0}  # a stage written before it counted
    text = markdown(REPORT | {"tokenizer": summary})
    assert "Every item's codes, the cold items' coded afterwards from their content: 15 items (3 with a " \
           "content-predicted query); collision rate before the suffix 0.3333, suffix table 3.\n" in text
    summary["retokenize"]["contentless"] = 2
    assert "suffix table 3. 2 of them had no content at all (no text, image or structure)" in \
        markdown(REPORT | {"tokenizer": summary})


def test_rqvae_codebooks_say_how_they_were_trained():
    quant = QUANT | {"mode": "rqvae", "steps": 120, "reseeded": 3}
    text = markdown(REPORT | {"tokenizer": {"quantize": quant}})
    assert "by RQ-VAE (120 steps, 3 dead codes re-seeded), 2 levels x 4 codes" in text


def test_the_masking_mixture_is_reported():
    models = {name: m | {"mask_mixture": {"random": 0.7, "span": 0.3}} for name, m in REPORT["models"].items()}
    assert "Pretraining masks (share of sequences per strategy): popularity random 70%, span 30%." in markdown(
        REPORT | {"models": models, "tokenizer": {}})


def test_a_resumed_training_says_so_beside_its_train_seconds():
    models = {name: m | {"resumed_at": [15, 45]} for name, m in REPORT["models"].items()}
    assert ("Resumed from checkpoints after a stop or a failed worker (train s counts only the last command that "
            "trained it): popularity at steps 15, 45.") in markdown(REPORT | {"models": models, "tokenizer": {}})
    assert "Resumed" not in markdown(REPORT | {"tokenizer": {}})


def test_without_tokenizer_stages_the_table_stands_alone():
    assert "Semantic IDs" not in markdown(REPORT | {"tokenizer": {}})


def test_code_usage_plot_is_a_png(tmp_path):
    plot_code_usage(QUANT["levels"], tmp_path / "usage.png")
    assert (tmp_path / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_plots_curves_losses_model_metrics_and_code_usage(tmp_path):
    curve = [{"step": 10, "valid_NDCG@10": 0.1, "train_loss": 5.0}, {"step": 20, "valid_NDCG@10": 0.2, "train_loss": 4.0}]
    models = {"bert4rec": REPORT["models"]["popularity"] | {"test_cold": REPORT["models"]["popularity"]["test"]}}
    plots = write_plots(REPORT | {"models": models, "tokenizer": {"quantize": QUANT}},
                        {"bert4rec": curve, "popularity": []}, tmp_path)
    assert sorted(plots.values()) == ["codebook_usage.png", "model_metrics.png", "training_curves.png",
                                      "training_loss.png"]
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in plots.values())
    assert "![test metrics side by side per model](model_metrics.png)" in plots_markdown(plots)
    older = [{k: v for k, v in point.items() if k != "train_loss"} for point in curve]  # curves before losses
    assert "training_loss.png" not in write_plots(REPORT | {"tokenizer": {}}, {"bert4rec": older}, tmp_path).values()


def test_cold_targets_get_their_own_table_and_id_only_models_are_named_not_scored():
    metrics = dict.fromkeys(["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"], 0.1)
    models = {"content-knn": {"test": metrics, "valid": metrics, "test_cold": metrics | {"HR@10": 0.25}},
              "bert4rec": {"test": metrics, "valid": metrics}}
    data = REPORT["data"] | {"cold_items": 3, "cold_test_users": 2}
    text = markdown(REPORT | {"data": data, "models": models, "tokenizer": {}})
    assert "Cold-item split: 3 items never appear" in text and "2 users whose test target is cold" in text
    assert "| content-knn | 0.1000 | 0.2500 |" in text
    assert "| bert4rec | ID-only: cannot score cold items" in text
    assert "Cold-item split" not in markdown(REPORT | {"tokenizer": {}})


def test_seed_summary_gives_mean_and_sample_spread_per_model():
    from qbr_dist.report import seed_summary, seeds_markdown

    def report(value):
        metrics = dict.fromkeys(["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"], value)
        return REPORT | {"models": {"qbert4rec": {"valid": metrics, "test": metrics, "test_cold": metrics},
                                    "bert4rec": {"valid": metrics, "test": metrics}}}

    summary = seed_summary({0: report(0.1), 1: report(0.2), 2: report(0.3)})
    assert summary["seeds"] == [0, 1, 2] and set(summary["models"]["bert4rec"]) == {"valid", "test"}
    ndcg = summary["models"]["qbert4rec"]["test_cold"]["NDCG@10"]
    assert abs(ndcg["mean"] - 0.2) < 1e-12 and abs(ndcg["std"] - 0.1) < 1e-12
    text = seeds_markdown(summary)
    assert "over 3 seeds (0, 1, 2)" in text and "| qbert4rec | 0.2000 ± 0.1000 |" in text
    assert "| model (cold targets) |" in text and text.count("| bert4rec |") == 2
    assert "| bert4rec | ID-only: cannot score cold items" in text  # named, as a single run's report names it


def test_grid_points_and_each_model_choosing_its_point_on_validation_only():
    import pytest

    from qbr_dist.pipeline import grid_points
    from qbr_dist.report import grid_markdown, grid_summary

    assert grid_points(["train.lr=1e-3,3e-4", "model.tokens=semantic,hybrid"]) == [
        ["train.lr=1e-3", "model.tokens=semantic"], ["train.lr=1e-3", "model.tokens=hybrid"],
        ["train.lr=3e-4", "model.tokens=semantic"], ["train.lr=3e-4", "model.tokens=hybrid"]]
    with pytest.raises(ValueError, match="expected SECTION.KEY=VALUE1,VALUE2"):
        grid_points(["train.lr"])
    with pytest.raises(ValueError, match=r"--grid 'train.lr=2e-3': train.lr is in an earlier --grid too; give its "
                                         r"values in one: --grid train.lr=V1,V2"):
        grid_points(["train.lr=1e-3", "model.hidden=32", "train.lr=2e-3"])

    def report(valid_a, test_a, valid_b, test_b):
        def metrics(value):
            return dict.fromkeys(["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"], value)
        return REPORT | {"models": {"a": {"valid": metrics(valid_a), "test": metrics(test_a)},
                                    "b": {"valid": metrics(valid_b), "test": metrics(test_b)}}}

    summary = grid_summary(["x=1,2"], [(["x=1"], report(0.2, 0.1, 0.1, 0.9)), (["x=2"], report(0.1, 0.9, 0.3, 0.2))])
    assert summary["models"]["a"]["best"] == ["x=1"] and summary["models"]["a"]["test"]["MRR"] == 0.1
    assert summary["models"]["b"]["best"] == ["x=2"] and summary["models"]["b"]["test"]["MRR"] == 0.2
    text = grid_markdown(summary)
    assert "| a | x=1 (chosen) | 0.2000 |" in text and "| a | x=2 | 0.1000 |" in text

    later = report(0.1, 0.9, 0.3, 0.2)
    later["models"]["c"] = later["models"]["b"] | {"test": later["models"]["a"]["test"]}  # only at the second point
    summary = grid_summary(["x=1,2"], [(["x=1"], report(0.2, 0.1, 0.1, 0.9)), (["x=2"], later)])
    assert summary["models"]["c"]["best"] == ["x=2"] and summary["models"]["c"]["test"]["MRR"] == 0.9
    assert "cold targets" not in grid_markdown(summary)
    later["models"]["c"]["test_cold"] = dict.fromkeys(later["models"]["c"]["test"], 0.05)  # a cold split's scores
    text = grid_markdown(grid_summary(["x=1,2"], [(["x=1"], report(0.2, 0.1, 0.1, 0.9)), (["x=2"], later)]))
    assert "| model (chosen point, cold targets) |" in text and "| c | 0.0500 | 0.0500 |" in text
    assert "| a | ID-only: cannot score cold items" in text  # named, as in a single run's and the seeds' tables


def test_a_model_the_grid_does_not_change_chooses_no_point_and_an_earlier_grid_summary_is_kept(tmp_path):
    from qbr_dist.pipeline import keep_earlier_grid
    from qbr_dist.report import grid_markdown, grid_summary, write_summary

    def metrics(value):
        return dict.fromkeys(["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR"], value)

    def report(valid, stage_key):
        return REPORT | {"models": {"popularity": {"valid": metrics(0.05), "test": metrics(0.04), "stage_key": "p1"},
                                    "bert4rec": {"valid": metrics(valid), "test": metrics(valid), "stage_key": stage_key}}}

    points = [(["train.lr=1"], report(0.1, "b1")), (["train.lr=2"], report(0.2, "b2"))]
    summary = grid_summary(["train.lr=1,2"], points)
    assert summary["models"]["popularity"]["unchanged"] and summary["models"]["popularity"]["best"] is None
    assert summary["models"]["bert4rec"]["best"] == ["train.lr=2"] and not summary["models"]["bert4rec"]["unchanged"]
    text = grid_markdown(summary)
    assert "| popularity | every point (the grid changes none of its settings) | 0.0500 |" in text
    assert text.count("| popularity |") == 2 and "| popularity | 0.0400 |" in text
    assert "| bert4rec | train.lr=2 (chosen) | 0.2000 |" in text and text.startswith("Grid search over train.lr=1,2:")
    third = report(0.3, "b3")
    third["models"]["c"] = third["models"]["popularity"]  # the same stage, but only at one of the points
    points[1][1]["models"]["c"] = third["models"]["popularity"]
    partial = grid_summary(["train.lr=1,2,3"], [*points, (["train.lr=3"], third)])
    assert not partial["models"]["c"]["unchanged"] and partial["models"]["popularity"]["unchanged"]

    write_summary(tmp_path, "grid", summary, text)
    keep_earlier_grid(tmp_path, ["train.lr=1,2"])  # the same grid again replaces its own summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.md"]
    (tmp_path / "grid.json").write_text(json.dumps(summary | {"grid": ["b=1,2", "a=1,2"]}))
    keep_earlier_grid(tmp_path, ["a=1,2", "b=1,2"])  # the same grid, its options in another order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "grid.md"]
    keep_earlier_grid(tmp_path, ["model.dropout=0.1,0.3"])
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 2 and all(name.startswith("grid-") for name in kept)
    assert (tmp_path / kept[1]).read_text() == text


def test_readme_table_is_replaced_between_the_markers_with_date_and_machine(tmp_path):
    import datetime
    import os

    import pytest
    import torch

    from qbr_dist.report import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    update_readme(readme, "| new | table |\n")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| new | table |" in text and f"Run on {datetime.date.today().isoformat()}" in text
    assert f"{os.cpu_count()} CPUs" in text
    assert f"torch kernels {torch.backends.cpu.get_cpu_capability()})" in text  # what FP sums differ by between hosts
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- qbr:results:start -->"):
        update_readme(tmp_path / "bare.md", "x")


def test_grid_values_may_be_lists_or_paths_and_every_point_is_checked_before_any_runs(monkeypatch, tmp_path):
    from qbr_dist import pipeline
    from qbr_dist.config import ConfigError, load_config

    assert pipeline.grid_points(["train.mask_weights=[1,0,0,0],[0,1,0,0]", "encode.text_model='a,b','c'"]) == [
        ["train.mask_weights=[1,0,0,0]", "encode.text_model='a,b'"], ["train.mask_weights=[1,0,0,0]", "encode.text_model='c'"],
        ["train.mask_weights=[0,1,0,0]", "encode.text_model='a,b'"], ["train.mask_weights=[0,1,0,0]", "encode.text_model='c'"]]
    assert pipeline.grid_point_name("demo", ["encode.text_model='/models/a b'", "train.lr=1e-3"]) == \
        "demo-encode.text_model___models_a_b_-train.lr_1e-3"
    ran = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: ran.append(cfg.run.name))
    with pytest.raises(ConfigError, match=r"^--grid train.lr=-1: config key 'train.lr'"):  # the option that gave it
        pipeline.run_grid(lambda extra: load_config(None, [f"run.root='{tmp_path}'"], grid=extra), ["train.lr=1e-3,-1"])
    assert ran == []  # the bad second point stopped the grid before its good first point ran
    with pytest.raises(ValueError, match=r"--grid 'run.name=a,b': every grid point has its own run folder already"):
        pipeline.grid_points(["train.lr=1e-3,1e-4", "run.name=a,b"])


def test_grid_with_seeds_is_refused(capsys):
    from qbr_dist.cli import main

    assert main(["run", "--grid", "train.lr=1e-3,3e-4", "--seeds", "3"]) == 2
    assert "--grid with --seeds" in capsys.readouterr().err


def test_seeds_and_grid_points_get_their_own_run_directory_but_share_the_catalogs_shards():
    from qbr_dist.config import load_config
    from qbr_dist.pipeline import member_config, run_dir

    cfg = load_config(None, ["run.name=demo"])
    member = member_config(cfg, "demo", name="demo-seed1", seed=1)
    assert (member.run.name, member.run.seed, member.shards.name) == ("demo-seed1", 1, "demo")
    assert run_dir(member) != run_dir(cfg) and cfg.shards.name == ""
    named = load_config(None, ["run.name=demo", "shards.name=catalog"])
    assert member_config(named, "demo", name="demo-x").shards.name == "catalog"


def test_the_html_report_shows_codes_only_for_a_config_with_the_stages(tmp_path):
    from qbr_dist import artifacts
    from qbr_dist.config import load_config
    from qbr_dist.inspect.html_report import write_html

    (tmp_path / "report.md").write_text("| model | HR@10 |\n|---|---|\n| popularity | 0.1 |\n")
    artifacts.write_manifest(tmp_path / "quantize", {"stage": "quantize"}, outputs=[], rows={})  # an older config's
    page = write_html(load_config(None), tmp_path, codes=False, recommend=False).read_text()
    assert "popularity" in page and 'id="codes"' not in page and 'id="recommendations"' not in page


def test_the_report_names_each_stage_that_quarantined_records_and_its_file(tmp_path):
    from qbr_dist import artifacts
    from qbr_dist.pipeline import quarantine_files
    from qbr_dist.report import quarantine_markdown

    for stage, records in (("ingest", 2), ("encode", 0), ("retokenize", 1)):
        outputs = ["items.parquet"] + (["quarantine.jsonl"] if records else [])
        artifacts.write_manifest(tmp_path / stage, {"stage": stage}, outputs=outputs, rows={})
        if records:
            (tmp_path / stage / "quarantine.jsonl").write_text('{"reason": "bad"}\n' * records)
    (tmp_path / "encode" / "quarantine.jsonl").write_text("{}\n")  # a file the manifest does not list: a stale one
    files = quarantine_files({stage: tmp_path / stage for stage in ("ingest", "encode", "retokenize", "absent")})
    assert files == {"ingest": tmp_path / "ingest" / "quarantine.jsonl",
                     "retokenize": tmp_path / "retokenize" / "quarantine.jsonl"}
    report = {"quarantined": {"ingest": {"records": 2, "file": "i.jsonl"}, "retokenize": {"records": 1, "file": "r"}}}
    assert quarantine_markdown(report) == ["", "Input records skipped and listed in their stage's quarantine.jsonl "
                                               "(report.json names the files): ingest 2; retokenize 1."]
    assert quarantine_markdown({"quarantined": {}}) == ["", "No input record was quarantined."]
    assert quarantine_markdown({}) == [] and "quarantine" not in markdown(REPORT)  # a report from before the key


def test_users_left_out_for_too_short_a_history_are_counted_in_the_report():
    from qbr_dist.report import markdown

    short = REPORT | {"data": REPORT["data"] | {"users_too_short": 40}}
    assert "\n40 users with fewer than 3 interactions are left out (a leave-one-out split needs 3).\n" in markdown(short)
    counted = REPORT | {"data": REPORT["data"] | {"users_too_short": 40, "short_user_rows": 75}}
    assert "\n40 users with fewer than 3 interactions (75 interactions) are left out" in markdown(counted)
    assert "fewer than 3 interactions" not in markdown(REPORT | {"data": REPORT["data"] | {"users_too_short": 0}})
