"""Run report: report.json, report.md and plots in the run directory, and the README's results table."""
from __future__ import annotations

import contextlib
import json
import platform
import re
from pathlib import Path

from qbr_dist import artifacts
from qbr_dist.config import Config
from qbr_dist.fusion import STATS as FUSION_STATS
from qbr_dist.quant import STATS as QUANT_STATS
from qbr_dist.data.split import MIN_SPLIT_LENGTH
from qbr_dist.seqrec.metrics import METRIC_NAMES

README_START, README_END = "<!-- qbr:results:start -->", "<!-- qbr:results:end -->"


def write_report(cfg: Config, root: Path, model_dirs: dict[str, Path], ingest_dir: Path,
                 tokenizer_dirs: dict[str, Path], *, quarantines: dict[str, Path]) -> dict:
    """`quarantines`: {stage: quarantine file} of the stages that left input records out."""
    models = {name: json.loads((folder / "metrics.json").read_text()) for name, folder in model_dirs.items()}
    report = {
        "dataset": cfg.data.dataset if cfg.data.dataset != "files" else Path(cfg.data.interactions).name,
        "split": "leave-one-out",
        "data": artifacts.read_manifest(ingest_dir)["rows"],
        "quarantined": {stage: {"records": _lines(path), "file": str(path)} for stage, path in quarantines.items()},
        "models": {
            name: {key: m.get(key) for key in ("valid", "test", "test_cold", "train_wall_s", "epochs", "steps", "best",
                                               "mask_mixture", "resumed_at") if key in m}
            | {"stage_key": artifacts.key_digest(artifacts.read_manifest(model_dirs[name])["key"])}
            for name, m in models.items()
        },
        "tokenizer": tokenizer_summary(tokenizer_dirs),
        "config": cfg.to_dict(),
    }
    report["plots"] = write_plots(report, {name: m.get("curve") or [] for name, m in models.items()}, root)
    artifacts.write_json(root / "report.json", report)
    with artifacts.atomic_path(root / "report.md") as tmp:
        tmp.write_text(markdown(report) + plots_markdown(report["plots"]))
    return report


def _lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def plots_markdown(plots: dict[str, str]) -> str:
    """Links to the plots, next to report.md (not part of the README table)."""
    return "".join(f"\n![{caption}]({name})\n" for caption, name in plots.items())


def write_plots(report: dict, curves: dict[str, list[dict]], root: Path) -> dict[str, str]:
    """The report's PNG plots in `root`: {caption: file name}."""
    plots = {}
    curves = {name: curve for name, curve in curves.items() if curve}
    if curves:
        plot_curves(curves, "valid_NDCG@10", "validation NDCG@10", root / "training_curves.png")
        plots["validation NDCG@10 over optimizer steps"] = "training_curves.png"
        losses = {name: [p for p in curve if p.get("train_loss") is not None] for name, curve in curves.items()}
        if any(losses.values()):
            plot_curves(losses, "train_loss", "training loss", root / "training_loss.png")
            plots["training loss (mean per masked item, per epoch) over optimizer steps"] = "training_loss.png"
    plot_model_metrics(report["models"], root / "model_metrics.png")
    plots["test metrics side by side per model"] = "model_metrics.png"
    if "quantize" in report["tokenizer"]:
        plot_code_usage(report["tokenizer"]["quantize"]["levels"], root / "codebook_usage.png")
        plots["items per code, per codebook level"] = "codebook_usage.png"
    return plots


def seed_summary(reports: dict[int, dict]) -> dict:
    """Mean and sample standard deviation over seeds of every model's metrics, per evaluation."""
    import numpy as np

    first = next(iter(reports.values()))
    models = {}
    for name in first["models"]:
        runs = [report["models"][name] for report in reports.values()]
        models[name] = {
            evaluation: {metric: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if
                                  len(values) > 1 else 0.0}
                         for metric in METRIC_NAMES for values in [[run[evaluation][metric] for run in runs]]}
            for evaluation in ("valid", "test", "test_cold") if all(evaluation in run for run in runs)
        }
    return {"dataset": first["dataset"], "split": first["split"], "data": first["data"], "seeds": list(reports),
            "models": models}


def write_summary(root: Path, name: str, summary: dict, text: str) -> None:
    """<root>/<name>.json and <name>.md of a summary over several runs (seeds, grid points)."""
    root.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(root / f"{name}.json", summary)
    with artifacts.atomic_path(root / f"{name}.md") as tmp:
        tmp.write_text(text)


