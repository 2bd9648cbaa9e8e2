"""`qbr encode`: WebDataset shards -> item feature table, on Ray Data.

Per shard: `read_webdataset` (raw bytes) -> decode and resize in CPU tasks -> encoder actors
(`ActorPoolStrategy`, text and image models loaded once per actor) -> one parquet file per
shard with `item_id`, `text_emb` (null without text), `image_emb` (null without an image),
`has_image`. A shard whose output exists with a matching entry in `shards_done.json` is skipped,
so a killed job resumes at the next unfinished shard; the outputs, entries and quarantine records
of every other shard (one the index no longer lists, or one to encode again) are removed first,
so the folder holds what the current index's shards give and nothing older. Bad samples are
listed in `quarantine.jsonl`: an item with invalid JSON or non-UTF-8 text is left out; empty text
leaves the item without text features, an unreadable or oversized image without an image. A sample
without a text or image member just has none (a catalog without text writes no `txt`).
A shard whose checksum differs from the index (truncated or damaged) is salvaged first: its
complete samples before the break are encoded and the break is one quarantine entry; its output
counts as current while the damaged file stays as it was, and is encoded again once the file
changes (restored). A missing shard is quarantined and left out. `shard_state` tells the stage
key about both, so a later run redoes the stage (and encodes just those shards) only once a
missing shard appears or a damaged one changes.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qbr_dist import artifacts
from qbr_dist.config import EncodeConfig
from qbr_dist.data.actor_pools import batch_blocks
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import INDEX, item_id_of, open_image, salvage_shard
from qbr_dist.data.tables import matrix_column
from qbr_dist.obs.metrics import actor_labels, encode_batch_seconds, encode_items
from qbr_dist.obs.serve import Endpoint, serve

log = logging.getLogger("qbr.encode")
SHARDS_DONE, SALVAGED = "shards_done.json", "salvaged"
# What a shard encodes to besides the settings: raised with every code change that alters it, so the stage
# and each shard's done entry are redone (2: empty text gives a null text vector, not the vector of "").
ENCODE_VERSION = 2


def settings_key(cfg: EncodeConfig) -> dict:
    """What a shard's output depends on besides the shard: the encoder settings and ENCODE_VERSION."""
    return cfg.key() | {"code": ENCODE_VERSION}


def decode_batch(batch: dict, *, image_size: int, max_pixels: int) -> dict:
    """Raw WebDataset columns -> item_id, text, has_text, image (uint8 S x S x 3), has_image, problem, fatal."""
    from PIL import Image

    keys = batch["__key__"]
    out = {"item_id": [], "text": [], "has_text": [], "image": [], "has_image": [], "problem": [], "fatal": []}
    for key, raw_json, raw_text, raw_image in zip(keys, *(_member(batch, name) for name in ("json", "txt", "jpg"))):
        item_id, text, problems, fatal = item_id_of(key), "", [], False
        try:
            item_id = json.loads(raw_json)["item_id"]
        except (TypeError, ValueError, KeyError):
            problems.append("invalid json: no item_id")
            fatal = True
        try:
            text = raw_text.decode("utf-8") if raw_text is not None else ""
        except UnicodeDecodeError:
            problems.append("text is not UTF-8")
            fatal = True
        has_text = bool(text.strip())
        if raw_text is not None and not has_text and not fatal:  # no txt member: an item without text, as planned
            problems.append("empty text, item kept without text features")
        pixels = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        has_image = False
        if raw_image is not None and not fatal:
            try:
                pixels = _square_rgb(Image, raw_image, image_size, max_pixels)
                has_image = True
            except Exception as err:  # whatever a decoder raises on untrusted bytes: this item's problem
                problems.append(f"unreadable image, item kept without it: {type(err).__name__}: {err}")
        for name, value in (("item_id", item_id), ("text", text), ("has_text", has_text), ("image", pixels),
                            ("has_image", has_image),
                            ("problem", "; ".join(problems)), ("fatal", fatal)):
            out[name].append(value)
    return {name: np.stack(v) if name == "image" else np.asarray(v) for name, v in out.items()}


