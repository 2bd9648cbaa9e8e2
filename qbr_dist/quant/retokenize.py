"""`qbr retokenize`: give every item of a (possibly multi-million-row) feature table its codes.

A Ray Data job streams the table through a pool of actors that each fetch the tokenizer (the
codebook file's tensors) once from the object store and quantize batch by batch. With
quant.input = 'fused' the table holds item features (the encode table format); the job first
left-joins them by item id with the trained ID vectors from the fusion stage's parquet (nothing
catalog-sized is broadcast) and the actors run the exported fusion model, so a brand-new item
gets its query from the content head. An actor leaves out the rows it cannot code (no item id, a
bad vector: `usable_rows`), writes the others to one staging parquet file per call (`item_id,
codes` and two bucket numbers, a fixed hash of the code tuple and one of the item id; none when
no row was left) and returns a receipt naming it and the rows left out, which the driver lists
in the quarantine; the driver counts items from the receipts as they stream in (so
`qbr_retokenized_items_total` is exact and live however briefly the actors live; it counts the rows
of a repeated item id too, which the driver later quarantines) and stages only
receipted files (a call cut short by a killed actor leaves at most an unlisted file, and Ray Data
runs it again). The driver then streams the staged rows into one file per bucket of item ids,
where the rows of a repeated item id meet: all of them go to the quarantine (which one is meant
is unknown), bucket by bucket. The other rows, and the earlier codes files made with the same
codebook (whose suffixes are kept: suffixes are only ever appended), go to one file per bucket of
code tuples, worked a bucket at a time: items that share a code tuple share a bucket, so each
bucket gets its suffixes alone. The codes
file's schema records the suffix table size, so the suffixed buckets go to temporary files
first and are then appended to `codes.parquet`. Memory is one batch per actor and about
`bucket_rows` rows on the driver, whatever the catalog size.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qbr_dist.data.actor_pools import batch_blocks
from qbr_dist.data.buckets import BucketFiles, id_buckets, mix64
from qbr_dist.data.quarantine import DataError, Quarantine
from qbr_dist.data.tables import column_matrix, matrix_column, repeated_values
from qbr_dist.fusion.export import ID_VECTOR, VECTOR_COLUMNS, fuse_batch, input_widths, load_model
from qbr_dist.fusion.features import TOKENS_COLUMN, bad_vectors, empty_as_null, fixed_width
from qbr_dist.obs.metrics import retokenized_items
from qbr_dist.obs.serve import Endpoint
from qbr_dist.quant import CODES
from qbr_dist.quant.codes import codes_version, codes_writer
from qbr_dist.quant.semantic_ids import Previous, assign_suffixes, code_changes, shared_items
from qbr_dist.quant.tokenizer import Tokenizer
from qbr_dist.quant.worker import row_count

STREAM_ROWS = 65_536  # rows per batch when the driver streams a parquet file into buckets
STAGED_FLAGS = {"content_query": "content_queries", "contentless": "contentless"}  # staged column: its count
SHOWN = 5  # ids of the items new to the trained codes, and of those given other codes, named in the summary


@dataclass
class FusionInputs:
    """What fusing the feature table first needs (quant.input = 'fused'): the exported fusion model,
    the fused parquet files (their trained ID vectors, joined by item id) and the run's structure
    table (field tokens and co-occurrence vectors, joined when the feature table lacks them)."""
    model: Path
    id_vectors: list[Path]
    structure: Path | None = None


class Retokenizer:
    """Ray Data actor: quantizes batches with a tokenizer from the object store, after fusing the
    batch's features when given the fusion model; writes each batch to `folder` and returns its receipt."""

    def __init__(self, tokenizer: list, column: str, chunk_size: int, buckets: int, fusion_model: str | None,
                 folder: str, code_contentless: bool = False):
        import ray
        import torch

        torch.set_num_threads(1)
        self.tokenizer = Tokenizer.from_parts(ray.get(tokenizer[0]))  # fetched once per actor
        self.column, self.chunk_size, self.buckets, self.folder = column, chunk_size, buckets, Path(folder)
        self.fusion = load_model(Path(fusion_model)) if fusion_model else None
        self.widths = input_widths(self.fusion[0]) if self.fusion else {column: self.tokenizer.input_width}
        self.vocab = self.fusion[0].token_bag.num_embeddings if self.fusion else None
        self.actor = uuid.uuid4().hex  # names this actor in its receipts: the summary counts the actors that worked
        self.code_contentless = code_contentless

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        keep, quarantined = usable_rows(batch, self.widths, vector_required=self.fusion is None, vocab=self.vocab)
        batch, name = batch.filter(pa.array(keep)), None
        if batch.num_rows:
            vectors, trained_id, content = self._vectors(batch)
            if not (self.code_contentless or content.all()):
                quarantined += [{"item_id": str(item), "field": FUSION_CONTENT, "reason": NO_CONTENT}
                                for item in batch.column("item_id").filter(pa.array(~content)).to_pylist()]
                batch, vectors, trained_id, content = (batch.filter(pa.array(content)), vectors[content],
                                                       trained_id[content], content[content])
        if batch.num_rows:
            codes = self.tokenizer.codes(torch.from_numpy(vectors), chunk_size=self.chunk_size).numpy()
            table = pa.table({"item_id": batch.column("item_id"), "codes": matrix_column(codes.astype(np.int32)),
                              "content_query": ~trained_id, "contentless": ~content})
            name = f"{uuid.uuid4().hex}.parquet"
            pq.write_table(with_buckets(table, self.buckets), self.folder / name)
        return pa.table({"file": pa.array([name], pa.string()), "rows": [batch.num_rows], "actor": [self.actor],
                         "quarantined": pa.array([quarantined], QUARANTINED)})

    def _vectors(self, batch: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors to quantize, whether each item's query was its trained ID vector, whether it had any content)."""
        if self.fusion is not None:
            model, max_tokens = self.fusion
            return fuse_batch(model, batch, max_tokens)
        values = fixed_width(batch.column(self.column).combine_chunks(), self.column, self.widths[self.column])
        return column_matrix(values), np.ones(batch.num_rows, bool), np.ones(batch.num_rows, bool)


# A fused row with none of what fusion reads gets the codes of a constant vector, the same for every such row: a new
# item is quarantined instead; a catalog item (a cold one) is coded all the same, as the model needs every item's codes.
FUSION_CONTENT = ", ".join([*VECTOR_COLUMNS.values(), TOKENS_COLUMN, ID_VECTOR])
NO_CONTENT = "no content: no trained ID vector, no vector of any modality and no structure token"
QUARANTINED = pa.list_(pa.struct([("item_id", pa.string()), ("field", pa.string()), ("reason", pa.string())]))


def usable_rows(batch: pa.Table, widths: dict[str, int], *, vector_required: bool,
                vocab: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Which rows of a feature batch can be coded, and a quarantine record for each that cannot: a row without an
    item id, or with a vector of `widths` ({column: width}) of another length or holding a null, NaN or infinite
    value; with `vector_required`, also a row without the vector (else a missing modality, which fusion takes);
    with the fusion model's `vocab` (structure tokens 0 .. vocab - 1), a row holding another structure token."""
    ids = batch.column("item_id").to_pylist()
    problems = {row: ("item_id", "no item id") for row, item_id in enumerate(ids) if item_id in (None, "")}
    if vocab is not None and TOKENS_COLUMN in batch.column_names:
        outside = f"a structure token outside the run's vocabulary (0 to {vocab - 1}, structure/structure_vocab.json)"
        for row in _rows_with_tokens_outside(batch.column(TOKENS_COLUMN), vocab):
            problems.setdefault(row, (TOKENS_COLUMN, outside))
    for column in (c for c in widths if c in batch.column_names):
        values = empty_as_null(batch.column(column).combine_chunks())
        found = bad_vectors(values, widths[column])
        if vector_required:
            found |= {int(row): "no vector" for row in np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))}
        for row, reason in found.items():
            problems.setdefault(row, (column, reason))
    keep = np.ones(batch.num_rows, bool)
    keep[list(problems)] = False
    return keep, [{"item_id": None if ids[row] is None else str(ids[row]), "field": field, "reason": reason}
                  for row, (field, reason) in sorted(problems.items())]


