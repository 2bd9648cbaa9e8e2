"""Run report: report.json, report.md and plots in the run directory, and the README's results table."""
from __future__ import annotations

import json
import re
from pathlib import Path

from qbr_dist import artifacts
from qbr_dist.config import Config
from qbr_dist.seqrec.metrics import METRIC_NAMES

README_START, README_END = "<!-- qbr:results:start -->", "<!-- qbr:results:end -->"


def write_report(cfg: Config, root: Path, model_dirs: dict[str, Path], ingest_dir: Path) -> dict:
    models = {name: json.loads((folder / "metrics.json").read_text()) for name, folder in model_dirs.items()}
    report = {
        "dataset": cfg.data.dataset,
        "split": "leave-one-out",
        "data": artifacts.read_manifest(ingest_dir)["rows"],
        "models": {
            name: {key: m.get(key) for key in ("valid", "test", "train_wall_s", "epochs", "steps", "best") if key in m}
            for name, m in models.items()
        },
        "config": cfg.to_dict(),
    }
    artifacts.write_json(root / "report.json", report)
    with artifacts.atomic_path(root / "report.md") as tmp:
        tmp.write_text(markdown(report))
    curves = {name: m["curve"] for name, m in models.items() if m.get("curve")}
    if curves:
        plot_curves(curves, root / "training_curves.png")
    return report


def markdown(report: dict) -> str:
    data = report["data"]
    lines = [
        f"Dataset `{report['dataset']}`, {report['split']} split, full ranking over all "
        f"{data['items']:,} items for {data['users']:,} users (ties count against the target). "
        "Test metrics of the model selected on validation NDCG@10.",
        "",
        "| model | " + " | ".join(METRIC_NAMES) + " | valid NDCG@10 | epochs | train s |",
        "|---" * (len(METRIC_NAMES) + 4) + "|",
    ]
    for name, m in report["models"].items():
        cells = [f"{m['test'][k]:.4f}" for k in METRIC_NAMES]
        cells += [f"{m['valid']['NDCG@10']:.4f}", str(m.get("epochs", 0)), f"{m.get('train_wall_s', 0):.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        ax.plot([p["step"] for p in curve], [p["valid_NDCG@10"] for p in curve], marker=".", label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation NDCG@10")
    ax.legend()
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the README's result markers with `table`."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme}: no {README_START} ... {README_END} markers to put the results between")
    block = f"{README_START}\n{table}{README_END}"
    with artifacts.atomic_path(readme) as tmp:
        tmp.write_text(pattern.sub(lambda _: block, text))
