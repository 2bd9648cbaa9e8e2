import pytest

from qbr_dist.artifacts import settings_hash
from qbr_dist.config import Config, ConfigError, ModelConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_load_without_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.runtime.zero_stage == 2


def test_file_values_and_overrides(tmp_path):
    path = write(tmp_path, "[train]\nlr = 0.01\n[run]\nname = 'x'\n")
    cfg = load_config(path, ["train.lr=3e-4", "run.name=demo", "model.layers=3", "data.text_fields=['a','b']"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.run.name == "demo"
    assert cfg.model.layers == 3
    assert cfg.data.text_fields == ["a", "b"]


def test_int_accepted_for_float():
    cfg = load_config(None, ["train.lr=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nosuch.key=1", "unknown config section 'nosuch'"),
        ("train.batch_size=abc", "config key 'train.batch_size': expected an integer"),
        ("train.batch_size=1.5", "config key 'train.batch_size': expected an integer"),
        ("runtime.zero_stage=4", "config key 'runtime.zero_stage'"),
        ("runtime.use_gpu=1", "config key 'runtime.use_gpu': expected true or false"),
        ("runtime.precision='fp16'", "config key 'runtime.precision'"),
        ("train.mask_ratio=1.5", "config key 'train.mask_ratio'"),
        ("train.negatives=0", "config key 'train.negatives'"),
        ("noequals", "expected section.key=value"),
        ("data.max_history=2", "config key 'data.max_history'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_errors_say_where_the_setting_came_from_and_what_it_was(tmp_path):
    path = write(tmp_path, "[train]\nlr = -1.0\n[run]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=rf"^{path}: config key 'train.lr': expected a number > 0, got -1.0$"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--set train.lr=-2: config key 'train.lr': .*got -2$"):
        load_config(path, ["train.lr=-2"])
    with pytest.raises(ConfigError, match=r"^--set run.name=2024-01-01: .*expected str, .*\(quote it"):
        load_config(None, ["run.name=2024-01-01"])
    with pytest.raises(ConfigError, match=r"quote the strings in it"):
        load_config(None, ["structure.fields=[category,brand]"])
    with pytest.raises(ConfigError, match=r"^override 'run.name=a': 'run' is not a config section"):
        load_config(write(tmp_path, "run = 'x'\n"), ["run.name=a"])


@pytest.mark.parametrize("override, key", [
    ("run.name=..", "run.name"), ("run.name=.", "run.name"), ("run.root=''", "run.root"),
    ("run.seed=-1", "run.seed"), ("data.cold_seed=-3", "data.cold_seed"),
    ("fusion.batch_size=3", "fusion.batch_size"),  # 2 workers need 2 pairs each
    ("train.batch_size=1", "train.batch_size"),
    ("data.dataset=file", "data.dataset"),  # neither 'files' nor a dataset to fetch
    ("data.interactions='/shop/events.parquet'", "data.interactions"),  # would be ignored for ml-100k's files
    ("data.catalog='/shop/items.parquet'", "data.catalog"),
    ("data.item_id_field=user_id", "data.item_id_field"),  # two fields under one name
])
def test_settings_that_cannot_run_are_refused_up_front(override, key):
    with pytest.raises(ConfigError, match=rf"^--set {override}: config key '{key}'"):
        load_config(None, [override])


def test_own_files_need_dataset_files_and_the_error_says_so():
    with pytest.raises(ConfigError, match="expected no file while data.dataset = 'ml-100k', which is fetched; set "
                                          "data.dataset = 'files' to read your own"):
        load_config(None, ["data.interactions='/shop/events.parquet'"])
    assert load_config(None, ["data.dataset=files", "data.interactions='/shop/events.parquet'"]).data.dataset == "files"


def test_a_setting_checked_against_another_names_both_sources(tmp_path):
    path = write(tmp_path, "[fusion]\nbatch_size = 8\n")
    with pytest.raises(ConfigError, match=rf"^{path} and --set runtime.num_workers=8: config key 'fusion.batch_size'"):
        load_config(path, ["runtime.num_workers=8"])
    with pytest.raises(ConfigError, match=r"^--set runtime.num_workers=300: config key 'fusion.batch_size'"):
        load_config(None, ["runtime.num_workers=300"])
    heads = write(tmp_path, "[model]\nheads = 3\n")  # the default width is what the file's heads made invalid
    with pytest.raises(ConfigError, match=rf"^{heads}: config key 'model.hidden'"):
        load_config(heads)
    with pytest.raises(ConfigError, match=r"^--set model.heads=3: config key 'model.hidden'"):
        load_config(None, ["model.heads=3"])


def test_an_unknown_section_is_blamed_on_the_option_or_file_that_named_it(tmp_path):
    path = write(tmp_path, "[train]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"^--set foo.bar=1 and --set foo.baz=2: unknown config section 'foo'"):
        load_config(path, ["foo.bar=1", "foo.baz=2"])
    with pytest.raises(ConfigError, match=r"^--grid foo.bar=1: unknown config section 'foo'"):
        load_config(path, ["train.lr=1e-4"], grid=["foo.bar=1"])
    named = write(tmp_path, "[foo]\n")
    with pytest.raises(ConfigError, match=rf"^{named}: unknown config section 'foo'"):
        load_config(named)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))


def test_section_settings_track_only_named_sections():
    a, b = load_config(None), load_config(None, ["train.lr=0.5"])
    assert a.section_settings("data") == b.section_settings("data")
    assert a.section_settings("train") != b.section_settings("train")


def test_demo_config_is_valid():
    cfg = load_config("launch/configs/ml100k.toml")
    assert cfg.run.name == "ml100k" and cfg.runtime.num_workers == 2 and cfg.runtime.zero_stage == 2


def test_id_dropout_needs_hybrid_tokens_and_is_keyed_only_when_set():
    with pytest.raises(ConfigError, match="model.id_dropout"):
        load_config(None, ["model.tokens=semantic", "model.id_dropout=0.3"])
    assert "id_dropout" not in ModelConfig(tokens="hybrid").key()
    assert ModelConfig(tokens="hybrid", id_dropout=0.3).key()["id_dropout"] == 0.3


def test_codebook_init_needs_code_tables_and_is_keyed_only_when_set():
    with pytest.raises(ConfigError, match="model.codebook_init"):
        load_config(None, ["model.tokens=id", "model.codebook_init=true"])
    assert "codebook_init" not in ModelConfig(tokens="hybrid").key()
    assert ModelConfig(tokens="semantic", codebook_init=True).key()["codebook_init"] is True


def test_cold_codes_only_needs_an_id_part_and_is_keyed_only_when_set():
    for tokens in ("id", "semantic"):
        with pytest.raises(ConfigError, match="model.cold_codes_only"):
            load_config(None, [f"model.tokens={tokens}", "model.cold_codes_only=true"])
    assert "cold_codes_only" not in ModelConfig(tokens="hybrid").key()
    assert ModelConfig(tokens="hybrid", cold_codes_only=True).key()["cold_codes_only"] is True


def test_max_history_is_keyed_only_when_set():
    demo = "launch/configs/ml100k.toml"
    cfg, cut = load_config(demo), load_config(demo, ["data.max_history=20"])
    # the demo's split from before the option
    assert settings_hash(cfg.section_settings(data=cfg.data.key())) == "6f88ce432a961f5c"
    assert cut.section_settings(data=cut.data.key()) != cfg.section_settings(data=cfg.data.key())


def test_a_run_root_uri_is_refused_with_what_to_do_instead():
    with pytest.raises(ConfigError, match=r"run.root.*mount the bucket"):
        load_config(None, ["run.root=s3://bucket/runs"])


@pytest.mark.parametrize("section, resource, setting", [
    ("encode", "encode.actors=4", "encode.batch_size=8"),
    ("shards", "shards.name=elsewhere", "shards.max_bytes=4096"),
    ("quant", "quant.retokenize_actors=4", "quant.codebook_size=64"),
    ("eval", "eval.chunk_size=1024", "eval.exclude_history=true"),
    ("eval", "eval.batch_size=7", "eval.exclude_history=true"),
])
def test_stage_keys_leave_out_where_and_how_fast_a_stage_runs(section, resource, setting):
    key = getattr(load_config(None), section).key()
    assert getattr(load_config(None, [resource]), section).key() == key  # no rerun for more actors
    assert getattr(load_config(None, [setting]), section).key() != key
