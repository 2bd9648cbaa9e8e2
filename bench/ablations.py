"""Q-BERT4Rec ablations: one `qbr run` per ablation of the MovieLens-100K demo config, all under
one run root, so the stages an ablation does not change are reused rather than recomputed.
Each row holds Q-BERT4Rec's validation, test (warm targets) and cold-test metrics, next to the
ID-only BERT4Rec of the same run, and when and from which commit its Q-BERT4Rec was trained (a
rerun reuses finished stages, so it costs seconds and keeps those).

    python bench/ablations.py [--quick]

--quick runs a small synthetic catalog with a short training budget: it checks the script end to
end, its numbers say little. Writes bench/results/ablations.json (ablations-quick.json).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import BENCH, REPO, machine, trained, write_result  # first: the environment Ray reads

from qbr_dist import pipeline
from qbr_dist.config import load_config
from qbr_dist.data import synth

WORK = BENCH / ".work" / "ablations"
CONFIG = REPO / "launch" / "configs" / "ml100k.toml"

ABLATIONS = {
    "full": [],
    "without pretraining": ["train.pretrain_epochs=0"],
    "mask mixture (random, span, tail, multi-region)": ["train.mask_weights=[0.4, 0.2, 0.2, 0.2]"],
    "without fusion (codes from text features)": ["quant.input=text_emb"],
    "pure semantic (no ID vector)": ["model.tokens=semantic"],
    "ID dropout 0.5 (hybrid items placed by their codes alone half the time)": ["model.id_dropout=0.5"],
}
KEPT = ("valid", "test", "test_cold", "epochs", "steps", "train_wall_s", "mask_mixture")


def quick_overrides(folder: Path) -> list[str]:
    """A small synthetic catalog and a short budget instead of MovieLens-100K."""
    data = folder / "synth"
    if not (data / synth.INTERACTIONS).is_file():
        synth.synthesize(synth.SynthSpec(items=200, users=160, mean_length=10), data)
    return [
        "data.dataset=files", f"data.interactions='{data / synth.INTERACTIONS}'",
        f"data.catalog='{data / synth.CATALOG}'", "data.text_fields=['title', 'description']",
        "structure.fields=['category', 'brand']", "structure.dim=8", "fusion.dim=16", "fusion.epochs=2",
        "fusion.batch_size=64", "quant.levels=2", "quant.codebook_size=8", "model.hidden=16", "model.layers=1",
        "model.max_len=10", "train.batch_size=32", "train.pretrain_epochs=4", "train.finetune_epochs=2",
        "train.eval_every=2", "train.warmup_steps=4",
    ]


def run(name: str, overrides: list[str], base: list[str]) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in name.split(" (")[0])
    cfg = load_config(CONFIG, base + overrides + [f"run.name=ablation-{slug}", f"run.root='{WORK}'"])
    report = pipeline.run_pipeline(cfg)
    models = report["models"]
    return {"overrides": overrides, "trained": trained(pipeline.run_dir(cfg) / "qbert4rec"),
            "qbert4rec": {k: models["qbert4rec"][k] for k in KEPT if k in models["qbert4rec"]},
            "bert4rec": {k: models["bert4rec"][k] for k in KEPT if k in models["bert4rec"]}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    base = quick_overrides(WORK) if args.quick else []
    rows = {}
    for name, overrides in ABLATIONS.items():
        started = time.perf_counter()
        rows[name] = run(name, overrides, base)
        test = rows[name]["qbert4rec"]["test"]["NDCG@10"]
        print(f"{name}: qbert4rec test NDCG@10 {test:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    result = {"config": str(CONFIG.relative_to(REPO)), "quick": args.quick, "ablations": rows,
              "machine": machine()}
    print(write_result(result, "ablations", quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
