"""RecBole 1.2.1's SASRec and BERT4Rec on a qbr-dist ingest folder, scored by qbr-dist's own metric code.

Runs in the bench-only virtual environment `.venv-recbole` (RecBole pins an old Ray and needs numpy
aliases that numpy 2 removed, so it cannot share `.venv`); `bench/quality.py` launches it.

How the two sides meet, with no copy of the project's code:
- This process puts the repository root on `sys.path` and imports the project's pure
  numpy/pyarrow/torch modules from the source tree: `qbr_dist.data.split` (leave-one-out parts,
  evaluation users), `qbr_dist.seqrec.examples` (evaluation examples, left padding) and
  `qbr_dist.seqrec.metrics` (`target_ranks`, `metric_sums`, `metric_means`). Nothing that imports
  Ray, DeepSpeed or transformers is imported here.
- The project's ingested sequences (after its cold-item split) are written as RecBole atomic files:
  `<name>.inter` (user, item, timestamp = position 1, 2, ... in the user's sequence, so RecBole's
  time-ordered leave-one-out holds out exactly the project's validation and test items) and
  `<name>.item` (every catalog item, so RecBole's item table covers the project's whole catalog).
  Item tokens are the project's item indexes; RecBole's internal ids map back through
  `dataset.field2id_token`.
- RecBole trains with its own data pipeline and Trainer (every prefix of each training part,
  CE loss, its BERT4Rec masking). Its per-epoch validation score is replaced by the project's
  validation NDCG@10 (`_valid_epoch` below), so RecBole's own early stopping (`stopping_step`) selects
  the checkpoint by the same figure the project's models are selected by. The best checkpoint is then
  scored once on the project's validation and (warm) test examples: `model.full_sort_predict` on the
  project's histories (newest `MAX_ITEM_LIST_LENGTH` items), columns reordered to the project's item
  indexes, ranked over the whole catalog by `target_ranks` (ties against the target; the history
  left out of the ranking only with `--exclude-history`, as the project's `eval.exclude_history`).
- Checks: before training, every one of RecBole's validation and test examples must hold the
  project's target and history (newest MAX_ITEM_LIST_LENGTH items) for its user, or the run stops.
  After training, the output records RecBole's own full-ranking evaluation of the best checkpoint on
  its test split (every user, cold test targets included; for sequential models RecBole leaves no
  history item out of the ranking) next to the project's metric code on the same users, history kept
  (`crosscheck`): agreement up to ties (RecBole's top-k does not count them against the target)
  shows that the export and the id mapping line up.

    .venv-recbole/bin/python bench/recbole/train.py --ingest runs/ml100k-seed0/ingest --work bench/.work/quality \\
        --out bench/.work/quality/recbole.json [--models sasrec bert4rec] [--seeds 0 1 2] [--epochs 50]

Writes `--out` after every (model, seed), keeping the seeds another run finished in the same file meanwhile;
a rerun with the same settings skips the finished ones.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATASET = "qbr_export"  # not a RecBole built-in name, so no properties/dataset/<name>.yaml is merged in
MODELS = {"sasrec": "SASRec", "bert4rec": "BERT4Rec"}


def restore_numpy_aliases() -> None:
    """RecBole 1.2.1 uses aliases that numpy 1.24 / 2.0 removed."""
    for name, value in (("float_", np.float64), ("float", float), ("int", int), ("bool", bool), ("object", object),
                        ("str", str), ("long", int), ("unicode_", np.str_), ("complex_", np.complex128)):
        if name not in np.__dict__:
            setattr(np, name, value)


restore_numpy_aliases()
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore", category=FutureWarning)  # RecBole 1.2.1 on today's pandas and torch: noise

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from recbole.config import Config  # noqa: E402  (never recbole.quick_start: it imports ray.tune)
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.data.interaction import Interaction  # noqa: E402
from recbole.utils import get_model, get_trainer, init_logger, init_seed  # noqa: E402

from qbr_dist.data.split import evaluation_part, evaluation_users  # noqa: E402
from qbr_dist.seqrec.examples import evaluation_examples, left_pad  # noqa: E402
from qbr_dist.seqrec.metrics import METRIC_NAMES, metric_means, metric_sums, target_ranks  # noqa: E402

# ---------------------------------------------------------------- the project's data, as RecBole sees it

def load_ingest(ingest: Path) -> tuple[list[np.ndarray], np.ndarray, int]:
    """(sequences, cold_target, number of catalog items) of a qbr-dist ingest folder."""
    table = pq.read_table(ingest / "sequences.parquet", columns=["items", "cold_target"])
    sequences = [np.asarray(items, dtype=np.int64) for items in table.column("items").to_pylist()]
    cold_target = table.column("cold_target").to_numpy(zero_copy_only=False).astype(bool)
    return sequences, cold_target, pq.read_metadata(ingest / "items.parquet").num_rows


def export_atomic(sequences: list[np.ndarray], num_items: int, folder: Path) -> dict:
    """RecBole atomic files in `folder`: one row per interaction with its position as timestamp."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, items in enumerate(sequences):
        lines.extend(f"u{user}\t{item}\t{position}" for position, item in enumerate(items.tolist(), 1))
    _write(folder / f"{DATASET}.inter", "\n".join(lines) + "\n")
    _write(folder / f"{DATASET}.item", "item_id:token\n" + "".join(f"{i}\n" for i in range(1, num_items + 1)))
    return {"interactions": len(lines) - 1, "users": len(sequences), "items": num_items}


