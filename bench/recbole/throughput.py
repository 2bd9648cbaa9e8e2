"""Training throughput of RecBole 1.2.1's BERT4Rec on a qbr-dist ingest folder: sequences per second.

Runs in `.venv-recbole`; `bench/train_throughput.py` launches it. The data and the configuration come from
`bench/recbole/train.py` (imported, not copied): `load_ingest` and `export_atomic` write the project's sequences
as RecBole atomic files, `recbole_config` gives RecBole the project's width (hidden, layers, heads, inner size
4 x hidden, dropout, MAX_ITEM_LIST_LENGTH), batch size, learning rate and mask ratio.

RecBole's own `Trainer._train_epoch` trains on its own training loader (every prefix of each training part,
BERT4Rec masking in the loader), fed `--warmup-batches` untimed batches and then `--batches` timed ones. Timed:
from the request of the first timed batch to the end of the last one's optimizer step, so loading, masking,
forward, backward and step; no evaluation and no checkpoint. Sequences are counted as RecBole hands them
over (rows of each batch's Interaction).

    .venv-recbole/bin/python bench/recbole/throughput.py --ingest DIR --work DIR --out FILE [--batches 300]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as recbole_train  # noqa: E402  (restores numpy's aliases and imports RecBole)
import torch  # noqa: E402
from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: E402

MODEL = "bert4rec"
SETTINGS = ("hidden_size", "inner_size", "n_layers", "n_heads", "hidden_dropout_prob", "attn_dropout_prob",
            "MAX_ITEM_LIST_LENGTH", "train_batch_size", "learning_rate", "learner", "mask_ratio", "loss_type")


def timed_batches(loader, warmup: int, batches: int, marks: dict):
    """The first `warmup + batches` batches of `loader`; `marks` gets the timed span and sequence count."""
    if len(loader) < warmup + batches:
        raise SystemExit(f"an epoch has {len(loader)} batches, fewer than {warmup} + {batches}")
    batch_iter = iter(loader)
    for index in range(warmup + batches):
        if index == warmup:
            marks["started"] = time.perf_counter()
        interaction = next(batch_iter)
        if index >= warmup:
            marks["sequences"] += len(interaction)
        yield interaction
    marks["ended"] = time.perf_counter()  # the trainer asks for one more batch only after the last step


def measure(args) -> dict:
    # evaluation settings recbole_config needs; nothing is evaluated here
    settings = recbole_train.recbole_config(SimpleNamespace(**vars(args), epochs=1, stopping_step=1,
                                                            eval_batch_size=1), MODEL, args.seed)
    config = Config(model=recbole_train.MODELS[MODEL], dataset=recbole_train.DATASET, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    marks = {"sequences": 0}
    load = os.getloadavg()[0]
    trainer._train_epoch(timed_batches(train_data, args.warmup_batches, args.batches, marks), epoch_idx=0)
    seconds = marks["ended"] - marks["started"]
    return {"train_examples": len(train_data.dataset), "batches_per_epoch": len(train_data),
            "warmup_batches": args.warmup_batches, "timed_batches": args.batches, "sequences": marks["sequences"],
            "seconds": round(seconds, 3), "sequences_per_s": round(marks["sequences"] / seconds, 1),
            "loadavg_1m_before": load, "torch_threads": torch.get_num_threads(),
            "settings": {k: config[k] for k in SETTINGS}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest", type=Path, required=True, help="a qbr-dist ingest folder (read only)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (atomic files, logs)")
    parser.add_argument("--out", type=Path, required=True)
    recbole_train.add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-batches", type=int, default=10)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too
    args.work, args.out, args.ingest = args.work.resolve(), args.out.resolve(), args.ingest.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # RecBole writes ./log and ./log_tensorboard

    sequences, _, num_items = recbole_train.load_ingest(args.ingest)
    exported = recbole_train.export_atomic(sequences, num_items, args.work / "atomic" / recbole_train.DATASET)
    result = {"recbole": version("recbole"), "torch": torch.__version__,
              "python": platform.python_version(), "data": exported, **measure(args)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"recbole bert4rec: {result['sequences']} sequences in {result['seconds']:.1f} s, "
          f"{result['sequences_per_s']:.0f} sequences/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