def _member(batch: dict, name: str) -> list[bytes | None]:
    """A sample's file of that extension as bytes, or None where the sample has none (Arrow gives NaN)."""
    column = batch.get(name)
    if column is None:
        return [None] * len(batch["__key__"])
    return [bytes(v) if isinstance(v, (bytes, bytearray)) else None for v in column]


def _square_rgb(Image, data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop, as open_clip's own preprocessing does."""
    with open_image(data, max_pixels=max_pixels) as image:
        image = image.convert("RGB")
        scale = size / min(image.size)
        resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                               Image.Resampling.BICUBIC)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def encoder_files(cfg: EncodeConfig) -> dict[str, Path]:
    """The local files the encoder actors load on whichever node they run ({what: file}): a text model folder's
    config and weights (safetensors, which `transformers` prefers, else .bin; the packaged default ships with the
    project instead), the image checkpoint and its architecture."""
    from qbr_dist.encode.text import DEFAULT_TEXT_MODEL, text_model_path

    files = {}
    if cfg.text_model != DEFAULT_TEXT_MODEL:
        folder = text_model_path(cfg.text_model)
        weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        files |= {f"encode.text_model {file.name}": file for file in [folder / "config.json", *weights]}
    if cfg.image_model:
        files |= {key: Path(value) for key, value in (("encode.image_weights", cfg.image_weights),
                                                      ("encode.image_model_config", cfg.image_model_config)) if value}
    return files


class EncoderActor:
    """Loads the text and image encoders once; encodes decoded batches."""

    def __init__(self, cfg: dict, metrics: Endpoint | None = None):
        import torch

        from qbr_dist.encode.image import ImageEncoder, resolve_model
        from qbr_dist.encode.text import TextEncoder

        # Registered before the models load: Prometheus applies new targets every few seconds, and an actor
        # of a small job may be done before that if it registers only once it can encode.
        serve(metrics, process="encode-actor")
        self.batch_seconds = encode_batch_seconds.labels(**actor_labels(metrics, stage="encode"))
        torch.set_num_threads(1)
        cfg = EncodeConfig(**cfg)
        device = "cuda" if cfg.gpus_per_actor > 0 else "cpu"
        self.text = TextEncoder(cfg.text_model, device=device)
        self.image = None
        if cfg.image_model:
            self.image = ImageEncoder(resolve_model(cfg.image_model, cfg.image_model_config),
                                      weights=cfg.image_weights, random_init=cfg.image_random_init, device=device)
            mean, std = self.image.model.visual.image_mean, self.image.model.visual.image_std
            self.mean = torch.tensor(mean).view(1, 3, 1, 1)
            self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, batch: dict) -> dict:
        with self.batch_seconds.time():
            return self._encode(batch)

    def _encode(self, batch: dict) -> dict:
        import torch

        has_text = batch["has_text"].astype(bool)
        text_emb = np.zeros((len(has_text), self.text.dim), dtype=np.float32)
        if has_text.any():
            text_emb[has_text] = self.text(list(batch["text"][has_text]))
        has_image = batch["has_image"].astype(bool)
        image_dim = self.image.dim if self.image else 0
        image_emb = np.zeros((len(has_image), image_dim), dtype=np.float32)
        if self.image is not None and has_image.any():
            pixels = torch.from_numpy(batch["image"][has_image]).permute(0, 3, 1, 2).float() / 255.0
            image_emb[has_image] = self.image((pixels - self.mean) / self.std)
        return {"item_id": batch["item_id"], "text_emb": text_emb, "has_text": has_text, "image_emb": image_emb,
                "has_image": has_image & (self.image is not None), "problem": batch["problem"],
                "fatal": batch["fatal"]}