def seeds_markdown(summary: dict) -> str:
    """Test metrics as mean ± standard deviation over the seeds (warm targets, then cold ones)."""
    seeds = summary["seeds"]
    lines = [f"Mean ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}); each seed "
             "selects its model on validation NDCG@10 and reports test metrics.", ""]
    for evaluation, title in (("test", "model"), ("test_cold", "model (cold targets)")):
        if any(evaluation in m for m in summary["models"].values()):
            lines += metrics_table(title, summary["models"], evaluation,
                                   lambda v: f"{v['mean']:.4f} ± {v['std']:.4f}") + [""]
    return "\n".join(lines)


def grid_summary(grid: list[str], runs: list[tuple[list[str], dict]]) -> dict:
    """Per model: every grid point's validation NDCG@10, and the test metrics of the best point. A model whose
    stage is the same at every point (the grid changes none of its settings) is marked `unchanged`: it chose
    no point."""
    models = {}
    for name in dict.fromkeys(name for _, report in runs for name in report["models"]):
        scored = [(point, report["models"][name]) for point, report in runs if name in report["models"]]
        points = [{"point": point, "valid_NDCG@10": m["valid"]["NDCG@10"]} for point, m in scored]
        unchanged = len(scored) == len(runs) > 1 and len({m.get("stage_key") for _, m in scored}) == 1 \
            and "stage_key" in scored[0][1]
        best_point, chosen = scored[0] if unchanged else max(scored, key=lambda pair: pair[1]["valid"]["NDCG@10"])
        models[name] = {"points": points[:1] if unchanged else points, "best": None if unchanged else best_point,
                        "unchanged": unchanged,
                        **{e: chosen[e] for e in ("valid", "test", "test_cold") if e in chosen}}
    return {"dataset": runs[0][1]["dataset"], "data": runs[0][1]["data"], "grid": grid, "models": models}


def grid_markdown(summary: dict) -> str:
    """The grid searched, each point's validation score, and each model's chosen point on test."""
    lines = [f"Grid search over {' '.join(summary['grid'])}: each model picks the point with its best validation "
             "NDCG@10; test metrics of that point.", "", "| model | point | valid NDCG@10 |", "|---|---|---|"]
    for name, m in summary["models"].items():
        lines += [f"| {name} | {_point_label(p['point'], m)} | {p['valid_NDCG@10']:.4f} |" for p in m["points"]]
    lines += [""] + metrics_table("model (chosen point)", summary["models"], "test", "{:.4f}".format)
    if any("test_cold" in m for m in summary["models"].values()):
        lines += [""] + metrics_table("model (chosen point, cold targets)", summary["models"], "test_cold",
                                      "{:.4f}".format)
    return "\n".join(lines) + "\n"


def _point_label(point: list[str], model: dict) -> str:
    if model["unchanged"]:
        return "every point (the grid changes none of its settings)"
    return (" ".join(point) or "(base)") + (" (chosen)" if point == model["best"] else "")


def tokenizer_summary(dirs: dict[str, Path]) -> dict:
    """What the report shows of the fusion and quantize stages (their stats files, curves left out)."""
    summary = {}
    if "fusion" in dirs:
        fusion = json.loads((dirs["fusion"] / FUSION_STATS).read_text())
        summary["fusion"] = {k: fusion[k] for k in ("modality_weights", "modality_presence", "mean_gate",
                                                    "mean_depth", "items", "cold_items", "steps")}
    if "quantize" in dirs:
        summary["quantize"] = json.loads((dirs["quantize"] / QUANT_STATS).read_text())
    if "retokenize" in dirs:
        rows = artifacts.read_manifest(dirs["retokenize"])["rows"]
        summary["retokenize"] = {key: rows[key] for key in ("items", "content_queries", "collision_rate",
                                                           "suffix_table_size")}
        summary["retokenize"]["contentless"] = rows.get("contentless", 0)  # 0 in stages written before it was counted
    return summary


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
    lines += resumed_markdown(report) + quarantine_markdown(report) + short_users_markdown(report["data"])
    lines += cold_markdown(report)
    mixtures = [f"{name} " + ", ".join(f"{k} {v:.0%}" for k, v in m["mask_mixture"].items())
                for name, m in report["models"].items() if m.get("mask_mixture")]
    if mixtures:
        lines += ["", "Pretraining masks (share of sequences per strategy): " + "; ".join(mixtures) + "."]
    return "\n".join(lines + tokenizer_markdown(report.get("tokenizer", {}))) + "\n"


