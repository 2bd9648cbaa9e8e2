"""`qbr inspect codes`: what each semantic code stands for.

For every code prefix of the first `levels` levels (`3` at level 0, `3-41` at level 1): how many
items carry it, its most characteristic words, its most frequent values of the catalog's
structured fields (category, brand, genres), and a few example items. A word's score in a code
is TF-IDF with items as documents: the share of the code's items whose text has the word, times
log(catalog items / catalog items with the word).

Scale: both files are streamed. The codes and the catalog are first spread over hash buckets of
the item id on disk (a temporary folder), then joined a bucket at a time, so what stays in memory is
one bucket's codes and one word counter per code prefix summarised (`levels` = 1, the default,
stays small at any size). `items_under` streams the codes file in one pass.
"""
from __future__ import annotations

import itertools
import math
import tempfile
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qbr_dist.data.buckets import BucketFiles, id_buckets
from qbr_dist.data.tables import column_matrix
from qbr_dist.inspect.tables import markdown_table

STOPWORDS = frozenset(
    "the and for with from that this are was were has have had not but its into than then them they their "
    "you your our out all any can will one two new".split()
)


def words(text: str | None) -> set[str]:
    """The distinct words of a text: runs of letters, combining marks, digits and apostrophes (any script, composed
    as NFC, so a decomposed 'ä' stays one word), of 3+ characters, starting with a letter, in lower case; common
    English words left out."""
    text = unicodedata.normalize("NFC", text or "").lower()
    runs = ("".join(chars) for in_word, chars in itertools.groupby(text, _in_word) if in_word)
    return {w for w in runs if len(w) >= 3 and unicodedata.category(w[0])[0] == "L" and w not in STOPWORDS}


def _in_word(char: str) -> bool:
    return char == "'" or unicodedata.category(char)[0] in "LMN"


def prefix_name(codes) -> str:
    return "-".join(str(int(c)) for c in codes)


def parse_prefix(text: str) -> tuple[int, ...]:
    """`3-41` -> (3, 41); a one-line error for anything else."""
    try:
        parts = tuple(int(p) for p in text.split("-"))
    except ValueError:
        raise ValueError(f"code prefix {text!r}: expected codes joined by '-', e.g. 3-41") from None
    if not parts or min(parts) < 0:
        raise ValueError(f"code prefix {text!r}: expected non-negative codes joined by '-', e.g. 3-41")
    return parts


class CodeLookup:
    """Each item's codes by item id: a (bucket of the) codes file's two columns as arrays, not Python objects."""

    def __init__(self, table: pa.Table | None):
        table = table if table is not None else pa.table({"item_id": pa.array([], pa.string()),
                                                          "codes": pa.array([], pa.list_(pa.int32()))})
        self.ids = table.column("item_id").combine_chunks()
        self.codes = column_matrix(table.column("codes"), np.int32)

    def rows(self, item_ids: pa.Array) -> np.ndarray:
        """Row of each id in the codes, -1 where an item has none."""
        return pc.index_in(item_ids, value_set=self.ids).fill_null(-1).to_numpy()


