"""The config reference (docs/config.md) is generated from the comments in config.py."""
import dataclasses
import json
import re
from pathlib import Path

from qbr_dist import config
from qbr_dist.cli import main
from qbr_dist.config_reference import reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
ROW = re.compile(r"^\| `(?P<key>\w+)` \| `(?P<default>.*)` \| (?P<meaning>.*) \|$")


def _rows() -> dict[str, dict]:
    rows, section = {}, None
    for line in reference_markdown().splitlines():
        if line.startswith("## ["):
            section = line[4:-1]
        elif match := ROW.match(line):
            rows[f"{section}.{match['key']}"] = match.groupdict()
    return rows


def test_docs_config_md_is_the_generated_reference():
    assert DOC.read_text() == reference_markdown(), "docs/config.md is stale: qbr config --reference > docs/config.md"


def test_every_key_is_listed_once_with_its_default_and_a_meaning():
    rows = _rows()
    keys = {f"{section.name}.{f.name}": getattr(section.default_factory(), f.name)
            for section in dataclasses.fields(config.Config) for f in dataclasses.fields(section.default_factory)}
    assert set(rows) == set(keys)
    for key, default in keys.items():
        assert json.loads(rows[key]["default"]) == default, key
        assert rows[key]["meaning"].strip(), f"{key} has no comment in qbr_dist/config.py"


def test_comment_blocks_above_a_field_are_kept():
    rows = _rows()
    assert rows["data.cold_fraction"]["meaning"].startswith("Cold-item split (an evaluation protocol)")
    assert "random, span, tail, multi_region" in rows["train.mask_weights"]["meaning"]


def test_cli_prints_the_reference(capsys):
    assert main(["config", "--reference"]) == 0
    assert capsys.readouterr().out == reference_markdown()