def resumed_markdown(report: dict) -> list[str]:
    """A training stage resumed from checkpoints: its train s counts the last `qbr run` that trained it."""
    resumed = [f"{name} at steps {', '.join(map(str, m['resumed_at']))}" for name, m in report["models"].items()
               if m.get("resumed_at")]
    return ["", "Resumed from checkpoints after a stop or a failed worker (train s counts only the last command that "
            "trained it): " + "; ".join(resumed) + "."] if resumed else []


def quarantine_markdown(report: dict) -> list[str]:
    """Which stages left input records out (report.json has their files; paths would tie the README's copy to one
    machine); a report without the key predates it."""
    if "quarantined" not in report:
        return []
    left_out = [f"{stage} {entry['records']:,}" for stage, entry in report["quarantined"].items()]
    return ["", "Input records skipped and listed in their stage's quarantine.jsonl (report.json names the files): "
            + "; ".join(left_out) + "." if left_out else "No input record was quarantined."]


def short_users_markdown(data: dict) -> list[str]:
    """Users left out for too short a history: valid rows, so not in a quarantine, but not in any metric either."""
    short, rows = data.get("users_too_short", 0), data.get("short_user_rows")
    counted = f" ({rows:,} interactions)" if rows is not None else ""
    return ["", f"{short:,} users with fewer than {MIN_SPLIT_LENGTH} interactions{counted} are left out (a "
            f"leave-one-out split needs {MIN_SPLIT_LENGTH})."] if short else []


def cold_markdown(report: dict) -> list[str]:
    """The cold-item split's own table; ID-only models are named, not scored (their cold rows were never trained)."""
    data = report["data"]
    if not data.get("cold_test_users"):
        return []
    lines = [
        "", f"Cold-item split: {data['cold_items']:,} items never appear in training or validation inputs. "
        f"The table above covers the users whose test target is warm; {data['cold_test_users']:,} users whose "
        "test target is cold are ranked against all items here, with the same metric code.", "",
    ]
    return lines + metrics_table("model (cold targets)", report["models"], "test_cold", "{:.4f}".format)


def metrics_table(title: str, models: dict, evaluation: str, cell) -> list[str]:
    """One row of `evaluation` metrics per model (`cell` formats a metric's value); a model without them is an
    ID-only one in a cold-target table, named rather than scored (its cold rows were never trained)."""
    lines = ["| " + title + " | " + " | ".join(METRIC_NAMES) + " |", "|---" * (len(METRIC_NAMES) + 1) + "|"]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(cell(m[evaluation][k]) for k in METRIC_NAMES) + " |"
                     if evaluation in m else f"| {name} | ID-only: cannot score cold items (their ID vectors were "
                     "never trained) |" + " |" * (len(METRIC_NAMES) - 1))
    return lines


def tokenizer_markdown(tokenizer: dict) -> list[str]:
    lines = []
    if "quantize" in tokenizer:
        q = tokenizer["quantize"]
        size = len(q["levels"][0]["counts"])
        method = {"rqvae": f"RQ-VAE ({q.get('steps', 0)} steps, {q.get('reseeded', 0)} dead codes re-seeded)"}.get(
            q.get("mode"), "residual k-means")
        lines += [
            "", f"Semantic IDs: codebook `{q['codebook_version']}` by {method}, {len(q['levels'])} levels x {size} "
            f"codes over {q['items']:,} items; collision rate before the suffix {q['collision_rate']:.4f}, suffix "
            f"table {q['suffix_table_size']}, relative reconstruction error {q['reconstruction_error']:.4f}.",
            "", "| level | codes used | perplexity | dead codes |", "|---|---|---|---|",
        ]
        lines += [f"| {lv['level']} | {lv['usage']:.1%} | {lv['perplexity']:.1f} | {lv['dead_codes']} |"
                  for lv in q["levels"]]
    if "retokenize" in tokenizer:  # the codebooks were fit on warm items; these are the codes the models used
        r = tokenizer["retokenize"]
        lines += ["", f"Every item's codes, the cold items' coded afterwards from their content: {r['items']:,} items "
                      f"({r['content_queries']:,} with a content-predicted query); collision rate before the suffix "
                      f"{r['collision_rate']:.4f}, suffix table {r['suffix_table_size']}."]
        if r.get("contentless"):
            lines[-1] += (f" {r['contentless']:,} of them had no content at all (no text, image or structure): they "
                          "share the codes of that emptiness, so the model cannot tell them apart by their codes.")
    if "fusion" in tokenizer:
        f = tokenizer["fusion"]
        names = list(f["modality_weights"][0])
        lines += [
            "", f"Fusion: mean modality weight over the items that have the modality, per layer; mean depth "
            f"{f['mean_depth']:.2f} of {len(f['mean_gate'])} layers; {f['cold_items']:,} items without a trained "
            "ID vector.", "",
            "| layer | " + " | ".join(names) + " | mean gate |", "|---" * (len(names) + 2) + "|",
        ]
        shown = {n: f["modality_presence"].get(n, 0) > 0 for n in names}  # "n/a": no item has the modality
        lines += [f"| {i + 1} | " + " | ".join(f"{w[n]:.3f}" if shown[n] else "n/a" for n in names) + f" | {g:.3f} |"
                  for i, (w, g) in enumerate(zip(f["modality_weights"], f["mean_gate"]))]
    return lines


