"""Loading never runs code from a file: no pickles of ours, no eval, configs of plain values only,
DeepSpeed checkpoints (pickles) only from the run's own folder, decompression bombs refused.

(Exported weights are safetensors consolidated by DeepSpeed: test_faults.py compares runs
through them. Amazon 2014's Python-literal lines are
parsed by `ast.literal_eval`, and a line that would call a function is quarantined:
tests/unit/test_amazon.py. Metrics endpoints bind to the configured address:
tests/unit/test_obs_serve.py.)
"""
from __future__ import annotations

import ast
import dataclasses
import struct
import typing
import zlib
from pathlib import Path

import pytest

from qbr_dist import config as config_module
from qbr_dist.config import Config, ConfigError, load_config
from qbr_dist.data.shards import open_image
from qbr_dist.train.runtime import ForeignCheckpoint, check_own_checkpoint

PACKAGE = Path(config_module.__file__).resolve().parent
PLAIN_TYPES = (str, int, float, bool)


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(node: ast.Call, name: str):
    return next((ast.literal_eval(k.value) for k in node.keywords if k.arg == name), None)


def test_no_loader_in_the_package_can_run_code_from_a_file():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        for node, name in calls(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}"
            if name in ("eval", "exec", "pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads"):
                problems.append(where)
            if name == "torch.load" and keyword(node, "weights_only") is not True:
                problems.append(f"{where} without weights_only=True")
            if name in ("np.load", "numpy.load") and keyword(node, "allow_pickle"):
                problems.append(f"{where} with allow_pickle")
    assert not problems, problems


def test_config_fields_hold_plain_values_only():
    """No config key can name a class, a function or a module to import: every field is a string,
    number, boolean or a list of those."""
    for section in dataclasses.fields(Config):
        for name, hint in typing.get_type_hints(typing.get_type_hints(Config)[section.name]).items():
            inner = typing.get_args(hint) if typing.get_origin(hint) is list else (hint,)
            assert all(t in PLAIN_TYPES for t in inner), f"{section.name}.{name}: {hint}"


def test_a_config_value_naming_python_code_stays_a_string(tmp_path):
    cfg = load_config(None, ["run.name=__import__('os').system('false')"])
    assert cfg.run.name == "__import__('os').system('false')"
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr={a = 1}"])


def test_checkpoints_load_only_from_the_runs_own_folder(tmp_path):
    root = tmp_path / "run" / "qbert4rec" / "ray" / "qbert4rec-0123"
    (root / "checkpoint_1").mkdir(parents=True)
    check_own_checkpoint(root / "checkpoint_1", root)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ForeignCheckpoint, match="elsewhere"):
        check_own_checkpoint(tmp_path / "elsewhere", root)
    (root / "sneaky").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ForeignCheckpoint):
        check_own_checkpoint(root / "sneaky", root)
    with pytest.raises(ForeignCheckpoint):
        check_own_checkpoint(root / ".." / "qbert4rec-other", root)


def bomb_png(side: int) -> bytes:
    """A valid PNG of side x side black 1-bit pixels: a few KB on disk, side**2 pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * (side // 8)
    pixels = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_images_past_the_pixel_bound_are_refused_before_decoding():
    data = bomb_png(8_000)  # 64 megapixels: under PIL's own bomb limit, over ours
    assert len(data) < 300_000
    with pytest.raises(ValueError, match="exceeds the 50000000-pixel bound"):
        with open_image(data, max_pixels=50_000_000) as image:
            image.load()
    with open_image(bomb_png(64), max_pixels=50_000_000) as image:
        image.load()
        assert image.size == (64, 64)