def _write(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


# ---------------------------------------------------------------- RecBole configuration

def recbole_config(args, model: str, seed: int) -> dict:
    """Everything this run sets; the rest are RecBole 1.2.1's defaults (recorded in the output)."""
    settings = {
        "data_path": str(args.work / "atomic"), "checkpoint_dir": str(args.work / "saved" / f"{model}-seed{seed}"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "hidden_size": args.hidden, "inner_size": 4 * args.hidden, "n_layers": args.layers, "n_heads": args.heads,
        "hidden_dropout_prob": args.dropout, "attn_dropout_prob": args.dropout,
        "loss_type": "CE", "train_neg_sample_args": None,
        "epochs": args.epochs, "train_batch_size": args.batch_size, "learning_rate": args.lr,
        "eval_step": 1, "stopping_step": args.stopping_step,
        "metrics": ["Hit", "NDCG", "MRR"], "topk": [5, 10, 20], "valid_metric": "NDCG@10",
        "eval_batch_size": args.eval_batch_size * 64,  # RecBole's own (cross-check) evaluation only
        "seed": seed, "reproducibility": True, "use_gpu": False, "worker": 0, "show_progress": False,
        "state": "WARNING", "log_wandb": False, "metric_decimal_place": 6,
    }
    if model == "bert4rec":
        settings["mask_ratio"] = args.mask_ratio
    return settings


# ---------------------------------------------------------------- scoring through the project's metric code

class ProjectScorer:
    """Scores a RecBole model on the project's (history, target) examples with the project's metric code."""

    def __init__(self, dataset, sequences, cold_target, num_items: int, *, max_len: int, users_per_batch: int,
                 exclude_history: bool):
        tokens = [str(i) for i in range(1, num_items + 1)]
        # project item index -> RecBole internal id (index 0, padding, to RecBole's padding id 0)
        self.to_recbole = torch.as_tensor(np.r_[0, dataset.token2id(dataset.iid_field, tokens)], dtype=torch.long)
        self.num_items, self.max_len, self.users_per_batch = num_items, max_len, users_per_batch
        self.exclude_history = exclude_history
        self.examples = {evaluation: evaluation_examples(sequences, cold_target, evaluation)
                         for evaluation in ("valid", "test")}
        # cross-check: every user's test example (warm and cold targets), as RecBole's own test split has
        self.examples["test_all"] = [evaluation_part("test")(s) for s in sequences]

    @torch.no_grad()
    def evaluate(self, model, evaluation: str, *, exclude_history: bool | None = None) -> dict[str, float]:
        exclude = self.exclude_history if exclude_history is None else exclude_history
        model.eval()
        examples = self.examples[evaluation]
        sums = dict.fromkeys(METRIC_NAMES, 0.0)
        for first in range(0, len(examples), self.users_per_batch):
            batch = examples[first:first + self.users_per_batch]
            scores = self.scores(model, [history for history, _ in batch])
            history = None
            if exclude:
                longest = max(len(h) for h, _ in batch)
                history = torch.from_numpy(np.stack([left_pad(h, longest) for h, _ in batch]))
            ranks = target_ranks(lambda start, end, scores=scores: scores[:, start - 1:end - 1],
                                 torch.tensor([target for _, target in batch]), first_item=1,
                                 end_item=self.num_items + 1, chunk_size=self.num_items, history=history)
            for name, value in metric_sums(ranks).items():
                sums[name] += value
        return metric_means(sums, len(examples))

    def scores(self, model, histories: list[np.ndarray]) -> torch.Tensor:
        """(users, num_items) scores, column j for the project's item j + 1."""
        recent = [self.to_recbole[torch.from_numpy(h[-self.max_len:])] for h in histories]
        seq = torch.zeros(len(recent), self.max_len, dtype=torch.long)
        for row, items in enumerate(recent):  # RecBole's layout: oldest first, padding after
            seq[row, :len(items)] = items
        lengths = torch.tensor([len(items) for items in recent], dtype=torch.long)
        interaction = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths}).to(model.device)
        return model.full_sort_predict(interaction).view(len(recent), -1).float().cpu()[:, self.to_recbole[1:]]


