"""WebDataset shard writer: one sample per catalog item, streamed, deterministic, indexed.

A sample is `{key}.txt` (item text), `{key}.json` (structured fields plus the original
`item_id`) and, when the item has a readable image, `{key}.jpg` re-encoded to at most
`image_max_side` pixels on its longer side. Keys are the percent-encoded item id with '.' also
encoded, because WebDataset splits a file name into key and extension at the first dot.
Shards are written under a temporary name and renamed when complete; `index.json` lists every
shard with its item count, size and sha256, and is written last.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

import pyarrow.parquet as pq
from PIL import Image

from qbr_dist import artifacts
from qbr_dist.data.quarantine import Quarantine

INDEX = "index.json"
SHARD_PATTERN = "shard-%06d.tar"
FIXED_MTIME = 0  # same input, same bytes (an integer: a float mtime costs a 1 KB pax header per file)


def shard_key(item_id: str) -> str:
    """Reversible, WebDataset-safe key: no '/', no '.', no characters that need quoting."""
    return quote(item_id, safe="").replace(".", "%2E")


def item_id_of(key: str) -> str:
    return unquote(key)


def image_path(folder: Path, item_id: str) -> Path:
    """Where an item's image lives in an images folder: `<key>.jpg` (the key is the id, made path-safe)."""
    return Path(folder) / f"{shard_key(item_id)}.jpg"


@contextlib.contextmanager
def open_image(data: bytes, *, max_pixels: int) -> Iterator[Image.Image]:
    """The image in `data`, refused (ValueError) above `max_pixels` before its pixels are decoded."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"{image.width}x{image.height} exceeds the {max_pixels}-pixel bound")
        yield image


def reencode_jpeg(data: bytes, *, max_side: int, max_pixels: int, quality: int) -> bytes:
    """JPEG bytes of the image shrunk to `max_side`; refuses images above `max_pixels` before decoding."""
    with open_image(data, max_pixels=max_pixels) as image:
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=False, progressive=False)
        return out.getvalue()


class ShardSet:
    """Writes samples to size-bounded tar shards in `folder`; `close()` writes `index.json`."""

    def __init__(self, folder: Path, *, max_bytes: int):
        import webdataset as wds

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in list(self.folder.glob("shard-*.tar")) + list(self.folder.glob("*.partial")):
            stale.unlink()
        self.shards: list[dict] = []
        self.items = self.with_image = 0
        self._open: dict[str, object] = {}
        self._counts: dict[str, int] = {}
        self._writer = wds.ShardWriter(
            str(self.folder / SHARD_PATTERN), maxsize=max_bytes, maxcount=10**12,
            opener=self._open_partial, post=self._finish_shard, mtime=FIXED_MTIME, verbose=0,
        )

    def write(self, sample: dict) -> None:
        self._writer.write(sample)
        # tarfile keeps a header object per file written; a writer never reads them back, and
        # over a 1 GB shard of small images they would hold about 1 GB of memory.
        self._writer.tarstream.tarstream.members.clear()
        self._counts[self._writer.fname] = self._counts.get(self._writer.fname, 0) + 1
        self.items += 1
        self.with_image += "jpg" in sample

    def close(self, **about) -> dict:
        """Finish the last shard and write the index (shards, counts, plus `about`, e.g. the source)."""
        self._writer.close()
        index = {"shards": self.shards, "items": self.items, "with_image": self.with_image, **about}
        artifacts.write_json(self.folder / INDEX, index)
        return index

    def _open_partial(self, fname: str):
        handle = open(fname + ".partial", "wb")
        self._open[fname] = handle
        return handle

    def _finish_shard(self, fname: str) -> None:
        self._open.pop(fname).close()
        partial = Path(fname + ".partial")
        self.shards.append({
            "file": Path(fname).name, "items": self._counts.get(fname, 0),
            "bytes": partial.stat().st_size, "sha256": artifacts.file_fingerprint(partial),
        })
        partial.replace(fname)


def make_sample(item_id: str, text: str | None, fields: dict, jpg: bytes | None) -> dict:
    """One WebDataset sample; the json carries the original id next to the structured fields. An item
    without text (None: a catalog with no text at all) has no `txt` member; empty text is written as it is."""
    sample = {
        "__key__": shard_key(item_id),
        "json": json.dumps({"item_id": item_id, **fields}, sort_keys=True, ensure_ascii=False),
    }
    if text is not None:
        sample["txt"] = text
    if jpg is not None:
        sample["jpg"] = jpg
    return sample


def catalog_samples(
    catalog: Path, *, images_dir: Path | None, image_max_side: int, max_pixels: int, jpeg_quality: int,
    quarantine: Quarantine, batch_rows: int = 4096,
) -> Iterator[dict]:
    """Samples of a catalog parquet (item_id, text, fields...), streamed in record batches."""
    for batch in pq.ParquetFile(catalog).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            item_id = row.pop("item_id")
            text = row.pop("text")
            jpg = None
            try:
                raw = _image_bytes(item_id, row.pop("image", None), images_dir)
                if raw is not None:
                    jpg = reencode_jpeg(raw, max_side=image_max_side, max_pixels=max_pixels, quality=jpeg_quality)
            except Exception as err:  # whatever an untrusted file or path raises is this item's problem
                quarantine.add(source=str(catalog), where=f"item {item_id}", field="image",
                               reason=f"unreadable image, item kept without it: {type(err).__name__}: {err}")
            yield make_sample(item_id, text, row, jpg)


def _image_bytes(item_id: str, image, images_dir: Path | None) -> bytes | None:
    """The item's image: its bytes, the file its path names (which must exist), or its file in `images_dir`
    when there is one (an item without an image has none there)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, str) and image:
        return Path(image).read_bytes()
    if images_dir is not None:
        path = image_path(images_dir, item_id)
        return path.read_bytes() if path.is_file() else None
    return None


