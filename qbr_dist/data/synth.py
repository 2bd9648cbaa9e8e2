"""`qbr data synth`: a synthetic multimodal catalog with planted structure.

Every item has latent attributes: a category and brand (also in its structured fields), a
colour and a shape (drawn in its PIL-rendered picture; its text names each of them only with
probability `text_attribute_prob`). Users prefer a colour-shape pair and a category and switch
to a second pair part-way through their history, so some of the signal is visible only in
images and the order of a sequence matters.

Everything streams in chunks: memory holds a few bytes of latent codes per item, never the
catalog, the images or the interactions. Outputs in the target folder: `catalog.parquet`
(item_id, title, description, category, brand), `interactions.parquet`, `latent.parquet`
(the planted attributes, for tests and inspection), `shards/` (WebDataset, as `qbr shards
write` would write them) and `synth.json` (the spec, counts, seconds and peak memory).
"""
from __future__ import annotations

import contextlib
import io
import logging
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from qbr_dist import artifacts
from qbr_dist.data.shards import ShardSet, make_sample
from qbr_dist.data.tables import INTERACTIONS_SCHEMA

log = logging.getLogger("qbr.synth")

CATEGORIES = ("mug", "lamp", "vase", "clock", "pillow", "bowl", "poster", "rug", "kettle", "planter",
              "candle", "tray")
COLOURS = {"red": (205, 40, 40), "orange": (235, 135, 30), "yellow": (235, 210, 40), "green": (50, 160, 60),
           "teal": (30, 150, 150), "blue": (40, 70, 200), "purple": (130, 50, 170), "black": (25, 25, 25)}
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
CATALOG, INTERACTIONS, LATENT, SHARDS, SUMMARY = (
    "catalog.parquet", "interactions.parquet", "latent.parquet", "shards", "synth.json")
ITEM_CHUNK, USER_CHUNK = 8192, 20000
PAIR_SHARE, CATEGORY_SHARE = 0.5, 0.3  # of a user's interactions; the rest follow global popularity


@dataclass
class SynthSpec:
    items: int
    users: int
    seed: int = 0
    image_side: int = 64
    text_attribute_prob: float = 0.5
    brands_per_category: int = 4
    mean_length: int = 20  # mean interactions per user
    shard_bytes: int = 1_000_000_000
    jpeg_quality: int = 90

    def check(self) -> None:
        for name, ok, expected in (
            ("items", self.items >= 1, "an integer >= 1"), ("users", self.users >= 1, "an integer >= 1"),
            ("image_side", self.image_side >= 16, "an integer >= 16"),
            ("text_attribute_prob", 0 <= self.text_attribute_prob <= 1, "a number in [0, 1]"),
            ("brands_per_category", self.brands_per_category >= 1, "an integer >= 1"),
            ("mean_length", self.mean_length >= 4, "an integer >= 4"),
            ("shard_bytes", self.shard_bytes >= 1024, "an integer >= 1024"),
            ("jpeg_quality", 1 <= self.jpeg_quality <= 95, "an integer in [1, 95]"),
        ):
            if not ok:
                raise ValueError(f"synth: '{name}' must be {expected}, got {getattr(self, name)!r}")


@dataclass
class Latent:
    """Planted attributes, one entry per item (a few bytes each)."""

    category: np.ndarray
    colour: np.ndarray
    shape: np.ndarray
    brand: np.ndarray
    popularity_rank: np.ndarray

    @property
    def pair(self) -> np.ndarray:
        return self.colour.astype(np.int64) * len(SHAPES) + self.shape


def latent_attributes(spec: SynthSpec) -> Latent:
    rng = np.random.default_rng([spec.seed, 0])
    category = rng.integers(len(CATEGORIES), size=spec.items).astype(np.uint8)
    return Latent(
        category=category,
        colour=rng.integers(len(COLOURS), size=spec.items).astype(np.uint8),
        shape=rng.integers(len(SHAPES), size=spec.items).astype(np.uint8),
        brand=(category.astype(np.int32) * spec.brands_per_category
               + rng.integers(spec.brands_per_category, size=spec.items)).astype(np.int32),
        popularity_rank=rng.permutation(spec.items).astype(np.int32),
    )