def _rows_with_tokens_outside(tokens: pa.ChunkedArray, vocab: int) -> list[int]:
    """Rows of a list column of structure tokens holding a null token or one outside 0 .. vocab - 1."""
    tokens = tokens.combine_chunks()
    flat = pc.list_flatten(tokens)
    outside = pc.fill_null(pc.or_(pc.less(flat, 0), pc.greater_equal(flat, vocab)), True)
    return np.unique(pc.list_parent_indices(tokens).to_numpy(zero_copy_only=False)[
        outside.to_numpy(zero_copy_only=False)]).tolist()


def check_feature_files(files: list[Path], vectors: dict[str, int], *, any_of: bool = False) -> None:
    """Refuse, before any actor starts, a feature file that is not parquet, or lacks `item_id` or the vector columns
    the run's tokenizer was fit on (`vectors`: {column: width}; with `any_of`, as fusion takes them, at least one),
    or holds something else in one, or item ids that are not text (they are joined with the run's text ids): one
    line naming the file. Without any, every new item would get the same codes, from no content. Single bad
    vectors are the stream's to quarantine (`usable_rows`). A table of no rows at all is refused too."""
    rows = 0
    for path in files:
        try:
            metadata = pq.read_metadata(path)
            schema, rows = metadata.schema.to_arrow_schema(), rows + metadata.num_rows
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{path}: not a parquet feature table ({error})") from None
        id_type = schema.field("item_id").type if "item_id" in schema.names else pa.string()
        if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
            raise ValueError(f"{path}: column 'item_id' is {id_type}; expected item ids as text (string), as the "
                             "run's catalog has them")
        missing = [column for column in vectors if column not in schema.names]
        wanted = ["item_id"] if "item_id" not in schema.names else \
            missing if missing and (len(missing) == len(vectors) or not any_of) else []
        if wanted:
            raise ValueError(f"{path}: no column {', '.join(map(repr, wanted))} (a feature table has item_id and "
                             f"{'one' if any_of else 'each'} of the vectors the run's tokenizer was fit on: "
                             f"{', '.join(vectors) or 'none'}; found {', '.join(schema.names)})")
        for column, width in ((c, w) for c, w in vectors.items() if c in schema.names):
            kind = schema.field(column).type
            listed = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            if not listed or not pa.types.is_floating(kind.value_type) or not _width_seen(path, column, kind, width):
                shown = f"{kind}: every value null (how pandas writes NaN)" if listed and pa.types.is_null(
                    kind.value_type) else kind
                raise ValueError(f"{path}: column '{column}' is {shown}; expected vectors of {width} floats each "
                                 "(the width the run's tokenizer was fit on)")
    if files and not rows:
        raise ValueError(f"{_source(files)}: a feature table of no rows (expected item_id and vectors, a row per item)")