def write_shards(
    catalog: Path, folder: Path, *, max_bytes: int, images_dir: Path | None, image_max_side: int,
    max_pixels: int, jpeg_quality: int, quarantine: Quarantine,
) -> dict:
    """Write the catalog's shards and `index.json` into `folder`; returns the index."""
    shard_set = ShardSet(folder, max_bytes=max_bytes)
    for sample in catalog_samples(catalog, images_dir=images_dir, image_max_side=image_max_side,
                                  max_pixels=max_pixels, jpeg_quality=jpeg_quality, quarantine=quarantine):
        shard_set.write(sample)
    return shard_set.close(quarantined=quarantine.total, source=str(catalog),
                           source_sha256=artifacts.file_fingerprint(catalog))


def salvage_shard(path: Path, out: Path, *, expected_items: int) -> tuple[int, str | None]:
    """Copy the complete samples of a damaged shard, up to its first break, into a new tar at `out`.

    Returns (samples copied, what was wrong or None). A sample counts as complete once the next
    sample's first header has been read. The last one counts only when the tar ends with its
    end-of-archive block and holds as many samples as the index lists: Python's tarfile also stops
    quietly at a cut on a file boundary, or at a damaged header, and the last sample may then be
    missing files. Counts, as the encode job keeps them: the samples copied are read and accepted,
    the break is one more read and quarantined; nothing after it is read.
    """
    import tarfile

    copied, problem, pending, end = 0, None, [], 0
    with artifacts.atomic_path(out) as tmp, tarfile.open(tmp, "w") as sink, open(path, "rb") as source:
        try:
            with tarfile.open(fileobj=source, mode="r|") as tar:
                for member in tar:
                    if pending and _sample_key(member.name) != _sample_key(pending[0][0].name):
                        copied += _copy_sample(sink, pending)
                    pending.append((member, tar.extractfile(member).read() if member.isfile() else b""))
                end = tar.offset
        except (tarfile.TarError, EOFError, OSError) as err:
            problem = f"{type(err).__name__}: {err}"
        if problem is None and not _end_block_at(path, end):
            problem = f"cut short: no end-of-archive block after {copied + bool(pending)} samples"
        if problem is None and copied + bool(pending) == expected_items:
            copied += _copy_sample(sink, pending)
        elif problem is None:
            problem = f"ends after {copied + bool(pending)} of the {expected_items} samples its index lists"
    return copied, problem


def _end_block_at(path: Path, offset: int) -> bool:
    """Whether the tar's end-of-archive block (512 zero bytes) is at `offset`, where reading stopped."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(512) == bytes(512)


def _sample_key(name: str) -> str:
    return name.split(".", 1)[0]


def _copy_sample(sink, members: list) -> int:
    for member, data in members:
        sink.addfile(member, io.BytesIO(data))
    count = int(bool(members))
    members.clear()
    return count

