"""Recommendation quality against peers: RecBole 1.2.1's SASRec and BERT4Rec next to qbr-dist's models on
MovieLens-100K, with the project's leave-one-out split and the project's metric code on both sides.

    python bench/quality.py [--quick] [--project-summary PATH] [--ingest DIR]

1. The project's side: `qbr run --config launch/configs/ml100k.toml --seeds 3` (finished stages are
   reused, so a second call is cheap), then its `runs/ml100k/seeds.json` (mean and spread per model)
   and each seed's `report.json` (per-seed figures, the config it ran with). `--project-summary`
   reads an existing seeds.json or report.json instead of running anything (one without run folders,
   such as bench/results/ml100k-seeds.json, gets the config's ingest stage run for RecBole).
2. The peers' side, in its own virtual environment `.venv-recbole` (RecBole pins an old Ray and
   needs numpy aliases numpy 2 removed, so it cannot share `.venv`): this script launches
   `bench/recbole/train.py` with `.venv-recbole/bin/python` on the project's ingest folder (the
   sequences after the project's cold-item split). That process imports the project's split,
   example and metric modules from the source tree (pure numpy/pyarrow/torch; nothing that pulls
   in Ray), exports the sequences as RecBole atomic files with positions as timestamps, so RecBole's
   time-ordered leave-one-out holds out the project's own validation and test items, trains with
   RecBole's pipeline and Trainer (early stopping on the project's validation NDCG@10), and scores
   the best checkpoint on the project's validation and warm-test examples with
   `qbr_dist.seqrec.metrics.target_ranks` and `metric_sums`/`metric_means`. The two processes
   talk through files only: the ingest folder in, one JSON of figures out.
3. Both sides go into bench/results/quality.json (quality-quick.json) with every setting each side
   used, and a bar plot of the test metrics, quality.png (quality-quick.png).

Same width: RecBole's models get the project's [model] hidden size, layers, heads, dropout and
sequence length (MAX_ITEM_LIST_LENGTH = model.max_len), inner size 4 x hidden as the project's BERT,
the project's training batch size, learning rate and BERT4Rec mask ratio, and score as many users
per pass as the project's eval.batch_size. Only warm test targets are compared (the project's
`test` evaluation); cold targets (`test_cold`) are the project's alone.

--quick: the project with 2 + 1 epochs under run name `quality-quick`, one seed, and RecBole with 2
epochs, one seed. It checks the pipeline end to end; its numbers say little.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import BENCH, REPO, machine, result_path, write_result  # first: the environment Ray reads

from qbr_dist.config import config_from_dict, load_config
from qbr_dist.seqrec.metrics import METRIC_NAMES

CONFIG = REPO / "launch" / "configs" / "ml100k.toml"
RECBOLE_PYTHON = REPO / ".venv-recbole" / "bin" / "python"
RECBOLE_TRAIN = BENCH / "recbole" / "train.py"
QUICK_PROJECT = ["run.name=quality-quick", "train.pretrain_epochs=2", "train.finetune_epochs=1", "fusion.epochs=1"]
PROJECT_MODELS = ("popularity", "content-knn", "bert4rec", "qbert4rec")
RECBOLE_MODELS = ("sasrec", "bert4rec")
EVALUATIONS = ("valid", "test")  # warm targets only: RecBole's ID models cannot score cold items

NOTES = [
    ("Split: the project's ingest (leave-one-out, timestamp ties in file order, 10% cold items removed from every "
     "training and validation input); RecBole reads the same sequences with their positions as timestamps "
     "(eval_args split LS valid_and_test, order TO), so it trains on the same training parts."),
    ("Metrics: every figure on both sides comes from qbr_dist/seqrec/metrics.py (full ranking over the whole "
     "catalog, ties counted against the target, history left out only if eval.exclude_history). Test = users "
     "whose test target is warm; validation = every user."),
    ("Model selection: the project keeps each model's best validation NDCG@10; RecBole's Trainer early-stops "
     "(stopping_step evaluations without a better score) on the same figure, computed by the project's code, "
     "and its best checkpoint is tested once. The best RecBole model is chosen on validation NDCG@10."),
    ("Inputs at scoring time: RecBole SASRec sees the newest max_len history items. RecBole BERT4Rec, like the "
     "project's BERT4Rec, sees the newest max_len - 1 items followed by its mask token when the history is "
     "longer than that; it appends the mask after the newest max_len items and drops the first position, so a "
     "shorter history loses its oldest item there (the project keeps it)."),
    ("Training data: RecBole trains on every prefix of each training part (newest max_len items of it) with "
     "its own losses (SASRec: next item, CE; BERT4Rec: random masking with mask_ratio, CE); the project "
     "pretrains on sliding windows with its masking and fine-tunes on every finetune_stride-th prefix."),
]


# ---------------------------------------------------------------- the project's side

def run_project(overrides: list[str], seeds: int) -> Path:
    """`qbr run` of the demo config (plus overrides) in this repository; returns its summary file."""
    cfg = load_config(CONFIG, overrides)
    qbr = Path(sys.executable).parent / "qbr"
    command = [str(qbr), "run", "--config", str(CONFIG.relative_to(REPO))]
    command += [part for o in overrides for part in ("--set", o)]
    command += ["--seeds", str(seeds)] if seeds > 1 else []
    print("project:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    root = REPO / cfg.run.root / cfg.run.name
    return root / ("seeds.json" if seeds > 1 else "report.json")


def read_project(path: Path) -> dict:
    """The project's figures from a seeds.json (with its per-seed report.json files where present) or a
    report.json: per model, per evaluation, {metric: {mean, std}}, plus per-seed values."""
    summary = json.loads(path.read_text())
    published = "summary" in summary and "per_seed" in summary  # e.g. bench/results/ml100k-seeds.json
    command = summary.get("command")
    if published:  # a seeds.json kept with each seed's model figures and its command; its run folders may be gone
        per_seed = {int(s): {"models": models} for s, models in summary["per_seed"].items()}
        config = load_config(CONFIG, command_overrides(command)).to_dict()
        summary, ingest = summary["summary"], None
    if "seeds" in summary:  # seeds.json of `qbr run --seeds N`: <root>/<name>/seeds.json, seeds in <name>-seed<s>
        seeds = [int(s) for s in summary["seeds"]]
        models = {name: {e: m[e] for e in EVALUATIONS if e in m} for name, m in summary["models"].items()}
        if not published:
            reports = {s: path.parent.parent / f"{path.parent.name}-seed{s}" / "report.json" for s in seeds}
            per_seed = {s: json.loads(p.read_text()) for s, p in reports.items() if p.is_file()}
            ingest = path.parent.parent / f"{path.parent.name}-seed{seeds[0]}" / "ingest"
            config = next(iter(per_seed.values()), {}).get("config")
    else:  # report.json of one run
        config = summary.get("config")
        seeds = [int(config["run"]["seed"]) if config else 0]
        per_seed = {seeds[0]: summary}
        models = {name: {e: {k: {"mean": v, "std": 0.0} for k, v in m[e].items() if k in METRIC_NAMES}
                         for e in EVALUATIONS if e in m} for name, m in summary["models"].items()}
        ingest = path.parent / "ingest"
    out = {}
    for name, figures in models.items():
        entry = {"side": "qbr-dist", "seeds": seeds, **figures, "per_seed": {}}
        for seed, report in sorted(per_seed.items()):
            run = report["models"].get(name, {})
            entry["per_seed"][str(seed)] = {**{e: run[e] for e in EVALUATIONS if e in run},
                                            **{k: run[k] for k in ("epochs", "steps", "best", "train_wall_s")
                                               if k in run}}
        out[name] = entry
    return {"source": shown(path), "command": command, "seeds": seeds, "models": out, "data": summary.get("data"),
            "config": config, "ingest": ingest}


def command_overrides(command: str) -> list[str]:
    """The `--set` values of a recorded `qbr run` command line."""
    words = shlex.split(command)
    return [value for flag, value in zip(words, words[1:]) if flag == "--set"]


def ingest_stage(project_cfg: dict, work: Path) -> Path:
    """The project config's ingest stage (the split both sides train on) under the scratch folder, for a
    summary whose run folders are gone, such as the published bench/results/ml100k-seeds.json."""
    from qbr_dist.pipeline import ingest

    cfg = config_from_dict(project_cfg)
    print(f"project: ingest stage of {CONFIG.relative_to(REPO)} for RecBole", flush=True)
    return ingest(cfg, work / "project" / cfg.run.name)


# ---------------------------------------------------------------- the peers' side

def run_recbole(args, project_cfg: dict, ingest: Path, seeds: list[int], work: Path) -> dict:
    if not RECBOLE_PYTHON.is_file():
        raise SystemExit(f"{RECBOLE_PYTHON} not found: `make bench-quality` sets up .venv-recbole first")
    model, train, evaluation = project_cfg["model"], project_cfg["train"], project_cfg["eval"]
    out = work / "recbole.json"
    command = [str(RECBOLE_PYTHON), str(RECBOLE_TRAIN), "--ingest", str(ingest), "--work", str(work / "recbole"),
               "--out", str(out), "--models", *args.recbole_models, "--seeds", *map(str, seeds),
               "--epochs", str(args.recbole_epochs), "--stopping-step", str(args.stopping_step),
               "--hidden", str(model["hidden"]), "--layers", str(model["layers"]), "--heads", str(model["heads"]),
               "--max-len", str(model["max_len"]), "--dropout", str(model["dropout"]),
               "--mask-ratio", str(train["mask_ratio"]), "--batch-size", str(train["batch_size"]),
               "--lr", str(train["lr"]), "--eval-batch-size", str(evaluation["batch_size"]),
               "--threads", str(args.threads)] + (["--exclude-history"] if evaluation["exclude_history"] else [])
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": ""}
    print("recbole:", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return json.loads(out.read_text())


def start_cache_from(published: Path, cache: Path) -> None:
    """A fresh clone has no RecBole cache (bench/.work is not committed): start it from the RecBole runs of
    the published results file. train.py keeps them only if their fingerprint (its settings, the exported
    data and its own source) is the one it computes, so nothing it would not have trained itself is reused."""
    if cache.is_file() or not published.is_file():
        return
    previous = json.loads(published.read_text())
    recbole = previous.get("settings", {}).get("recbole", {})
    if "fingerprint" not in recbole:
        return
    runs = {name.removeprefix("recbole-"): model["per_seed"] for name, model in previous["models"].items()
            if name.startswith("recbole-")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"fingerprint": recbole["fingerprint"], "runs": runs,
                                 "settings": recbole.get("models", {})}, indent=2) + "\n")
    print(f"recbole: cache started from {shown(published)} (seeds {sorted({s for r in runs.values() for s in r})})",
          flush=True)


def recbole_models(recbole: dict) -> dict:
    out = {}
    for key, runs in recbole["runs"].items():
        seeds = sorted(runs, key=int)
        entry = {"side": f"RecBole {recbole['recbole']}", "seeds": [int(s) for s in seeds]}
        for evaluation in EVALUATIONS:
            entry[evaluation] = {k: _mean_std([runs[s][evaluation][k] for s in seeds]) for k in METRIC_NAMES}
        entry["per_seed"] = runs
        out[f"recbole-{key}"] = entry
    return out


def in_repository(value):
    """`value` (RecBole's arguments or settings) with its paths relative to the repository, as any clone
    would have them."""
    if isinstance(value, dict):
        return {k: in_repository(v) for k, v in value.items()}
    return value.replace(f"{REPO}/", "") if isinstance(value, str) else value


def shown(path: Path) -> str:
    """A path as any clone would have it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _mean_std(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


# ---------------------------------------------------------------- output

def side_by_side(models: dict) -> dict:
    peers = {name: m for name, m in models.items() if name.startswith("recbole-")}
    best = max(peers, key=lambda name: peers[name]["valid"]["NDCG@10"]["mean"])
    out = {"best_recbole": {"model": best, "chosen_by": "validation NDCG@10 (mean over seeds)",
                            "valid_ndcg10": peers[best]["valid"]["NDCG@10"]["mean"],
                            "test_ndcg10": peers[best]["test"]["NDCG@10"]["mean"],
                            "test_ndcg10_std": peers[best]["test"]["NDCG@10"]["std"]}}
    for name in ("qbert4rec", "bert4rec"):
        if name in models:
            out[f"{name}_test_ndcg10"] = models[name]["test"]["NDCG@10"]["mean"]
            out[f"{name}_test_ndcg10_std"] = models[name]["test"]["NDCG@10"]["std"]
    return out


def plot(models: dict, path: Path, title: str) -> None:
    """Grouped bars: each model's test metrics, mean over seeds with the standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (name, m) in enumerate(models.items()):
        xs = [x + i * width for x in range(len(METRIC_NAMES))]
        label = name if name.startswith("recbole-") else f"{name} (qbr-dist)"
        ax.bar(xs, [m["test"][k]["mean"] for k in METRIC_NAMES], width=width,
               yerr=[m["test"][k]["std"] for k in METRIC_NAMES], capsize=2, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(METRIC_NAMES))], METRIC_NAMES)
    ax.set_xlabel("metric (test, warm targets)")
    ax.set_ylabel("value")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, help="seeds on both sides (default 3, 1 with --quick)")
    parser.add_argument("--project-summary", type=Path,
                        help="read the project's figures from this seeds.json or report.json instead of running qbr")
    parser.add_argument("--ingest", type=Path,
                        help="the project's ingest folder RecBole trains on (default: the summary's run)")
    parser.add_argument("--recbole-models", nargs="+", default=list(RECBOLE_MODELS), choices=RECBOLE_MODELS)
    parser.add_argument("--recbole-epochs", type=int, help="at most this many epochs (default 50, 2 with --quick)")
    parser.add_argument("--stopping-step", type=int, default=5,
                        help="RecBole stops after this many epochs without a better validation NDCG@10")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the RecBole process")
    parser.add_argument("--out", type=Path, help="default bench/results/quality.json (quality-quick.json)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    args.recbole_epochs = args.recbole_epochs or (2 if args.quick else 50)
    overrides = QUICK_PROJECT if args.quick else []
    work = BENCH / ".work" / ("quality-quick" if args.quick else "quality")
    started = time.perf_counter()

    summary = args.project_summary or run_project(overrides, seeds)
    project = read_project(summary)
    project_cfg = project["config"] or load_config(CONFIG, overrides).to_dict()
    ingest = (args.ingest or project["ingest"] or ingest_stage(project_cfg, work)).resolve()
    manifest = json.loads((ingest / "manifest.json").read_text())
    recorded = project["data"] or {}
    if {k: manifest["rows"].get(k) for k in recorded} != recorded:
        raise SystemExit(f"{ingest}/manifest.json: rows {manifest['rows']} are not the data the project's "
                         f"figures were made on ({recorded})")
    recbole_seeds = list(range(project["seeds"][0], project["seeds"][0] + seeds))  # the project's seed numbers
    start_cache_from(args.out or result_path("quality", quick=args.quick), work / "recbole.json")
    recbole = run_recbole(args, project_cfg, ingest, recbole_seeds, work)

    models = {name: project["models"][name] for name in PROJECT_MODELS if name in project["models"]}
    models |= recbole_models(recbole)
    rows = manifest["rows"]
    result = {
        "quick": args.quick,
        "machine": machine(recbole_env={k: recbole[k] for k in ("recbole", "torch", "numpy", "python")},
                           recbole_threads=args.threads),
        "dataset": project_cfg["data"]["dataset"],
        "split": {"protocol": "leave-one-out: train = items[:-2], valid target = items[-2], test target = items[-1]",
                  "users": rows["users"], "items": rows["items"], "interactions": rows["interactions"],
                  "cold_items": rows.get("cold_items", 0), "valid_users": recbole["data"]["valid_users"],
                  "test_users": recbole["data"]["test_users"],
                  "cold_test_users_not_compared": recbole["data"]["cold_test_users"],
                  "ingest": shown(ingest), "ingest_key": manifest["key"]},
        "side_by_side": side_by_side(models),
        "models": models,
        "settings": {
            "project": {"config": str(CONFIG.relative_to(REPO)), "summary": shown(summary),
                        "overrides": None if args.project_summary else overrides,  # None: an existing summary
                        "command": project["command"],  # what made a published summary's runs
                        "seeds": project["seeds"],
                        **{s: project_cfg[s] for s in ("model", "train", "eval", "runtime") if s in project_cfg}},
            "recbole": {"seeds": recbole_seeds, "fingerprint": recbole["fingerprint"],
                        "arguments": in_repository(recbole["arguments"]),
                        "models": in_repository(recbole["settings"])},
        },
        "notes": NOTES,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out_path = write_result(result, "quality", quick=args.quick, out=args.out)
    counts = sorted({len(project["seeds"]), len(recbole_seeds)})
    plot(models, out_path.with_suffix(".png"), "MovieLens-100K, leave-one-out, warm test targets; mean ± std over "
         + (f"{counts[0]} seed(s)" if len(counts) == 1 else
            f"{len(project['seeds'])} (qbr-dist) and {len(recbole_seeds)} (RecBole) seeds"))
    pair = result["side_by_side"]
    print(f"qbert4rec test NDCG@10 {pair.get('qbert4rec_test_ndcg10', float('nan')):.4f}; best RecBole "
          f"({pair['best_recbole']['model']}) {pair['best_recbole']['test_ndcg10']:.4f}", flush=True)
    print(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
