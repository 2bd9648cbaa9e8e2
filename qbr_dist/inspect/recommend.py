"""`qbr recommend`: the top-k next items for a user (their whole history) or a given history, from a
trained model's exported weights, each explained by the semantic codes it shares with the history.

An explanation cites, level by level, the recommended item's own code prefixes that some history
item also has (`3`, then `3-41`, ...), with the number of history items sharing it and the words
that characterise it (the code inspector's TF-IDF). Items kept out of training by a cold-item
split are marked cold: their scores come from their codes (with hybrid tokens, plus the mean ID
vector of the trained items sharing their longest code prefix). An ID-only model never trained their
vectors, so it recommends none of them and leaves them out of a history it reads.

Items added to the catalog after training join it from a `qbr retokenize` codes file (`new_items`, same
codebook): they may stand in the history and be recommended, scored from their codes as the cold items
are, with no retraining. They are marked new; their text is not in the run's catalog. An item of such a file that
the catalog (or an earlier file) already has keeps its first codes, those the model was trained with for a
catalog item; the output counts them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from qbr_dist.data.split import item_indexes
from qbr_dist.data.tables import repeated_values
from qbr_dist.inspect.codes import prefix_name, summarize_codes
from qbr_dist.inspect.tables import markdown_table
from qbr_dist.pipeline import COLD, ITEMS, SEQUENCES
from qbr_dist.quant import CODES
from qbr_dist.seqrec import TRAINED_MODELS
from qbr_dist.seqrec.bert4rec import PAD


def user_history(ingest: Path, user: str) -> list[int]:
    """A user's whole time-ordered history (item indexes); row groups whose user_id statistics rule the
    user out are not read."""
    found = pq.read_table(ingest / SEQUENCES, columns=["items"], filters=[("user_id", "==", user)])
    if not found.num_rows:
        raise ValueError(f"{ingest / SEQUENCES}: no user '{user}'")
    return found.column("items")[0].as_py()


def history_indexes(item_ids: pa.Array, wanted: list[str], catalog: str) -> list[int]:
    """Item index of each id of a given history (spaces around an id ignored); a one-line error names one that
    `catalog` (what `item_ids` hold, in words) lacks."""
    wanted = [item.strip() for item in wanted]
    if "" in wanted:
        raise ValueError("--history holds an empty item id (give ids separated by commas: i1,i2,...)")
    found = item_indexes(pa.array(wanted, pa.string()), item_ids)
    for item, index in zip(wanted, found):
        if index == 0:
            raise ValueError(f"no item '{item}' in {catalog}")
    return found.tolist()


def score_next(model, history: list[int]) -> torch.Tensor:
    """Scores of every item (index 1..N at 0..N-1) as the item after `history`."""
    recent = history[-(model.bert.config.max_position_embeddings - 1):] + [model.mask_token]
    seq = torch.full((1, model.bert.config.max_position_embeddings), PAD, dtype=torch.long)
    seq[0, -len(recent):] = torch.tensor(recent)
    with torch.no_grad():
        return model.score_items(model.encode(seq)[:, -1])[0]


def shared_prefixes(item_codes: np.ndarray, history_codes: np.ndarray) -> list[dict]:
    """The item's own level prefixes that history items also have, with how many do (suffix excluded)."""
    cited = []
    for level in range(item_codes.shape[0] - 1):
        same = (history_codes[:, : level + 1] == item_codes[: level + 1]).all(axis=1)
        if not same.any():
            break
        cited.append({"prefix": prefix_name(item_codes[: level + 1]), "history_items": int(same.sum())})
    return cited


