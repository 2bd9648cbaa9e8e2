"""`qbr inspect` on a run directory: finds the run's codes and catalog, writes <run>/inspect/."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from qbr_dist import artifacts
from qbr_dist.config import Config
from qbr_dist.inspect.codes import codes_markdown, items_under, parse_prefix, prefix_title, summarize_codes
from qbr_dist.inspect.tables import markdown_table
from qbr_dist.pipeline import ITEMS, codes_stage, finished_model, run_dir
from qbr_dist.quant import CODES
from qbr_dist.quant.codes import code_levels

log = logging.getLogger("qbr.inspect")

CATALOG = Path("ingest") / ITEMS


def run_codes(run: Path) -> Path:
    """The run's codes file (`pipeline.codes_stage` says which stage's)."""
    return run / codes_stage(run) / CODES


def inspect_codes(cfg: Config, *, levels: int, top: int, prefix: str | None, limit: int) -> str:
    """Markdown of the code summary (or of the items under `prefix`); the JSON goes to <run>/inspect/."""
    run = run_dir(cfg)
    codes, catalog = run_codes(run), run / CATALOG
    out = run / "inspect"
    if prefix:
        found = items_under(codes, catalog, parse_prefix(prefix), limit=limit)
        artifacts.write_json(out / f"prefix-{found['prefix']}.json", found)
        log.info("inspect codes: %s", out / f"prefix-{found['prefix']}.json")
        rows = [[item["item_id"], "-".join(map(str, item["codes"])), item["text"] or ""] for item in found["shown"]]
        return "\n".join([prefix_title(found), "", *markdown_table(["item", "codes", "text"], rows)])
    if levels > (depth := code_levels(codes)):
        raise ValueError(f"--levels {levels}: the codes of {codes} have {depth} levels (and the suffix)")
    summary = summarize_codes(codes, catalog, levels=levels, fields=cfg.structure.fields,
                              separator=cfg.structure.separator, top=top, work=run)
    table = codes_markdown(summary)
    artifacts.write_json(out / "codes.json", summary)
    with artifacts.atomic_path(out / "codes.md") as tmp:
        tmp.write_text(table)
    log.info("inspect codes: %s and %s", out / "codes.json", out / "codes.md")
    return table


def recommend_for(cfg: Config, *, stage: str, user: str | None, history: str | None, k: int,
                  new_items: list[Path] = ()) -> str:
    """Markdown of `recommend` on the run, from a stage this config trained; the JSON goes to
    <run>/inspect/ (`recommend_file`)."""
    from qbr_dist.inspect.recommend import recommend, recommend_markdown, require_trained

    run = run_dir(cfg)
    require_trained(run, stage)
    finished_model(cfg, stage)
    found = recommend(run, stage=stage, user=user, history=history.split(",") if history else None, k=k,
                      new_items=new_items)
    path = run / "inspect" / recommend_file(found)
    artifacts.write_json(path, found)
    log.info("recommend: %s", path)
    return recommend_markdown(found)


def recommend_file(found: dict) -> str:
    """A file per model, user or given history, k and --new-items files (by content), so that no answer overwrites
    another's; a user id that is not a plain file name, a history and new items go by a digest after a
    `~`, which no plain name holds."""
    user = found["user"]
    if user is not None and re.fullmatch(r"[\w.-]{1,64}", user) and user.strip("."):
        who = f"user-{user}"
    else:
        named = ("user", user) if user is not None else ("history", json.dumps(found["history"]))
        who = f"{named[0]}~{_digest(named[1])}"
    added = found["new_items_files"]
    new = f"-new~{_digest(' '.join(artifacts.file_fingerprint(path) for path in added))}" if added else ""
    return f"recommend-{found['stage']}-{who}-top{found['k']}{new}.json"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