def encode_shards(shard_dir: Path, out_dir: Path, cfg: EncodeConfig, *, quarantine: Quarantine,
                  metrics: Endpoint | None = None, fingerprints: artifacts.Fingerprints | None = None) -> dict:
    """Encode every shard listed in `shard_dir/index.json` that has no current output; returns totals.
    The encoder actors serve their metrics where `metrics` says; `fingerprints`, shared with `shard_state`,
    reads each shard file once however often the run checks it."""
    import ray.data

    from qbr_dist.encode.image import input_size, resolve_model

    # Images are decoded and cropped before the model is loaded, so read its input size up front.
    image_size = input_size(resolve_model(cfg.image_model, cfg.image_model_config)) if cfg.image_model else 1

    index = json.loads((shard_dir / INDEX).read_text())
    config_hash = artifacts.settings_hash(settings_key(cfg))
    fingerprints = fingerprints or artifacts.Fingerprints()
    done = _keep_only_current(shard_dir, out_dir, index, config_hash, quarantine, fingerprints)
    totals = {"read": 0, "items": 0, "with_text": 0, "with_image": 0, "skipped_shards": len(done),
              "incomplete_shards": []}
    quarantined_before = quarantine.total
    encoded = encode_items.labels(stage="encode", run=metrics.run if metrics else "")
    started = time.perf_counter()
    for shard in index["shards"]:
        if shard["file"] in done:
            continue
        output = out_dir / _output_name(shard["file"])
        tar, salvaged_from = _intact_or_salvaged(shard_dir / shard["file"], shard, out_dir, quarantine, fingerprints)
        if tar != shard_dir / shard["file"]:
            totals["incomplete_shards"].append(shard["file"])
        if tar is None:
            continue
        decoded = ray.data.read_webdataset(str(tar.resolve()), decoder=None).map_batches(
            decode_batch, fn_kwargs={"image_size": image_size, "max_pixels": cfg.max_image_pixels},
            batch_size=cfg.batch_size, num_cpus=0.5)
        dataset = batch_blocks(decoded, cfg.batch_size).map_batches(
            EncoderActor, fn_constructor_kwargs={"cfg": asdict(cfg), "metrics": metrics}, batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.actors), num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor or None)
        table = _collect_counting(dataset, encoded)
        kept = _quarantine_rows(table, shard["file"], quarantine)
        with artifacts.atomic_path(output) as tmp:
            pq.write_table(_feature_table(kept), tmp)
        present = {f"with_{flag}": int(pa.compute.sum(kept.column(f"has_{flag}")).as_py() or 0)
                   for flag in ("text", "image")}
        done[shard["file"]] = {"sha256": shard["sha256"], "config": config_hash, "rows": kept.num_rows} | present | (
            {"salvaged": salvaged_from} if salvaged_from else {})
        artifacts.write_json(out_dir / SHARDS_DONE, done)
        totals["read"], totals["items"] = totals["read"] + table.num_rows, totals["items"] + kept.num_rows
        totals |= {name: totals[name] + count for name, count in present.items()}
    totals["quarantined"] = quarantine.total - quarantined_before
    totals["items_per_s"] = round(totals["items"] / max(time.perf_counter() - started, 1e-9), 1)
    return totals


def _output_name(shard_file: str) -> str:
    return Path(shard_file).stem + ".parquet"


def shard_state(shard_dir: Path, out_dir: Path, fingerprints: artifacts.Fingerprints | None = None) -> dict:
    """How the shards on disk differ from their index, for the encode stage's key: the missing ones, and each
    salvaged one's fingerprint as it is now. Empty while the shards are intact, so the key is then the
    index's alone; a run leaves the state it found (or made) behind in its key."""
    index = json.loads((shard_dir / INDEX).read_text())
    done = _read_done(out_dir)
    missing = [shard["file"] for shard in index["shards"] if not (shard_dir / shard["file"]).is_file()]
    fingerprints = fingerprints or artifacts.Fingerprints()
    damaged = {name: fingerprints.of(shard_dir / name) for name, entry in done.items()
               if entry.get("salvaged") and (shard_dir / name).is_file()}
    return ({"missing_shards": missing} if missing else {}) | ({"damaged_shards": damaged} if damaged else {})


def _keep_only_current(shard_dir: Path, out_dir: Path, index: dict, config_hash: str, quarantine: Quarantine,
                       fingerprints: artifacts.Fingerprints) -> dict:
    """The `shards_done.json` entries of the index's shards whose output is current (same checksum and
    config, file present; a salvaged shard's file unchanged since); every other output, entry and
    quarantine record is removed, so a shard the index no longer lists leaves nothing behind and one
    encoded again starts clean."""
    done = _read_done(out_dir)
    current = {shard["file"]: done[shard["file"]] for shard in index["shards"]
               if _is_current(done.get(shard["file"], {}), shard, config_hash, shard_dir, out_dir, fingerprints)}
    kept_outputs = {_output_name(name) for name in current}
    for output in out_dir.glob("*.parquet"):
        if output.name not in kept_outputs:
            output.unlink()
    artifacts.write_json(out_dir / SHARDS_DONE, current)
    quarantine.keep_only(lambda record: Path(record["source"]).name in current)
    return current


