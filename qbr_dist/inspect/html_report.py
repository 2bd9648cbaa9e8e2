"""report.html: the run report as one self-contained page that needs no network.

It holds report.md (the metrics tables, the tokenizer statistics; our own text) rendered by the
`markdown` package with its plots inlined as data URIs, then the code browser of `qbr inspect
codes` with a filter box and explained recommendations for a few users from the Q-BERT4Rec
weights, as escaped HTML tables (they quote catalog text). The only script is the filter.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pyarrow.parquet as pq

from qbr_dist import artifacts
from qbr_dist.config import Config
from qbr_dist.inspect.codes import code_table, level_title, summarize_codes
from qbr_dist.inspect.run import CATALOG, run_codes
from qbr_dist.inspect.tables import html_table

REPORT = "report.html"
RECOMMENDED_USERS = 3

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.8rem 0; }
input#code-filter { font-size: 15px; padding: 0.3rem 0.5rem; width: 24rem; }
"""
FILTER = """
const box = document.getElementById("code-filter");
box.addEventListener("input", () => {
  const wanted = box.value.toLowerCase();
  for (const row of document.querySelectorAll("#codes tbody tr")) {
    row.hidden = !row.textContent.toLowerCase().includes(wanted);
  }
});
"""


def to_html(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["tables"])


def inline_images(page: str, folder: Path) -> str:
    """`<img src="x.png">` of files in `folder` become data URIs (the page then stands alone)."""
    def inline(match: re.Match) -> str:
        path = folder / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    return re.sub(r'src="([^":]+\.png)"', inline, page)


def code_browser(summary: dict) -> str:
    level = summary["levels"][0]
    return ('<section id="codes"><h2>Semantic codes</h2><p>Every first-level code: its items, characteristic '
            'words (TF-IDF against the catalog), most frequent field values and an example. '
            '<label>Filter: <input id="code-filter" type="search" placeholder="a word, a code, a value"></label>'
            f"</p><h3>{html.escape(level_title(level))}</h3>{html_table(*code_table(summary, level))}</section>")


def recommendations(found: list[dict]) -> str:
    from qbr_dist.inspect.recommend import recommend_table, recommend_title

    parts = [f"<h3>{html.escape(recommend_title(f))}</h3>{html_table(*recommend_table(f))}" for f in found]
    return '<section id="recommendations"><h2>Explained recommendations</h2>' + "".join(parts) + "</section>"


def recommend_some_users(run: Path) -> list[dict]:
    """Top 5 for the first few users of the run, from one load of the Q-BERT4Rec weights."""
    from qbr_dist.inspect.recommend import Recommender

    users = pq.read_table(run / "ingest" / "sequences.parquet", columns=["user_id"]).column("user_id")
    recommender = Recommender(run)
    return [recommender.top(user=user.as_py(), k=5) for user in users[:RECOMMENDED_USERS]]


def write_html(cfg: Config, run: Path, *, codes: bool, recommend: bool) -> Path:
    """<run>/report.html from the run's report.md and plots, its codes (`codes`: the run has a quantize stage)
    and Q-BERT4Rec's recommendations (`recommend`: it has a qbert4rec stage, whose weights were exported)."""
    from qbr_dist.inspect.recommend import cited_prefixes, describe_codes
    from qbr_dist.train.export import WEIGHTS

    sections = [f"<section id=\"results\"><h2>Results</h2>{to_html((run / 'report.md').read_text())}</section>"]
    found = recommend_some_users(run) if recommend and (run / "qbert4rec" / WEIGHTS).is_file() else []
    script = ""
    if codes:
        summary = summarize_codes(run_codes(run), run / CATALOG, levels=1, fields=cfg.structure.fields,
                                  separator=cfg.structure.separator, also=cited_prefixes(found), work=run)
        describe_codes(found, summary)
        sections.append(code_browser(summary))
        script = f"<script>{FILTER}</script>"
    if found:
        sections.append(recommendations(found))
    title = html.escape(f"qbr-dist run {cfg.run.name}")
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>{''.join(sections)}"
            f"{script}</body></html>")
    with artifacts.atomic_path(run / REPORT) as tmp:
        tmp.write_text(inline_images(page, run))
    return run / REPORT