def check_split(valid, test, sequences, max_len: int) -> dict:
    """RecBole's validation and test examples hold the project's targets and histories, user by user."""
    checked = {}
    for name, part, offset in (("valid", valid, 2), ("test", test, 1)):
        feat = part.inter_feat
        users = part.id2token(part.uid_field, feat[part.uid_field].numpy())
        targets = part.id2token(part.iid_field, feat[part.iid_field].numpy())
        lists = feat[part.item_id_list_field].numpy()
        lengths = feat[part.item_list_length_field].numpy()
        if sorted(int(u[1:]) for u in users) != list(range(len(sequences))):
            raise RuntimeError(f"RecBole's {name} split does not hold every user once")
        for user, target, items, length in zip(users, targets, lists, lengths):
            sequence = sequences[int(user[1:])]
            history = [int(t) for t in part.id2token(part.iid_field, items[:length])]
            if int(target) != sequence[-offset] or history != sequence[:-offset][-max_len:].tolist():
                raise RuntimeError(f"RecBole's {name} example of {user} differs from the project's split")
        checked[f"{name}_users"] = len(users)
    return {**checked, "targets_and_histories_match": True}


def make_trainer_class(base, scorer: ProjectScorer, curve: list, started: float):
    class ProjectValidTrainer(base):
        """RecBole's trainer, early stopping on the project's validation NDCG@10."""

        def _valid_epoch(self, valid_data, show_progress=False):
            result = scorer.evaluate(self.model, "valid")
            epoch = len(curve)
            loss = self.train_loss_dict.get(epoch)
            curve.append({"epoch": epoch + 1,  # RecBole's epoch loss: the sum of its batches' mean losses
                          "train_loss_sum": None if loss is None else round(float(loss), 5),
                          "valid_NDCG@10": result["NDCG@10"], "elapsed_s": round(time.perf_counter() - started, 1)})
            print(f"  epoch {epoch + 1}: loss {loss or float('nan'):.4f}, valid NDCG@10 {result['NDCG@10']:.4f} "
                  f"({curve[-1]['elapsed_s']:.0f} s)", flush=True)
            return result["NDCG@10"], result

    return ProjectValidTrainer


# ---------------------------------------------------------------- one model, one seed

def train_one(args, model_key: str, seed: int, sequences, cold_target, num_items: int) -> dict:
    settings = recbole_config(args, model_key, seed)
    config = Config(model=MODELS[model_key], dataset=DATASET, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    torch.set_num_threads(args.threads)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    if dataset.item_num != num_items + 1:
        raise RuntimeError(f"RecBole sees {dataset.item_num - 1} items, the project's catalog has {num_items}")
    split_check = check_split(valid_data.dataset, test_data.dataset, sequences, args.max_len)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    scorer = ProjectScorer(dataset, sequences, cold_target, num_items, max_len=args.max_len,
                           users_per_batch=args.eval_batch_size, exclude_history=args.exclude_history)
    curve: list[dict] = []
    started = time.perf_counter()
    trainer = make_trainer_class(get_trainer(config["MODEL_TYPE"], config["model"]), scorer, curve, started)(
        config, model)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=False)
    wall = time.perf_counter() - started
    # RecBole's own checkpoint file, loaded as a full pickle on purpose (torch >= 2.6 defaults to weights_only)
    checkpoint = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    result = {
        "valid": scorer.evaluate(model, "valid"),
        "test": scorer.evaluate(model, "test"),
        "best_epoch": int(checkpoint["epoch"]) + 1, "epochs": len(curve), "train_wall_s": round(wall, 1),
        "train_examples": len(train_data.dataset), "split_check": split_check, "curve": curve,
    }
    own = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    ours = scorer.evaluate(model, "test_all", exclude_history=False)  # RecBole's sequential protocol
    result["crosscheck"] = {
        "users": len(scorer.examples["test_all"]),
        "recbole_own_test": {k: float(own[k.lower().replace("hr@", "hit@")]) for k in METRIC_NAMES if k != "MRR"},
        "project_metric_same_users": {k: ours[k] for k in METRIC_NAMES if k != "MRR"},
    }
    Path(trainer.saved_model_file).unlink(missing_ok=True)  # a few MB each; the figures are what is kept
    return result, {k: config[k] for k in sorted(config.final_config_dict) if _plain(config[k])}


