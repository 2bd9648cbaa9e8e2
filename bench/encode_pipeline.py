"""Encoding throughput: the Ray Data encode job against a plain single-process loop, same run.

Both read the same WebDataset shards of a synthetic catalog and run the same models (the
packaged MiniLM text encoder and an open_clip image model initialised at random on purpose:
throughput does not depend on the weights) with the same batch size, end to end including
model loading. The plain loop is what one would write without Ray: iterate the shards with
`webdataset`, decode, encode, in one process. The benchmark also records the peak memory (RSS)
of `qbr data synth` writing a catalog of `--synth-items` items, which must stay flat in the
number of items.

    python bench/encode_pipeline.py [--quick]

Writes bench/results/encode.json (encode-quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from common import BENCH, machine, write_result  # first: the environment Ray reads

from qbr_dist.config import load_config
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.data.shards import INDEX
from qbr_dist.data.synth import SHARDS, SUMMARY
from qbr_dist.encode.job import EncoderActor, decode_batch, encode_shards

WORK = BENCH / ".work"
IMAGE_MODEL = "ViT-S-32-alt"  # the smallest fast built-in open_clip ViT


def synthesize(items: int, users: int, out: Path) -> dict:
    """`qbr data synth` in its own process; peak RSS as the process reports it, and as the kernel
    saw it for the largest child so far (run this first, before Ray starts child processes)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qbr_dist.cli", "data", "synth", "--items", str(items),
                    "--users", str(users), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / SUMMARY).read_text())
    return {
        "items": items, "users": users, "interactions": summary["interactions"],
        "shard_bytes": summary["shard_bytes"], "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": summary["peak_rss_mb"],
        "peak_rss_mb_kernel": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def ray_data_job(shards: Path, out: Path, cfg) -> dict:
    import ray

    shutil.rmtree(out, ignore_errors=True)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024**2)
    try:
        started = time.perf_counter()
        with Quarantine() as quarantine:
            totals = encode_shards(shards, out, cfg, quarantine=quarantine)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    return {"items": totals["items"], "seconds": round(seconds, 2), "items_per_s": round(totals["items"] / seconds, 1)}


def plain_loop(shards: Path, cfg, image_size: int) -> dict:
    import webdataset as wds

    started = time.perf_counter()
    encoder = EncoderActor(asdict(cfg))
    index = json.loads((shards / INDEX).read_text())
    urls = [str(shards / s["file"]) for s in index["shards"]]
    items, batch = 0, []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        batch.append(sample)
        if len(batch) == cfg.batch_size:
            items += _encode(encoder, batch, image_size, cfg.max_image_pixels)
            batch = []
    if batch:
        items += _encode(encoder, batch, image_size, cfg.max_image_pixels)
    seconds = time.perf_counter() - started
    return {"items": items, "seconds": round(seconds, 2), "items_per_s": round(items / seconds, 1)}


def _encode(encoder: EncoderActor, samples: list[dict], image_size: int, max_pixels: int) -> int:
    columns = {name: [s.get(name) for s in samples] for name in ("__key__", "json", "txt", "jpg")}
    out = encoder(decode_batch(columns, image_size=image_size, max_pixels=max_pixels))
    assert np.isfinite(out["text_emb"]).all()
    return len(out["item_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--items", type=int, help="catalog items to encode (default 6000, quick 600)")
    parser.add_argument("--synth-items", type=int, help="items for the memory figure (default 1M, quick 20k)")
    parser.add_argument("--actors", type=int, default=2, help="encoder actors of the Ray Data job")
    args = parser.parse_args()
    items = args.items or (600 if args.quick else 6000)
    synth_items = args.synth_items or (20_000 if args.quick else 1_000_000)

    from qbr_dist.encode.image import input_size

    cfg = load_config(None, [f"encode.image_model={IMAGE_MODEL}", "encode.image_random_init=true",
                             "encode.batch_size=64", f"encode.actors={args.actors}"]).encode
    memory = synthesize(synth_items, synth_items, WORK / "synth-memory")
    shutil.rmtree(WORK / "synth-memory", ignore_errors=True)
    catalog = WORK / f"synth-{items}"
    made = synthesize(items, max(items // 2, 10), catalog)
    made.pop("peak_rss_mb_kernel")  # the largest child so far: the memory run's, not this one's
    ray_data = ray_data_job(catalog / SHARDS, WORK / "encoded", cfg)
    plain = plain_loop(catalog / SHARDS, cfg, input_size(IMAGE_MODEL))
    result = {
        "benchmark": "encode_pipeline", "quick": args.quick,
        "machine": machine(),
        "models": {"text": cfg.text_model, "image": f"{IMAGE_MODEL} (random init)", "batch_size": cfg.batch_size},
        "catalog": made,
        "ray_data": ray_data | {"actors": cfg.actors, "cpus_per_actor": cfg.cpus_per_actor},
        "plain_loop": plain,
        "ratio_ray_data_over_plain": round(ray_data["items_per_s"] / plain["items_per_s"], 3),
        "synth_memory": memory | {"bound_mb": 2048,
                                  "within_bound": max(memory["peak_rss_mb"], memory["peak_rss_mb_kernel"]) < 2048},
    }
    write_result(result, "encode", quick=args.quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