class CodeSummary:
    """Counts per code prefix, filled batch by batch; `result` turns them into the report."""

    def __init__(self, levels: int, fields: list[str], examples: int, separator: str = "",
                 also: frozenset[str] = frozenset()):
        self.levels, self.fields, self.max_examples, self.separator = levels, fields, examples, separator
        self.also, self.depth = also, max([levels, *(p.count("-") + 1 for p in also)])
        self.items: Counter = Counter()
        self.word_items: dict[str, Counter] = defaultdict(Counter)
        self.field_values: dict[tuple[str, str], Counter] = defaultdict(Counter)
        self.examples: dict[str, list] = defaultdict(list)
        self.document_frequency: Counter = Counter()
        self.catalog_items = self.without_codes = 0

    def add(self, item_id: str, text: str | None, fields: dict, codes: np.ndarray | None) -> None:
        found = words(text)
        self.catalog_items += 1
        self.document_frequency.update(found)
        if codes is None:
            self.without_codes += 1
            return
        for level in range(min(self.depth, len(codes))):
            prefix = prefix_name(codes[: level + 1])
            if level >= self.levels and prefix not in self.also:
                continue
            self.items[prefix] += 1
            self.word_items[prefix].update(found)
            for field in self.fields:
                self.field_values[prefix, field].update(self._values(fields.get(field)))
            if len(self.examples[prefix]) < self.max_examples:
                self.examples[prefix].append({"item_id": item_id, "text": (text or "")[:80]})

    def _values(self, value: str | None) -> list[str]:
        """A field's values: one, or several split on the separator (genres "Action Comedy")."""
        if not value:
            return []
        return [v for v in value.split(self.separator) if v] if self.separator else [value]

    def result(self, top: int) -> dict:
        levels = []
        for level in range(self.levels):
            prefixes = sorted((p for p in self.items if p.count("-") == level), key=parse_prefix)
            levels.append({
                "level": level,
                "codes": [self._code(p, top) for p in prefixes],
                "purity": {field: self._purity(prefixes, field) for field in self.fields},
            })
        also = [self._code(p, top) for p in sorted(self.also, key=parse_prefix) if p in self.items]
        return {"catalog_items": self.catalog_items, "items_without_codes": self.without_codes, "levels": levels,
                "also": also}

    def _code(self, prefix: str, top: int) -> dict:
        n = self.items[prefix]
        scores = {w: c / n * math.log(self.catalog_items / self.document_frequency[w])
                  for w, c in self.word_items[prefix].items()}
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return {
            "prefix": prefix, "items": n, "words": [[w, round(s, 4)] for w, s in best],
            "fields": {f: self.field_values[prefix, f].most_common(3) for f in self.fields},
            "examples": self.examples[prefix],
        }

    def _purity(self, prefixes: list[str], field: str) -> float | None:
        """Share of the level's items whose field value is their code's most common one."""
        counted = [self.field_values[p, field] for p in prefixes]
        total = sum(sum(c.values()) for c in counted)
        return round(sum(max(c.values(), default=0) for c in counted) / total, 4) if total else None