def _is_current(entry: dict, shard: dict, config_hash: str, shard_dir: Path, out_dir: Path,
                fingerprints: artifacts.Fingerprints) -> bool:
    if not (out_dir / _output_name(shard["file"])).is_file() or (entry.get("sha256"), entry.get("config")) != (
            shard["sha256"], config_hash):
        return False
    path = shard_dir / shard["file"]
    return "salvaged" not in entry or (path.is_file() and fingerprints.of(path) == entry["salvaged"])


def _collect_counting(dataset, encoded) -> pa.Table:
    """The job's output as one table, counting the items it kept (not quarantined) into `encoded` as blocks
    reach the driver: the count is exact and live however briefly the encoder actors live (an actor's own
    counter loses what it counted after its last scrape, and all of it when the actor is gone before
    Prometheus discovers it)."""
    blocks = []
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        encoded.inc(block.num_rows - (pa.compute.sum(block.column("fatal")).as_py() or 0))
        blocks.append(block)
    return pa.concat_tables(blocks)


def _intact_or_salvaged(path: Path, shard: dict, out_dir: Path, quarantine: Quarantine,
                        fingerprints: artifacts.Fingerprints) -> tuple[Path | None, str | None]:
    """The shard itself when its checksum matches the index, else a copy of its complete samples (None when
    there are none, or the shard is missing: listed in the quarantine); with the damaged file's fingerprint."""
    if not path.is_file():
        quarantine.add(source=str(path), where="shard", field="*", reason="shard listed in the index is missing")
        return None, None
    fingerprint = fingerprints.of(path)
    if fingerprint == shard["sha256"]:
        return path, None
    salvaged = out_dir / SALVAGED / shard["file"]
    kept, problem = salvage_shard(path, salvaged, expected_items=shard["items"])
    quarantine.add(source=str(path), where=f"after sample {kept}", field="*",
                   reason=f"checksum differs from the index: {problem or 'all samples readable'}; "
                          f"the {kept} complete samples before it are encoded")
    return (salvaged if kept else None), fingerprint


def _quarantine_rows(table: pa.Table, shard: str, quarantine: Quarantine) -> pa.Table:
    problems, fatal, ids = (table.column(n).to_pylist() for n in ("problem", "fatal", "item_id"))
    for problem, is_fatal, item_id in zip(problems, fatal, ids):
        if problem:
            quarantine.add(source=shard, where=f"item {item_id}", field="sample",
                           reason=problem + ("" if not is_fatal else " (item left out)"))
    return table.filter(pa.compute.invert(table.column("fatal")))


def _feature_table(table: pa.Table) -> pa.Table:
    """Fixed-size float32 list columns; `text_emb` is null where the item has no text (or empty text), `image_emb` where
    it has no image (all null, as a plain float list, when no image encoder is configured)."""
    has_text, has_image = (table.column(name).combine_chunks() for name in ("has_text", "has_image"))
    text = np.stack(table.column("text_emb").to_numpy(zero_copy_only=False)).astype(np.float32)
    image = np.stack(table.column("image_emb").to_numpy(zero_copy_only=False)).astype(np.float32)
    if image.shape[1] == 0:
        image_array = pa.nulls(len(has_image), pa.list_(pa.float32()))
    else:
        image_array = matrix_column(image, valid=has_image.to_numpy(zero_copy_only=False))
    return pa.table({
        "item_id": table.column("item_id").cast(pa.string()),
        "text_emb": matrix_column(text, valid=has_text.to_numpy(zero_copy_only=False)),
        "image_emb": image_array,
        "has_image": has_image,
    })


def _read_done(out_dir: Path) -> dict:
    path = out_dir / SHARDS_DONE
    return json.loads(path.read_text()) if path.is_file() else {}