class Recommender:
    """One run's trained model, catalog, codes and cold mask, loaded once for any number of histories."""

    def __init__(self, run: Path, stage: str = "qbert4rec", new_items: list[Path] = ()):
        from qbr_dist.seqrec.trained import load_trained

        require_trained(run, stage)
        self.run, self.stage, ingest = run, stage, run / "ingest"
        self.catalog = pq.read_table(ingest / ITEMS, columns=["item_id", "text"])
        self.ids = self.catalog.column("item_id").combine_chunks()
        self.model, spec = load_trained(run / stage, ingest / COLD)
        self.codes = self.model.tokens.codes.numpy() if spec["codes_file"] else None
        self.cold = np.load(ingest / COLD) if (ingest / COLD).is_file() else np.zeros(len(self.ids) + 1, bool)
        self.new = np.zeros(len(self.cold), bool)
        self.known = pa.array([], pa.string())  # --new-items ids the catalog or an earlier file has: kept as they were
        self.new_files: list[Path] = []
        self.catalog_words = f"the run's catalog ({ingest / ITEMS}; items added since training join with --new-items)"
        for path in new_items:
            self._add(Path(path), spec)

    def _add(self, path: Path, spec: dict) -> None:
        """The items of a `qbr retokenize` codes file that the catalog (and earlier --new-items) lacks join it, scored
        from their codes."""
        from qbr_dist.artifacts import MANIFEST, read_manifest
        from qbr_dist.quant.codes import read_codes
        from qbr_dist.seqrec.trained import with_new_items

        if self.codes is None:
            raise ValueError(f"--new-items {path}: {self.stage} is an ID-only model, it cannot score items it never "
                             "trained; use --model qbert4rec")
        if path.is_dir():  # the folder `qbr retokenize` prints will do, once that run finished
            if read_manifest(path) is None:
                raise ValueError(f"--new-items {path}: no finished `qbr retokenize` in this folder (no {MANIFEST}: "
                                 "its last run stopped before the end); run it again")
            path = path / CODES
        table = read_codes(path, expected_version=spec["codebook_version"])
        self.new_files.append(path)
        if not table.num_rows:
            raise ValueError(f"--new-items {path}: the codes file holds no items")
        codes = new_item_codes(path, table, self.codes.shape[1], spec["code_sizes"][:-1])
        fresh = pc.invert(pc.is_in(table.column("item_id"), value_set=self.ids))
        known = table.column("item_id").filter(pc.invert(fresh)).combine_chunks()
        self.known = pc.unique(pa.concat_arrays([self.known, known]))
        table, codes = table.filter(fresh), codes[fresh.to_numpy(zero_copy_only=False)]
        if not table.num_rows:
            raise ValueError(f"--new-items {path}: every item in it is already in the run's catalog or an earlier "
                             "--new-items file")
        self.model = with_new_items(self.model, spec, codes)
        self.codes = self.model.tokens.codes.numpy()
        self.ids = pa.concat_arrays([self.ids, table.column("item_id").combine_chunks()])
        self.cold = np.concatenate([self.cold, np.zeros(table.num_rows, bool)])
        self.new = np.concatenate([self.new, np.ones(table.num_rows, bool)])
        self.catalog_words = f"the run's catalog ({self.run / 'ingest' / ITEMS}) or the --new-items files"

    def history(self, user: str | None, history: list[str] | None) -> list[int]:
        past = user_history(self.run / "ingest", user) if user is not None else \
            history_indexes(self.ids, history or [], self.catalog_words)
        if not past:
            raise ValueError("recommend: give a user (--user) or a non-empty history (--history i1,i2,...)")
        return past

    def top(self, *, user: str | None = None, history: list[str] | None = None, k: int = 10) -> dict:
        """Top-k items after the history, each with the code prefixes it shares with it (no words yet)."""
        past = self.history(user, history)
        read, unscored, skipped = past, 0, []
        if self.codes is None:  # an ID-only model: the vectors of cold items were never trained
            read = [item for item in past if not self.cold[item]]
            skipped = [self.ids[item - 1].as_py() for item in past if self.cold[item]]
            if not read:
                raise ValueError(f"recommend: every history item is cold ({', '.join(skipped[:3])}), and {self.stage} "
                                 "is an ID-only model that never trained them; use --model qbert4rec")
            unscored = int(self.cold[1:].sum())
        scores = score_next(self.model, read)
        scores[torch.tensor(past) - 1] = float("-inf")
        if self.codes is None:
            scores[torch.from_numpy(self.cold[1:].astype(bool))] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices.add(1).tolist()
        items = []
        for item in top:
            entry = {"item_id": self.ids[item - 1].as_py(), "score": round(float(scores[item - 1]), 4),
                     "cold": bool(self.cold[item]), "new": bool(self.new[item]), "text": self._text(item)}
            if self.codes is not None:
                entry |= {"codes": self.codes[item].tolist(), "shared": shared_prefixes(self.codes[item],
                                                                                        self.codes[past])}
            items.append(entry)
        return {"stage": self.stage, "user": user, "history": [self.ids[i - 1].as_py() for i in past], "k": k,
                "items": items, "cold_left_out": unscored, "history_left_out": skipped,
                "new_items": int(self.new.sum()), "new_items_known": len(self.known),
                "new_items_files": [str(path) for path in self.new_files]}

    def _text(self, item: int) -> str | None:
        return self.catalog.column("text")[item - 1].as_py() if item <= self.catalog.num_rows else None


