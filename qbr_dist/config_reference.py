"""Every config key with its default and meaning, as Markdown (`qbr config --reference`, docs/config.md).

The meanings are the comments next to each field in config.py, read from its source, so the
reference cannot drift from the code: a key is documented where it is declared.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize

from qbr_dist import config

TITLE = "# Config reference"
INTRO = ("Every key of a run's TOML config (`[section]` then `key = value`; `--set section.key=value` on the "
         "command line), its default and its meaning. Generated from `qbr_dist/config.py` by "
         "`qbr config --reference`; a unit test keeps this file equal to that output.")


def reference_markdown() -> str:
    source = inspect.getsource(config)
    comments = _comments(source)
    lines = source.splitlines()
    classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    out = [TITLE, "", INTRO]
    for section in dataclasses.fields(config.Config):
        section_class = section.default_factory
        out += ["", f"## [{section.name}]", "", "| key | default | meaning |", "|---|---|---|"]
        defaults = section_class()
        for node in classes[section_class.__name__].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                key = node.target.id
                meaning = " ".join(_comments_above(node.lineno, lines, comments) +
                                   [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments])
                out.append(f"| `{key}` | `{json.dumps(getattr(defaults, key))}` | {_cell(meaning)} |")
    return "\n".join(out) + "\n"


def _comments(source: str) -> dict[int, str]:
    """Comment text by line number (tokenize, so a '#' inside a string is not taken for one)."""
    return {token.start[0]: token.string.lstrip("#").strip()
            for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}


def _comments_above(lineno: int, lines: list[str], comments: dict[int, str]) -> list[str]:
    """The block of whole-line comments right above a field (line numbers start at 1)."""
    block, line = [], lineno - 1
    while line in comments and lines[line - 1].lstrip().startswith("#"):
        block.insert(0, comments[line])
        line -= 1
    return block


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