def plot_curves(curves: dict[str, list[dict]], key: str, label: str, path: Path) -> None:
    with _figure(path, xlabel="optimizer step", ylabel=label) as ax:
        for name, curve in curves.items():
            ax.plot([p["step"] for p in curve], [p[key] for p in curve], marker=".", label=name)


PLOTTED_METRICS = ("HR@10", "NDCG@10", "MRR")


def plot_model_metrics(models: dict[str, dict], path: Path) -> None:
    """Grouped bars: each model's test metrics, warm targets (and cold targets where scored)."""
    bars = [(f"{name}{' cold' if evaluation == 'test_cold' else ''}", m[evaluation])
            for evaluation in ("test", "test_cold") for name, m in models.items() if m.get(evaluation)]
    width = 0.8 / max(len(bars), 1)
    with _figure(path, xlabel="metric (test)", ylabel="value") as ax:
        for i, (label, values) in enumerate(bars):
            ax.bar([x + i * width for x in range(len(PLOTTED_METRICS))], [values[k] for k in PLOTTED_METRICS],
                   width=width, label=label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(PLOTTED_METRICS))], PLOTTED_METRICS)


def plot_code_usage(levels: list[dict], path: Path) -> None:
    """Items per code, codes sorted by use, one line per level (log scale)."""
    with _figure(path, xlabel="code (by number of items)", ylabel="items") as ax:
        for level in levels:
            counts = sorted(level["counts"], reverse=True)
            ax.plot(range(1, len(counts) + 1), [max(c, 0.5) for c in counts], marker=".",
                    label=f"level {level['level']} ({level['usage']:.0%} used)")
        ax.set_yscale("log")


@contextlib.contextmanager
def _figure(path: Path, *, xlabel: str, ylabel: str):
    """An axes to draw on; labelled, given a legend and saved atomically as PNG afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        with artifacts.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)


def provenance() -> str:
    """When and on what the results were made: date, CPUs (with the vector instructions torch's kernels use, since
    floating-point sums, and with them trained models, differ between AVX2 and AVX-512 hosts), memory, accelerator."""
    import datetime
    import os

    import torch

    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"Run on {datetime.date.today().isoformat()}: {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs ({cpu_model()}, torch kernels {torch.backends.cpu.get_cpu_capability()}), "
            f"{memory_gb:.0f} GiB memory, {accelerator}.")


def cpu_model() -> str:
    """The CPU's model name as Linux reports it, or the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.partition(":")[2].strip() for line in handle if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "unknown CPU"


README_RESULTS = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)


def check_readme(readme: Path) -> str:
    """The README's text, refused in one line when it is missing or has no result markers (checked before a run)."""
    if not readme.is_file():
        raise FileNotFoundError(f"{readme}: --readme names no file")
    text = readme.read_text()
    if not README_RESULTS.search(text):
        raise ValueError(f"{readme}: no {README_START} ... {README_END} markers to put the results between")
    return text


def update_readme(readme: Path, table: str) -> None:
    """Replace the text between the README's result markers with `table` and the machine it ran on."""
    table = f"{table}\n{provenance()}\n"
    text = check_readme(readme)
    block = f"{README_START}\n{table}{README_END}"
    with artifacts.atomic_path(readme) as tmp:
        tmp.write_text(README_RESULTS.sub(lambda _: block, text))
