import json
import subprocess
import sys

import pytest

from qbr_dist.cli import build_parser, main

SUBCOMMANDS = [["run"], ["data"], ["data", "fetch"], ["data", "synth"], ["shards"], ["shards", "write"], ["encode"], ["quantize"], ["retokenize"], ["report"], ["config"]]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "data", "report", "config"):
        assert command in out


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_help_describes_its_arguments(words, capsys):
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage: qbr " + " ".join(words) in out
    if words[-1] in ("run", "write", "encode", "quantize", "retokenize", "report", "config"):
        assert "--config" in out and "--set" in out and "SECTION.KEY=VALUE" in out


def test_config_prints_resolved_values(capsys):
    assert main(["config", "-c", "launch/configs/ml100k.toml", "--set", "train.lr=0.5"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr"] == 0.5


def test_bad_override_is_a_one_line_error_and_exit_2(capsys):
    assert main(["config", "--set", "train.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qbr: error:") and "train.nope" in err and "\n" not in err


def test_report_without_a_run_says_so(tmp_path, capsys):
    assert main(["report", "--set", f"run.root='{tmp_path}'"]) == 2
    assert "no such run; run `qbr run` first" in capsys.readouterr().err


@pytest.mark.parametrize("text", [None, "no markers\n"], ids=["missing", "without-markers"])
def test_a_readme_that_cannot_take_the_table_is_refused_before_the_run(text, tmp_path, monkeypatch, capsys):
    from qbr_dist import pipeline

    readme = tmp_path / "README.md"
    if text is not None:
        readme.write_text(text)
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: pytest.fail("the run started"))
    assert main(["run", "--readme", str(readme), "--set", f"run.root='{tmp_path}'"]) == 2
    assert capsys.readouterr().err.startswith(f"qbr: error: {readme}: ")


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "qbr_dist.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "qbr" in done.stdout
    assert build_parser().prog == "qbr"


@pytest.mark.parametrize("command", [["quantize"], ["retokenize"], ["encode"], ["shards", "write"]])
def test_stage_commands_refuse_a_run_another_process_holds(command, tmp_path, capsys):
    from qbr_dist import artifacts

    with artifacts.exclusive(tmp_path / "held"):  # as a running `qbr run` of that run would
        assert main([*command, "--set", f"run.root='{tmp_path}'", "--set", "run.name=held",
                     "--set", "obs.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "this run directory is in use" in err and not (tmp_path / "held" / "ingest").exists()


def test_retokenize_refuses_a_run_without_a_fitted_codebook_before_any_stage_runs(tmp_path, capsys):
    assert main(["retokenize", "--set", f"run.root='{tmp_path}'", "--set", "obs.enabled=false"]) == 2
    assert "no fitted codebook; run `qbr quantize` or `qbr run` with this config first" in capsys.readouterr().err
    assert not (tmp_path / "ml100k" / "ingest").exists()


def test_retokenize_refuses_missing_features_before_any_stage_runs(tmp_path, capsys):
    assert main(["retokenize", "--features", str(tmp_path / "nope.parquet"), "--set", f"run.root='{tmp_path}'"]) == 2
    assert "nope.parquet: --features names no file or folder" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("words", [["run", "--seeds", "0"], ["run", "--seeds", "-1"],
                                   ["inspect", "codes", "--levels", "0"], ["inspect", "codes", "--top", "-3"],
                                   ["recommend", "--user", "u", "--k", "-5"], ["data", "synth", "--items", "x",
                                                                             "--users", "3"]])
def test_counting_options_below_one_are_refused_before_anything_runs(words, capsys):
    with pytest.raises(SystemExit) as done:
        main(words)
    assert done.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # one line, not the usage and then the error
    assert line.startswith(f"qbr {words[0]}") and "expected a whole number of at least 1, got" in line
    assert line.endswith("--help)")


def test_ctrl_c_ends_the_command_with_one_line_and_exit_130(monkeypatch, capsys):
    from qbr_dist import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert main(["run"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("qbr: interrupted; the same command resumes") and "\n" not in err
    assert main(["config"]) == 130
    assert capsys.readouterr().err.strip() == "qbr: interrupted"  # nothing to resume


def test_sigterm_once_ray_runs_ends_the_command_with_one_line_and_exit_143(monkeypatch, capsys):
    import os
    import signal
    import time

    from qbr_dist import cli, train
    from qbr_dist.train import runtime

    def terminated(args):
        signal.signal(signal.SIGTERM, runtime._terminated)  # as runtime.start_ray sets it
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        pytest.fail("SIGTERM did not stop the command")

    def interrupted(args):
        raise KeyboardInterrupt  # what reaches the driver when the handler's exception came inside a Ray call

    before = signal.getsignal(signal.SIGTERM)
    try:
        monkeypatch.setattr(cli, "_dispatch", terminated)
        assert main(["run"]) == 143
        err = capsys.readouterr().err.strip()
        assert err.startswith("qbr: stopped by SIGTERM; the same command resumes") and "\n" not in err
        monkeypatch.setattr(cli, "_dispatch", interrupted)
        assert main(["run"]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
        train.SIGTERM_RECEIVED.clear()
    assert main(["run"]) == 130  # with no SIGTERM, an interrupt is Ctrl-C's
    capsys.readouterr()


def test_a_stage_command_logs_to_a_file_under_the_run_root_too(monkeypatch, tmp_path, capsys, caplog):
    import logging

    from qbr_dist import cli

    def stages(args, cfg):
        logging.getLogger("qbr").info("stage ingest: running")
        print("\x1b[36m(RayTrainWorker pid=7)\x1b[0m pretrain epoch 1: loss 9.1", file=sys.stderr)  # as Ray prints
        print("encode:  10%\rencode:  50%\rencode: 100%")  # a progress bar that rewrites its line
        raise KeyboardInterrupt

    def refused(args, cfg):
        raise ValueError("--grid with --seeds")

    monkeypatch.setattr(cli, "_stages", stages)
    handlers, streams = list(logging.getLogger().handlers), (sys.stdout, sys.stderr)
    with caplog.at_level("INFO"):
        assert main(["run", "--set", f"run.root='{tmp_path}'", "--set", "run.name=shop"]) == 130
    (log,) = (tmp_path / "logs").glob("shop-*.log")
    lines = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]  # past the date and time
    assert lines == ["qbr stage ingest: running", "console (RayTrainWorker pid=7) pretrain epoch 1: loss 9.1",
                     "console encode: 100%", "console interrupted (SIGINT, Ctrl-C)"]
    assert f"log: {log}" in caplog.text and (sys.stdout, sys.stderr) == streams
    monkeypatch.setattr(cli, "_stages", refused)
    assert main(["run", "--set", f"run.root='{tmp_path}'", "--set", "run.name=refused"]) == 2
    assert not list((tmp_path / "logs").glob("refused-*"))  # a command refused before any work writes none
    assert logging.getLogger().handlers == handlers  # the file is let go when the command ends
    assert main(["config", "--set", f"run.root='{tmp_path}'", "--set", "run.name=other"]) == 0
    assert not list((tmp_path / "logs").glob("other-*"))  # a command that runs no stage writes none
    capsys.readouterr()


def test_a_stage_command_without_a_config_says_it_runs_the_defaults(monkeypatch, tmp_path, capsys, caplog):
    from qbr_dist import cli

    monkeypatch.setattr(cli, "_stages", lambda args, cfg: 0)
    config = tmp_path / "shop.toml"
    config.write_text(f"[run]\nroot = '{tmp_path}'\nname = 'shop'\n")
    with caplog.at_level("INFO"):
        assert main(["run", "--set", f"run.root='{tmp_path}'"]) == 0
        assert "no --config: running the built-in defaults (run.name 'default'" in caplog.text
        caplog.clear()
        assert main(["run", "--config", str(config)]) == 0
    assert "no --config" not in caplog.text
    capsys.readouterr()


def test_rerun_of_a_stage_that_does_not_exist_is_refused_before_any_stage_runs(monkeypatch, tmp_path, capsys):
    from qbr_dist import pipeline

    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: pytest.fail("a stage ran"))
    assert main(["run", "--set", f"run.root='{tmp_path}'", "--rerun", "bert4rec", "--rerun", "qbert"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qbr: error: --rerun qbert: no such stage (expected one of ingest, ") and err.count("\n") == 1
    assert not list(tmp_path.glob("logs/*"))


def test_a_ctrl_c_lost_where_it_landed_stops_the_command_when_the_next_stage_begins(monkeypatch, tmp_path, capsys):
    import os
    import signal
    import time

    from qbr_dist import cli, pipeline

    def stages(args, cfg):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises in here
        except KeyboardInterrupt:
            pass  # as where Python cannot raise it: "Exception ignored in ..." (an import's clean-up)
        pipeline._stage("ingest", pipeline.run_dir(cfg), {"stage": "ingest"})
        pytest.fail("the next stage began")

    monkeypatch.setattr(cli, "_stages", stages)
    before = signal.getsignal(signal.SIGINT)
    assert main(["run", "--set", f"run.root='{tmp_path}'"]) == 130
    assert capsys.readouterr().err.splitlines()[-1].startswith("qbr: interrupted; the same command resumes")
    assert signal.getsignal(signal.SIGINT) is before and not (tmp_path / "default" / "ingest").exists()


def test_a_bad_grid_point_is_named_by_its_option_before_any_point_runs(monkeypatch, tmp_path, capsys):
    from qbr_dist import pipeline

    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: pytest.fail("a point ran"))
    assert main(["run", "--set", f"run.root='{tmp_path}'", "--grid", "train.lr=1e-3,-1"]) == 2
    assert capsys.readouterr().err.startswith("qbr: error: --grid train.lr=-1: config key 'train.lr'")


def test_report_refuses_a_run_another_process_holds(tmp_path, capsys):
    from qbr_dist import artifacts

    for stage in ("ingest", "popularity", "bert4rec"):
        artifacts.write_manifest(tmp_path / "held" / stage, artifacts.stage_key(stage, {}, {}), outputs=[], rows={})
    with artifacts.exclusive(tmp_path / "held"):  # a `qbr run` of it, which writes the report files last
        assert main(["report", "--set", f"run.root='{tmp_path}'", "--set", "run.name=held"]) == 2
    assert "this run directory is in use" in capsys.readouterr().err


def test_retokenize_refuses_a_table_that_is_not_parquet_before_any_stage_runs(tmp_path, capsys):
    (tmp_path / "new.parquet").write_bytes(b"item_id,text\n")
    root = tmp_path / "runs"
    assert main(["retokenize", "--features", str(tmp_path / "new.parquet"), "--set", f"run.root='{root}'"]) == 2
    assert "new.parquet: not a parquet feature table" in capsys.readouterr().err
    assert not root.exists()
