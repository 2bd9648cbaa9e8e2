"""Encoding and retokenization under load, with one worker of each pool SIGKILLed midway: every
item must come out of each job exactly once.

A synthetic catalog (`qbr data synth`) is written as WebDataset shards. Its items are encoded by
`qbr encode`'s Ray Data job with a pool of `--actors` encoder actors, then retokenized by
`qbr retokenize`'s job with a pool of `--actors` actors. While each job runs, one of its actor
processes is SIGKILLed; Ray Data restarts the actor and retries its unfinished batches. The text
encoder is a small BERT initialised at random on purpose (with all-MiniLM-L6-v2's tokenizer):
this measures the jobs' bookkeeping under a failure, not the encoder.

    python bench/load.py [--items N] [--actors 2]

Default 1M items; writes bench/results/load.json (load-<N>.json for other sizes).
tests/reliability/test_load.py runs the same `run` at 20k items.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from common import BENCH, machine, write_result  # first: the environment Ray reads

import numpy as np
import pyarrow.parquet as pq
import torch

from qbr_dist.config import EncodeConfig
from qbr_dist.data import synth
from qbr_dist.data.quarantine import Quarantine
from qbr_dist.encode.job import encode_shards
from qbr_dist.encode.text import text_model_path
from qbr_dist.quant import CODES
from qbr_dist.quant.codebook import save_codebooks
from qbr_dist.quant.residual import residual_kmeans
from qbr_dist.quant.retokenize import retokenize

WORK = BENCH / ".work" / "load"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def tiny_text_model(folder: Path) -> Path:
    """A 1-layer, 32-wide BERT with random weights (on purpose) and the packaged MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    source = text_model_path("all-MiniLM-L6-v2")
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    vocab = sum(1 for _ in open(source / "vocab.txt", encoding="utf-8"))
    BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


class ActorKiller:
    """SIGKILLs one Ray Data actor of class `actor` (its process title names it) `delay_s` after the
    first one appears, unless the job has finished by then; records what it killed and when."""

    def __init__(self, actor: str, *, delay_s: float):
        self.actor, self.delay_s = actor, delay_s
        self.killed: dict | None = None
        self.seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def _actors(self) -> list:
        import psutil

        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            if self.actor in " ".join(process.info["cmdline"] or []):
                found.append(process)
        return found

    def _watch(self) -> None:
        first_seen = None
        while not self._done.wait(0.05):
            actors = self._actors()
            self.seen |= {p.pid for p in actors}
            if actors and first_seen is None:
                first_seen = time.monotonic()
            if self.killed is None and first_seen is not None and time.monotonic() - first_seen >= self.delay_s:
                victim = actors[0]
                victim.send_signal(signal.SIGKILL)
                self.killed = {"pid": victim.pid, "at": time.monotonic()}


def exactly_once(ids: list[str], expected: list[str]) -> dict:
    counts = Counter(ids)
    return {"rows": len(ids), "expected": len(expected), "duplicated": sum(1 for c in counts.values() if c > 1),
            "missing": len(set(expected) - set(counts)), "unexpected": len(set(counts) - set(expected))}


def _killed_job(actor: str, delay_s: float, job) -> dict:
    """Run `job()` while one `actor` process is killed; returns timings and what was killed."""
    started = time.monotonic()
    with ActorKiller(actor, delay_s=delay_s) as killer:
        job()
    finished = time.monotonic()
    killed = killer.killed
    return {"seconds": round(finished - started, 2), "actor_processes_seen": len(killer.seen),
            "killed_after_s": round(killed["at"] - started, 2) if killed else None,
            "killed_before_the_end": bool(killed) and killed["at"] < finished}


def run(items: int, work: Path, *, actors: int = 2, kill_after_s: float = 2.0) -> dict:
    """Synthesize, encode (one actor killed), fit a codebook, retokenize (one actor killed); returns the checks."""
    import ray

    shutil.rmtree(work, ignore_errors=True)
    # About 2 shards (so 2 feature files: a block for each retokenizer actor) at any size.
    data = synth.synthesize(synth.SynthSpec(items=items, users=max(10, items // 50), mean_length=4, image_side=16,
                                            shard_bytes=items * 500), work / "synth")
    catalog = pq.read_table(work / "synth" / synth.CATALOG, columns=["item_id"]).column("item_id").to_pylist()
    cfg = EncodeConfig(text_model=str(tiny_text_model(work / "text-model")), actors=actors, batch_size=256)
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024**2)
    with Quarantine(work / "quarantine.jsonl") as quarantine:
        encode = _killed_job("EncoderActor", kill_after_s, lambda: encode_shards(
            work / "synth" / synth.SHARDS, work / "encode", cfg, quarantine=quarantine))
    features = sorted((work / "encode").glob("*.parquet"))
    encode["items"] = exactly_once(_column(features, "item_id"), catalog)
    encode["quarantined"] = quarantine.total

    sample = np.stack(pq.read_table(features[0], columns=["text_emb"]).column("text_emb")
                      .to_numpy(zero_copy_only=False)[:20_000]).astype(np.float32)
    codebooks, _, _ = residual_kmeans(torch.from_numpy(sample), levels=2, codebook_size=64, iterations=5)
    save_codebooks(work / "codebooks.safetensors", {"codebooks": codebooks})
    retok = _killed_job("Retokenizer", kill_after_s, lambda: retokenize(
        features, "text_emb", work / "codebooks.safetensors", work / "retokenize", previous=[],
        quarantine=Quarantine(work / "retokenize" / "quarantine.jsonl"), batch_size=256, actors=actors))
    retok["items"] = exactly_once(_column([work / "retokenize" / CODES], "item_id"), catalog)
    return {"items": items, "actors": actors, "synth_seconds": data["seconds"], "encode": encode, "retokenize": retok}


def _column(files: list[Path], name: str) -> list:
    return [value for f in files for value in pq.read_table(f, columns=[name]).column(name).to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    result = run(args.items, WORK / str(args.items), actors=args.actors)
    result["machine"] = machine()
    write_result(result, "load" if args.items == 1_000_000 else f"load-{args.items}")
    shutil.rmtree(WORK / str(args.items))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