SAMPLED_VECTORS = 1024  # plain-list rows read on the driver to tell a table of another width from a few bad rows


def _width_seen(path: Path, column: str, kind: pa.DataType, width: int) -> bool:
    """Whether the column can hold vectors of `width`: a fixed-size list's by its schema; plain lists unless no
    vector in the first rows has it (a table of another width is refused at once, a few bad rows are quarantined)."""
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size == width
    first = next(pq.ParquetFile(path).iter_batches(batch_size=SAMPLED_VECTORS, columns=[column]), None)
    lengths = set(pc.list_value_length(first.column(0)).drop_null().to_pylist()) if first is not None else set()
    return not lengths or width in lengths


def retokenize(files: list[Path], column: str, codebooks_file: Path, out_dir: Path, *, previous: list[Path],
               quarantine: Quarantine, fusion: FusionInputs | None = None, batch_size: int = 4096, actors: int = 1,
               cpus_per_actor: float = 0.5, chunk_size: int = 65536, bucket_rows: int = 250_000,
               metrics: Endpoint | None = None, stage: str = "retokenize", code_contentless: bool = False,
               trained: list[Path] = ()) -> dict:
    """Write `out_dir/codes.parquet` for every usable row of `files` (their `column`, or their features
    through `fusion`), keeping the suffixes of the `previous` codes files made with the same codebook (the
    first file's where they differ), and list every other row in `quarantine`; returns counts and throughput,
    with the items new to the `trained` codes files (those the run's models were trained with) and those they
    coded otherwise.
    A fused row with no content at all is one of those, unless `code_contentless` (the run's own catalog, whose
    every item needs codes: counted as `contentless`). Items are counted for `metrics.run` and `stage` as they
    are coded."""
    tokenizer = Tokenizer.parts(codebooks_file)
    version = tokenizer["version"]
    started = time.perf_counter()
    staging = Path(out_dir) / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    if fusion is None and column not in pq.read_schema(files[0]).names:
        raise ValueError(f"{files[0]}: no column '{column}' (quant.input) to retokenize")
    buckets = max(1, -(-row_count(files) // bucket_rows))
    quarantined_before = quarantine.total
    try:
        staged, counted = _encode(files, column, tokenizer, staging / "encoded", fusion=fusion, buckets=buckets,
                                  batch_size=batch_size, actors=actors, cpus_per_actor=cpus_per_actor,
                                  chunk_size=chunk_size, run=metrics.run if metrics else "", stage=stage,
                                  quarantine=quarantine, code_contentless=code_contentless)
        quarantined = quarantine.total - quarantined_before
        if not staged and quarantined:
            raise DataError(f"{_source(files)}: all {quarantined} rows were quarantined, none could be coded "
                            f"(reasons: {dict(quarantine.counts)}; listed in {quarantine.path})")
        encoded_s = time.perf_counter() - started
        counts = assign_in_buckets(staged, _same_codebook(previous, version), Path(out_dir) / CODES, version,
                                   buckets, work=staging, source=_source(files), quarantine=quarantine,
                                   trained=_same_codebook(trained, version))
    finally:  # a run begins with none, so nothing half-made is left behind
        shutil.rmtree(staging, ignore_errors=True)
    counts |= counted | {"quarantined": quarantine.total - quarantined_before}
    seconds = time.perf_counter() - started
    return counts | {"codebook_version": version, "encode_seconds": round(encoded_s, 2), "seconds": round(seconds, 2),
                     "items_per_s": round(counts["items"] / max(seconds, 1e-9), 1), "buckets": buckets}


def _encode(files: list[Path], column: str, tokenizer: dict, folder: Path, *, fusion: FusionInputs | None,
            buckets: int, batch_size: int, actors: int, cpus_per_actor: float, chunk_size: int,
            run: str, stage: str, quarantine: Quarantine, code_contentless: bool) -> tuple[list[Path], dict]:
    """The Ray Data job: staging parquet of item ids, codes, whether each took the content-predicted query or was
    coded without content, and bucket numbers in `folder`; returns the files its receipts name, sorted, and the
    count of actors that coded a batch; having counted the items for `run` and `stage` and listed the rows the
    actors left out in `quarantine`."""
    import ray
    import ray.data

    folder.mkdir(parents=True, exist_ok=True)
    reference = ray.put(tokenizer)
    dataset = _read(files, [column]) if fusion is None else _fusion_inputs(files, fusion, partitions=buckets)
    receipts = batch_blocks(dataset, batch_size).map_batches(
        Retokenizer, fn_constructor_kwargs={
            "tokenizer": [reference], "column": column, "chunk_size": chunk_size, "buckets": buckets,
            "fusion_model": str(Path(fusion.model).resolve()) if fusion else None, "folder": str(folder.resolve()),
            "code_contentless": code_contentless},
        batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor)
    coded = retokenized_items.labels(stage=stage, run=run)
    staged, busy, source = [], set(), _source(files)
    for receipt in receipts.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = pc.sum(receipt.column("rows")).as_py() or 0
        coded.inc(rows)
        staged += [folder / name for name in receipt.column("file").drop_null().to_pylist()]
        busy.update(receipt.column("actor").to_pylist())
        records = [record for batch in receipt.column("quarantined").to_pylist() for record in batch]
        quarantine.read += rows + len(records)
        for record in records:
            where = f"item {record['item_id']!r}" if record["item_id"] is not None else "a row without item id"
            quarantine.add(source=source, where=where, field=record["field"], reason=record["reason"])
    return sorted(staged), {"actors_busy": len(busy)}


def _read(files: list[Path], columns: list[str]):
    """`item_id` and those of `columns` the files have, as a Ray dataset."""
    import ray.data

    present = set(pq.read_schema(files[0]).names)
    wanted = ["item_id"] + [c for c in columns if c in present and c != "item_id"]
    return ray.data.read_parquet([str(Path(f).resolve()) for f in files]).select_columns(wanted)


STRUCTURE_PARTS = ([TOKENS_COLUMN], [VECTOR_COLUMNS["cooc"], "has_cooc"])  # each joined from the structure table as one


def _fusion_inputs(files: list[Path], fusion: FusionInputs, *, partitions: int):
    """The feature table left-joined by item id with the trained ID vectors, and with each part of the structure
    table's features (field tokens; co-occurrence vectors) that the table lacks: a table that brings its new
    items' tokens still takes the catalog items' co-occurrence vectors from the run."""
    features = _read(files, [*VECTOR_COLUMNS.values(), "has_image", "has_cooc", TOKENS_COLUMN])
    joined = features.join(_read(fusion.id_vectors, [ID_VECTOR]), join_type="left_outer",
                           num_partitions=partitions, on=("item_id",))
    present = set(pq.read_schema(files[0]).names)
    lacking = [column for part in STRUCTURE_PARTS if part[0] not in present for column in part if column not in present]
    if fusion.structure is not None and lacking:
        joined = joined.join(_read([fusion.structure], lacking), join_type="left_outer", num_partitions=partitions,
                             on=("item_id",))
    return joined


def assign_in_buckets(staged: list[Path], previous: list[Path], path: Path, version: str, buckets: int, *,
                      work: Path, source: str, quarantine: Quarantine, trained: list[Path] = ()) -> dict:
    """Suffixes for the staged rows (`with_buckets` columns and `STAGED_FLAGS`), a bucket at a time, into the codes
    file at `path`. Every row of an item id the table repeats goes to `quarantine` instead: which of them is meant
    is unknown; the flags are counted over the other rows.
    The rows go to buckets of item ids first, where each id's rows meet, so repeated ids are found and left out
    one bucket at a time, as are the items new to the `trained` codes and those they code otherwise (`new_items`,
    `recoded`, a few of each named), and then, by their codes, to the buckets suffixes are given in."""
    ids, items, earlier, known, suffixed = (BucketFiles(work / name, buckets) for name in (
        "ids", "items", "previous", "trained", "suffixed"))
    with earlier, known:  # a file in both lists (the run's codes) is read once
        for codes_file in dict.fromkeys([*previous, *trained]):
            for batch in _batches([codes_file], ["item_id", "codes"]):
                if codes_file in previous:
                    earlier.add(batch, code_buckets(column_matrix(batch.column("codes"), np.int64)[:, :-1], buckets))
                if codes_file in trained:
                    known.add(batch, id_buckets(batch.column("item_id"), buckets))
    with ids:
        for batch in _batches(staged, ["item_id", "codes", "bucket", "id_bucket", *STAGED_FLAGS]):
            ids.add(batch.drop_columns(["id_bucket"]), batch.column("id_bucket").to_numpy())
    rows = repeated = 0
    flagged = dict.fromkeys(STAGED_FLAGS.values(), 0)
    changes = {"new_items": 0, "new_items_shown": [], "recoded": 0, "recoded_shown": []}
    with items:
        for bucket, table in ids.tables():
            rows += table.num_rows
            table, counts = _without_repeated_ids(table)
            repeated += _quarantine_repeated(counts, quarantine, source)
            for flag, counted in STAGED_FLAGS.items():
                flagged[counted] += int(table.column(flag).to_numpy().sum())
            found = code_changes(table.column("item_id"), column_matrix(table.column("codes"), np.int64),
                                 _previous(known.read(bucket)))
            for name, which in zip(("new_items", "recoded"), found):
                changes[name] += int(which.sum())
                changes[f"{name}_shown"] = _first_ids(changes[f"{name}_shown"],
                                                      table.column("item_id").filter(pa.array(which)))
            items.add(table.select(["item_id", "codes"]), table.column("bucket").to_numpy())
    if rows and repeated == rows:
        listed = f"; listed in {quarantine.path}" if quarantine.path else ""
        raise DataError(f"{source}: every codable row ({rows}) repeats an item id; every item must appear "
                        f"once{listed}")
    counts = _suffix_buckets(items, earlier, suffixed) | flagged | changes
    with codes_writer(path, version, counts["suffix_table_size"]) as write:
        for _, table in suffixed.tables():
            write(table.column("item_id"), column_matrix(table.column("codes"), np.int64),
                  table.column("suffix").to_numpy())
    return counts


def _first_ids(shown: list[str], found: pa.ChunkedArray) -> list[str]:
    """The `SHOWN` smallest of `shown` and `found`: the same ids however the rows came (Arrow and Python order UTF-8
    text alike)."""
    found = found.combine_chunks()
    return sorted([*shown, *found.take(pc.array_sort_indices(found)[:SHOWN]).to_pylist()])[:SHOWN]


def _suffix_buckets(items: BucketFiles, earlier: BucketFiles, suffixed: BucketFiles) -> dict:
    """Each bucket of items with a `suffix` column into `suffixed`: item count, collision rate, suffix table size.
    Rows are sorted by item id: the Ray Data job delivers them in no fixed order, and the codes file should not
    depend on it, byte for byte."""
    total, shared, largest = 0, 0, -1
    with suffixed:
        for bucket, table in items.tables():
            table = table.sort_by("item_id")
            codes = column_matrix(table.column("codes"), np.int64)
            suffixes = assign_suffixes(table.column("item_id"), codes, _previous(earlier.read(bucket)))
            suffixed.write(bucket, table.append_column("suffix", pa.array(suffixes)))
            total, shared, largest = total + len(codes), shared + shared_items(codes), max(largest, int(suffixes.max()))
    return {"items": total, "collision_rate": shared / total if total else 0.0, "suffix_table_size": largest + 1}


def with_buckets(table: pa.Table, buckets: int) -> pa.Table:
    """`table` (item_id, codes) with the bucket of each code tuple and the bucket of each item id."""
    codes = column_matrix(table.column("codes"), np.int64)
    return (table.append_column("bucket", pa.array(code_buckets(codes, buckets)))
            .append_column("id_bucket", pa.array(id_buckets(table.column("item_id"), buckets))))


def code_buckets(codes: np.ndarray, buckets: int) -> np.ndarray:
    """(n,) bucket of each code tuple (n, L); the same tuple always gets the same bucket."""
    key = np.zeros(len(codes), dtype=np.uint64)
    for column in np.asarray(codes, dtype=np.int64).T:
        key = mix64(key ^ column.astype(np.uint64))
    return (key % np.uint64(buckets)).astype(np.int32)


def _batches(files: list[Path], columns: list[str]) -> Iterator[pa.Table]:
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=STREAM_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])