def summarize_codes(codes_file: Path, catalog_file: Path, *, levels: int = 1, fields: list[str] = (),
                    separator: str = "", top: int = 8, examples: int = 3, also: frozenset[str] = frozenset(),
                    batch_rows: int = 65_536, bucket_rows: int = 1_000_000, work: Path | None = None) -> dict:
    """The report of every code prefix of the first `levels` levels, and of the deeper prefixes in `also`
    (see the module docstring); `fields` missing from the catalog are left out. The buckets hold about
    `bucket_rows` codes each and live in a temporary folder under `work` (the system's by default)."""
    present = set(pq.read_schema(catalog_file).names)
    fields = [f for f in fields if f in present]
    summary = CodeSummary(levels, fields, examples, separator, also)
    columns = ["item_id", "text", *fields]
    buckets = max(1, -(-pq.ParquetFile(codes_file).metadata.num_rows // bucket_rows))
    with tempfile.TemporaryDirectory(dir=work, prefix="inspect-") as folder:
        codes = _by_item_bucket(codes_file, ["item_id", "codes"], Path(folder) / "codes", buckets, batch_rows)
        catalog = _by_item_bucket(catalog_file, columns, Path(folder) / "catalog", buckets, batch_rows)
        for bucket in range(buckets):
            if not catalog.path(bucket).is_file():
                continue
            lookup = CodeLookup(codes.read(bucket))
            for batch in pq.ParquetFile(catalog.path(bucket)).iter_batches(batch_size=batch_rows):
                rows = lookup.rows(batch.column("item_id"))
                values = {name: batch.column(name).cast(pa.string()).to_pylist() for name in columns}
                for i, row in enumerate(rows):
                    summary.add(values["item_id"][i], values["text"][i], {f: values[f][i] for f in fields},
                                lookup.codes[row] if row >= 0 else None)
    return summary.result(top) | {"codes_file": str(codes_file), "fields": fields}


def _by_item_bucket(path: Path, columns: list[str], folder: Path, buckets: int, batch_rows: int) -> BucketFiles:
    """`columns` of a parquet file spread over `buckets` files by item id, streamed."""
    with BucketFiles(folder, buckets) as spread:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
            spread.add(pa.Table.from_batches([batch]), id_buckets(batch.column("item_id"), buckets))
    return spread


def items_under(codes_file: Path, catalog_file: Path, prefix: tuple[int, ...], *, limit: int = 50,
                batch_rows: int = 65_536) -> dict:
    """How many items carry `prefix`, the first `limit` of them with their text, and the largest code of each of the
    prefix's levels (what a prefix no item carries is beyond); streams both files."""
    matched, count, largest = [], 0, np.full(len(prefix), -1)
    for batch in pq.ParquetFile(codes_file).iter_batches(batch_size=batch_rows, columns=["item_id", "codes"]):
        codes = column_matrix(batch.column("codes"), np.int32)
        if codes.shape[1] < len(prefix):
            raise ValueError(f"code prefix {prefix_name(prefix)}: longer than the {codes.shape[1]} codes per item")
        largest = np.maximum(largest, codes[:, : len(prefix)].max(axis=0, initial=-1))
        hits = np.flatnonzero((codes[:, : len(prefix)] == np.asarray(prefix)).all(axis=1))
        count += len(hits)
        for i in hits[: max(limit - len(matched), 0)]:
            matched.append({"item_id": batch.column("item_id")[int(i)].as_py(), "codes": codes[i].tolist()})
    wanted = pa.array([m["item_id"] for m in matched], pa.string())
    text = {}
    for batch in pq.ParquetFile(catalog_file).iter_batches(batch_size=batch_rows, columns=["item_id", "text"]):
        keep = pc.is_in(batch.column("item_id"), value_set=wanted)
        for row in batch.filter(keep).to_pylist():
            text[row["item_id"]] = row["text"]
    return {"prefix": prefix_name(prefix), "items": count, "largest": largest.tolist(),
            "shown": [m | {"text": text.get(m["item_id"])} for m in matched]}


def prefix_title(found: dict) -> str:
    """What `items_under` found, in one line; for a prefix no item carries, the level whose code is out of range."""
    title = f"{found['items']} items under code prefix {found['prefix']}"
    if found["largest"][0] < 0:
        return f"{title}: the codes file holds no items"
    beyond = [(level, code, top) for level, (code, top) in enumerate(zip(parse_prefix(found["prefix"]),
                                                                         found["largest"])) if code > top]
    if beyond:
        level, code, top = beyond[0]
        return f"{title}: level {level}'s codes run from 0 to {top}, not to {code}"
    return f"{title} (showing {len(found['shown'])})"


def code_table(summary: dict, level: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one level: code, items, top words, top field values, one example."""
    header = ["code", "items", "words", *summary["fields"], "example"]
    rows = [[code["prefix"], str(code["items"]), " ".join(w for w, _ in code["words"]),
             *(", ".join(f"{v} ({n})" for v, n in code["fields"][f]) for f in summary["fields"]),
             code["examples"][0]["text"] if code["examples"] else ""] for code in level["codes"]]
    return header, rows


def level_title(level: dict) -> str:
    purity = ", ".join(f"{f} {p:.2f}" for f, p in level["purity"].items() if p is not None)
    return f"Level {level['level']}" + (f" (purity: {purity})" if purity else "")


def codes_markdown(summary: dict) -> str:
    lines = []
    for level in summary["levels"]:
        lines += [f"## {level_title(level)}", "", *markdown_table(*code_table(summary, level)), ""]
    return "\n".join(lines)