def new_item_codes(path: Path, table: pa.Table, width: int, level_sizes: list[int]) -> np.ndarray:
    """The (items, width) codes of a codes table's rows, refused in one line naming `path` where a row has no item id
    or no codes, an id repeats, or codes of another count or past a level's codebook (a file joined by hand can; one
    `qbr retokenize` wrote cannot)."""
    ids, codes = table.column("item_id"), table.column("codes").combine_chunks()
    repeated = repeated_values(ids).field("values")
    if ids.null_count or pc.any(pc.equal(ids, "")).as_py():
        problem = "field 'item_id' is empty in some row"
    elif len(repeated):
        problem = f"field 'item_id' repeats '{repeated[0]}'; every item must appear once"
    elif codes.null_count:
        problem = "field 'codes' is empty in some row"
    elif pc.any(pc.not_equal(pc.list_value_length(codes), width)).as_py():
        problem = f"field 'codes' holds lists of another length than {width} (the model's levels and suffix)"
    else:
        matrix = np.asarray(codes.flatten()).reshape(-1, width)
        if not ((matrix < 0).any() or (matrix[:, :-1] >= np.asarray(level_sizes)).any()):
            return matrix
        problem = f"field 'codes' holds a code outside its level's codebook (sizes {level_sizes})"
    raise ValueError(f"--new-items {path}: {problem}")


def require_trained(run: Path, stage: str) -> None:
    """A one-line error for a run without the finished training stage, naming the model it has instead."""
    from qbr_dist.artifacts import read_manifest

    if read_manifest(run / stage) is None:
        others = [name for name in TRAINED_MODELS if name != stage and read_manifest(run / name)]
        raise FileNotFoundError(f"{run}: no finished {stage} stage; " + (
            f"--model {others[0]} names the one it has" if others else "run `qbr run` with this config first"))


def cited_prefixes(found: list[dict]) -> frozenset[str]:
    return frozenset(c["prefix"] for f in found for item in f["items"] for c in item.get("shared", []))


def describe_codes(found: list[dict], summary: dict) -> None:
    """Adds to each cited prefix its characteristic words from a code summary that covers it."""
    codes = [c for level in summary["levels"] for c in level["codes"]] + summary.get("also", [])
    meaning = {code["prefix"]: [w for w, _ in code["words"]] for code in codes}
    for cited in (c for f in found for item in f["items"] for c in item.get("shared", [])):
        cited["words"] = meaning.get(cited["prefix"], [])


def recommend(run: Path, *, stage: str = "qbert4rec", user: str | None = None, history: list[str] | None = None,
              k: int = 10, words: int = 5, new_items: list[Path] = ()) -> dict:
    """Top-k items after a user's history or a given one, explained (see the module docstring)."""
    from qbr_dist.inspect.run import run_codes

    found = Recommender(run, stage, new_items).top(user=user, history=history, k=k)
    if cited := cited_prefixes([found]):
        describe_codes([found], summarize_codes(run_codes(run), run / "ingest" / ITEMS, levels=0, also=cited,
                                                top=words, examples=0, work=run))
    return found


def recommend_title(found: dict) -> str:
    who = f"user {found['user']}'s" if found["user"] is not None else "the given"
    notes = [f"{count(found['new_items'], 'new item')} from --new-items in the catalog"] if found["new_items"] else []
    if found.get("new_items_known"):
        notes.append(f"{count(found['new_items_known'], 'item')} of --new-items already known (the run's catalog or an "
                     "earlier file): their first codes kept")
    if found["cold_left_out"]:
        notes.append(f"{count(found['cold_left_out'], 'cold item')} left out: an ID-only model cannot score them")
    if skipped := found["history_left_out"]:
        notes.append(f"{count(len(skipped), 'cold history item')} not read, as it has no trained vector: "
                     + ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    return (f"Top {len(found['items'])} from {found['stage']} after {who} history of "
            f"{count(len(found['history']), 'item')}" + (f" ({'; '.join(notes)})" if notes else ""))


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def recommend_table(found: dict) -> tuple[list[str], list[list[str]]]:
    """An ID-only model's items have no codes: their table has no column for them."""
    coded = any("codes" in item for item in found["items"])
    header = ["#", "item", "score", *["codes shared with the history (items; words)"] * coded, "text"]
    rows = []
    for rank, item in enumerate(found["items"], start=1):
        shared = "; ".join(f"{c['prefix']} ({c['history_items']}; {' '.join(c.get('words', []))})"
                           for c in item.get("shared", [])) or "none"
        mark = " (cold)" if item["cold"] else " (new)" if item.get("new") else ""
        rows.append([str(rank), item["item_id"] + mark, str(item["score"]), *[shared] * coded,
                     (item["text"] or "")[:60]])
    return header, rows


def recommend_markdown(found: dict) -> str:
    return "\n".join([recommend_title(found), "", *markdown_table(*recommend_table(found))])