def _without_repeated_ids(table: pa.Table) -> tuple[pa.Table, pa.StructArray]:
    """The rows of a bucket of item ids whose id appears once, and the ids that appear more often with their
    counts (`pc.value_counts` fields)."""
    counts = repeated_values(table.column("item_id").combine_chunks())
    if len(counts):
        table = table.filter(pc.invert(pc.is_in(table.column("item_id"), value_set=counts.field("values"))))
    return table, counts


def _quarantine_repeated(repeated: pa.StructArray, quarantine: Quarantine, source: str) -> int:
    """Lists every row of the `repeated` ids in `quarantine`, each as one occurrence of its id (the table's row
    order is gone by now); returns how many rows that is."""
    for item_id, times in zip(repeated.field("values").to_pylist(), repeated.field("counts").to_pylist()):
        for occurrence in range(1, times + 1):
            quarantine.add(source=source, where=f"item {str(item_id)!r} (occurrence {occurrence} of {times})",
                           field="item_id", reason="item id repeated in the table (every item must appear once)")
    return pc.sum(repeated.field("counts")).as_py() or 0


def _same_codebook(paths: list[Path], version: str) -> list[Path]:
    """The earlier assignments to keep suffixes from: only those made with this same codebook."""
    return [Path(path) for path in paths if Path(path).is_file() and codes_version(path) == version]


def _previous(table: pa.Table | None) -> Previous | None:
    if table is None:
        return None
    full = column_matrix(table.column("codes"), np.int64)
    return Previous(table.column("item_id").combine_chunks(), full[:, :-1], full[:, -1])


def _source(files: list[Path]) -> str:
    """The feature table as a user named it: its one file, or the folder of its files."""
    return str(files[0]) if len(files) == 1 else os.path.commonpath([str(f) for f in files])