def ids_of(numbers: np.ndarray, prefix: str) -> pa.Array:
    """'item00000042' style ids, built in Arrow (millions per second)."""
    text = pc.cast(pa.array(np.asarray(numbers, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(text, 8, "0"), "")


def render_image(colour: str, shape: str, rng: np.random.Generator, side: int) -> Image.Image:
    """A light, slightly varied background with the item's shape in its (jittered) colour."""
    background = tuple(int(v) for v in rng.integers(215, 250, size=3))
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    radius = side * rng.uniform(0.25, 0.4)
    cx, cy = side / 2 + rng.uniform(-0.08, 0.08) * side, side / 2 + rng.uniform(-0.08, 0.08) * side
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(radius / 3)))
    else:
        bar = radius / 3
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
    return image


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue()


def _describe(category: str, colour: str, shape: str, brand: str, show_colour: bool, show_shape: bool):
    title = f"{brand} {category}"
    description = f"A {colour + ' ' if show_colour else ''}{category}"
    description += f" with a {shape} motif." if show_shape else "."
    return title, description


def write_catalog(spec: SynthSpec, latent: Latent, out: Path) -> dict:
    """catalog.parquet, latent.parquet and the shards, item chunk by item chunk."""
    colours, brand_names = list(COLOURS), [f"Brand{b:03d}" for b in range(len(CATEGORIES) * spec.brands_per_category)]
    shard_set = ShardSet(out / SHARDS, max_bytes=spec.shard_bytes)
    with contextlib.ExitStack() as stack:
        catalog_tmp = stack.enter_context(artifacts.atomic_path(out / CATALOG))
        latent_tmp = stack.enter_context(artifacts.atomic_path(out / LATENT))
        catalog_writer = latent_writer = None
        for first in range(0, spec.items, ITEM_CHUNK):
            count = min(ITEM_CHUNK, spec.items - first)
            rng = np.random.default_rng([spec.seed, 1, first])
            show = rng.random((count, 2)) < spec.text_attribute_prob
            ids = ids_of(np.arange(first, first + count), "item")
            rows = {"item_id": ids, "title": [], "description": [], "category": [], "brand": []}
            for j, item_id in enumerate(ids.to_pylist()):
                i = first + j
                category, colour = CATEGORIES[latent.category[i]], colours[latent.colour[i]]
                shape, brand = SHAPES[latent.shape[i]], brand_names[latent.brand[i]]
                title, description = _describe(category, colour, shape, brand, *show[j])
                for name, value in (("title", title), ("description", description), ("category", category),
                                    ("brand", brand)):
                    rows[name].append(value)
                fields = {"category": category, "brand": brand}
                jpg = _jpeg(render_image(colour, shape, rng, spec.image_side), spec.jpeg_quality)
                shard_set.write(make_sample(item_id, f"{title}. {description}", fields, jpg))
            chunk = slice(first, first + count)
            catalog_table = pa.table(rows)
            latent_table = pa.table({
                "item_id": ids, "category": pa.array(latent.category[chunk]), "colour": pa.array(latent.colour[chunk]),
                "shape": pa.array(latent.shape[chunk]), "brand": pa.array(latent.brand[chunk]),
                "text_names_colour": pa.array(show[:, 0]), "text_names_shape": pa.array(show[:, 1]),
            })
            if catalog_writer is None:
                catalog_writer = stack.enter_context(pq.ParquetWriter(catalog_tmp, catalog_table.schema))
                latent_writer = stack.enter_context(pq.ParquetWriter(latent_tmp, latent_table.schema))
            catalog_writer.write_table(catalog_table)
            latent_writer.write_table(latent_table)
            _progress("items", first + count, spec.items, count)
    return shard_set.close(quarantined=0, source="qbr data synth", spec=asdict(spec))