def _plain(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


# ---------------------------------------------------------------- main

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings RecBole's models take from the project's config (bench/quality.py and train_throughput.py)."""
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--mask-ratio", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingest", type=Path, required=True, help="a qbr-dist ingest folder (read only)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (atomic files, logs, checkpoints)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--stopping-step", type=int, default=5, help="evaluations without a better valid NDCG@10")
    add_model_arguments(parser)
    parser.add_argument("--eval-batch-size", type=int, default=512, help="users per scoring pass")
    parser.add_argument("--exclude-history", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too (and warns that it ignores ours)
    args.work, args.out, args.ingest = args.work.resolve(), args.out.resolve(), args.ingest.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # RecBole writes ./log and ./log_tensorboard

    sequences, cold_target, num_items = load_ingest(args.ingest)
    exported = export_atomic(sequences, num_items, args.work / "atomic" / DATASET)
    hyper = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
             if k not in ("work", "out", "models", "seeds")}
    # what makes finished runs reusable: the settings (the data enters through its digest) and this file
    settled = {k: v for k, v in hyper.items() if k != "ingest"}
    fingerprint = hashlib.sha256((json.dumps(settled, sort_keys=True) + _digest(args.work) +
                                  hashlib.sha256(Path(__file__).read_bytes()).hexdigest()).encode()).hexdigest()[:16]
    out = {"recbole": _version("recbole"), "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "threads": args.threads, "fingerprint": fingerprint,
           "arguments": hyper, "data": {**exported, "valid_users": int(evaluation_users(cold_target, "valid").sum()),
                                        "test_users": int(evaluation_users(cold_target, "test").sum()),
                                        "cold_test_users": int(cold_target.sum())},
           "settings": {}, "runs": {}}
    take_finished(out, args.out)
    for model_key in args.models:
        for seed in args.seeds:
            if str(seed) in out["runs"].get(model_key, {}):
                print(f"recbole {model_key} seed {seed}: done before, kept", flush=True)
                continue
            print(f"recbole {model_key} seed {seed}: training", flush=True)
            result, settings = train_one(args, model_key, seed, sequences, cold_target, num_items)
            out["runs"].setdefault(model_key, {})[str(seed)] = result
            out["settings"][model_key] = {k: v for k, v in settings.items() if k != "seed"}
            print(f"recbole {model_key} seed {seed}: best epoch {result['best_epoch']}, valid NDCG@10 "
                  f"{result['valid']['NDCG@10']:.4f}, test NDCG@10 {result['test']['NDCG@10']:.4f} "
                  f"({result['train_wall_s']:.0f} s)", flush=True)
            save(out, args.out)
    return 0


def take_finished(out: dict, path: Path) -> None:
    """Add to `out` the (model, seed) results that `path` holds under the same fingerprint and `out` lacks:
    those of an earlier run, or of another run writing the same file meanwhile."""
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    if recorded.get("fingerprint") != out["fingerprint"]:
        return
    for model_key, runs in recorded.get("runs", {}).items():
        for seed, result in runs.items():
            out["runs"].setdefault(model_key, {}).setdefault(seed, result)
    for model_key, settings in recorded.get("settings", {}).items():
        out["settings"].setdefault(model_key, settings)


def save(out: dict, path: Path) -> None:
    """Write `out` under a name of this process's own, then rename it onto `path`, keeping what another run
    on the same `--out` finished since this one started."""
    take_finished(out, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


def _digest(work: Path) -> str:
    digest = hashlib.sha256()
    for suffix in ("inter", "item"):
        digest.update((work / "atomic" / DATASET / f"{DATASET}.{suffix}").read_bytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