class _Pools:
    """Items grouped by a key and sorted by popularity within each group, for skewed draws."""

    def __init__(self, keys: np.ndarray, popularity_rank: np.ndarray, num_keys: int):
        self.order = np.lexsort((popularity_rank, keys)).astype(np.int32)
        counts = np.bincount(keys, minlength=num_keys)
        self.start, self.count = np.r_[0, np.cumsum(counts)[:-1]], counts

    def draw(self, keys: np.ndarray, rng: np.random.Generator, skew: float) -> np.ndarray:
        """One item per key (popular items more often); a key without items falls back to any item."""
        count = self.count[keys]
        empty = count == 0
        keys = np.where(empty, 0, keys)
        offset = np.floor(rng.random(len(keys)) ** skew * np.maximum(count, 1)).astype(np.int64)
        picks = self.order[self.start[keys] + np.minimum(offset, np.maximum(count, 1) - 1)]
        return np.where(empty, self.order[rng.integers(len(self.order), size=len(keys))], picks)


def write_interactions(spec: SynthSpec, latent: Latent, out: Path) -> int:
    """interactions.parquet, user chunk by user chunk; returns the number of rows."""
    pairs = _Pools(latent.pair, latent.popularity_rank, len(COLOURS) * len(SHAPES))
    categories = _Pools(latent.category.astype(np.int64), latent.popularity_rank, len(CATEGORIES))
    anywhere = _Pools(np.zeros(spec.items, np.int64), latent.popularity_rank, 1)
    rows = 0
    with artifacts.atomic_path(out / INTERACTIONS) as tmp, pq.ParquetWriter(tmp, INTERACTIONS_SCHEMA) as writer:
        for first in range(0, spec.users, USER_CHUNK):
            count = min(USER_CHUNK, spec.users - first)
            rng = np.random.default_rng([spec.seed, 2, first])
            lengths = 3 + rng.geometric(1 / (spec.mean_length - 2), size=count).clip(max=500)
            user = np.repeat(np.arange(count), lengths)
            starts = np.cumsum(lengths) - lengths
            position = np.arange(len(user)) - np.repeat(starts, lengths)
            first_pair, second_pair = (rng.integers(len(COLOURS) * len(SHAPES), size=count) for _ in range(2))
            switch = np.floor(rng.random(count) * lengths).astype(np.int64)
            pair_now = np.where(position < switch[user], first_pair[user], second_pair[user])
            favourite_category = rng.integers(len(CATEGORIES), size=count)
            mode = rng.random(len(user))
            items = np.where(
                mode < PAIR_SHARE, pairs.draw(pair_now, rng, skew=2.0),
                np.where(mode < PAIR_SHARE + CATEGORY_SHARE,
                         categories.draw(favourite_category[user], rng, skew=2.0),
                         anywhere.draw(np.zeros(len(user), np.int64), rng, skew=3.0)),
            )
            gaps = rng.integers(60, 86400, size=len(user))
            elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], lengths)
            first_seen = 1.6e9 + rng.integers(0, 10**7, size=count)
            writer.write_table(pa.table({
                "user_id": ids_of(first + user, "user"),
                "item_id": ids_of(items, "item"),
                "timestamp": pa.array((first_seen[user] + elapsed).astype(np.float64)),
            }, schema=INTERACTIONS_SCHEMA))
            rows += len(user)
            _progress("users", first + count, spec.users, count)
    return rows


def _progress(what: str, done: int, total: int, chunk: int) -> None:
    """A log line each time another tenth of the work is done."""
    if (done - chunk) * 10 // total != done * 10 // total:
        log.info("synth: %d / %d %s", done, total, what)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthesize(spec: SynthSpec, out: Path) -> dict:
    """Write the whole synthetic dataset into `out`; returns the summary also saved as synth.json."""
    spec.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    latent = latent_attributes(spec)
    index = write_catalog(spec, latent, out)
    catalog_s = time.perf_counter() - started
    interactions = write_interactions(spec, latent, out)
    summary = {
        "spec": asdict(spec), "items": index["items"], "with_image": index["with_image"],
        "shards": len(index["shards"]), "shard_bytes": sum(s["bytes"] for s in index["shards"]),
        "users": spec.users, "interactions": interactions, "catalog_seconds": round(catalog_s, 1),
        "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    artifacts.write_json(out / SUMMARY, summary)
    return summary
