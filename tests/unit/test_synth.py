"""Synthetic catalog: files and counts, determinism, and the planted signal really being there."""
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from qbr_dist.cli import main
from qbr_dist.data import synth
from qbr_dist.data.shards import INDEX

SPEC = dict(items=600, users=300, shard_bytes=400_000)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synth.synthesize(synth.SynthSpec(**SPEC), out)
    return out, summary


def shard_samples(out):
    index = json.loads((out / synth.SHARDS / INDEX).read_text())
    return index, list(wds.WebDataset([str(out / synth.SHARDS / s["file"]) for s in index["shards"]],
                                      shardshuffle=False))


def test_every_output_is_written_and_the_counts_agree(synthetic):
    out, summary = synthetic
    catalog, latent = pq.read_table(out / synth.CATALOG), pq.read_table(out / synth.LATENT)
    interactions = pq.read_table(out / synth.INTERACTIONS)
    index, samples = shard_samples(out)
    assert catalog.num_rows == latent.num_rows == index["items"] == len(samples) == SPEC["items"]
    assert index["with_image"] == SPEC["items"] and len(index["shards"]) > 1
    assert all("jpg" in s for s in samples)
    assert interactions.num_rows == summary["interactions"]
    assert set(interactions.column("item_id").to_pylist()) <= set(catalog.column("item_id").to_pylist())
    users = interactions.column("user_id").to_pylist()
    assert len(set(users)) == SPEC["users"] and min(users.count(u) for u in set(users)) >= 3
    assert json.loads((out / synth.SUMMARY).read_text())["peak_rss_mb"] > 0


def test_timestamps_increase_within_each_user(synthetic):
    table = pq.read_table(synthetic[0] / synth.INTERACTIONS)
    users, stamps = table.column("user_id").to_pylist(), table.column("timestamp").to_pylist()
    assert all(t < s for u, v, t, s in zip(users, users[1:], stamps, stamps[1:]) if u == v)


def test_same_spec_same_bytes(synthetic, tmp_path):
    synth.synthesize(synth.SynthSpec(**SPEC), tmp_path)
    for name in (synth.CATALOG, synth.INTERACTIONS, synth.LATENT):
        assert (tmp_path / name).read_bytes() == (synthetic[0] / name).read_bytes()
    first, second = (json.loads((o / synth.SHARDS / INDEX).read_text()) for o in (tmp_path, synthetic[0]))
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]


def test_text_names_colour_and_shape_only_where_the_latent_says(synthetic):
    out, _ = synthetic
    latent = pq.read_table(out / synth.LATENT).to_pylist()
    catalog = pq.read_table(out / synth.CATALOG).to_pylist()
    colours = list(synth.COLOURS)
    for item, truth in zip(catalog, latent):
        colour, shape = colours[truth["colour"]], synth.SHAPES[truth["shape"]]
        assert (f" {colour} " in item["description"]) == truth["text_names_colour"]
        assert (f" {shape} motif" in item["description"]) == truth["text_names_shape"]
        assert item["category"] == synth.CATEGORIES[truth["category"]]
    named = np.mean([t["text_names_colour"] for t in latent])
    assert 0.4 < named < 0.6


def test_images_show_the_planted_colour(synthetic):
    """The pixels farthest from the background are nearest to the item's palette colour."""
    out, _ = synthetic
    _, samples = shard_samples(out)
    colours = np.array(list(synth.COLOURS.values()), dtype=float)
    truth = {r["item_id"]: r["colour"] for r in pq.read_table(out / synth.LATENT).to_pylist()}
    hits = 0
    for sample in samples:
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), dtype=float).reshape(-1, 3)
        background = pixels[0]
        motif = pixels[np.linalg.norm(pixels - background, axis=1) > 60]
        guess = np.argmin(np.linalg.norm(colours - np.median(motif, axis=0), axis=1))
        hits += guess == truth[json.loads(sample["json"])["item_id"]]
    assert hits / len(samples) > 0.9


def test_users_follow_their_planted_preferences(synthetic):
    """Consecutive items share a colour-shape pair far more often than chance (1/48)."""
    out, _ = synthetic
    latent = pq.read_table(out / synth.LATENT)
    pair = dict(zip(latent.column("item_id").to_pylist(),
                    (np.asarray(latent.column("colour")) * len(synth.SHAPES) + np.asarray(latent.column("shape")))))
    table = pq.read_table(out / synth.INTERACTIONS)
    users, items = table.column("user_id").to_pylist(), table.column("item_id").to_pylist()
    same = [pair[a] == pair[b] for u, v, a, b in zip(users, users[1:], items, items[1:]) if u == v]
    assert np.mean(same) > 5 / (len(synth.COLOURS) * len(synth.SHAPES))


def test_a_bad_spec_is_a_one_line_error():
    with pytest.raises(ValueError, match="synth: 'image_side' must be an integer >= 16"):
        synth.SynthSpec(items=10, users=10, image_side=4).check()


def test_cli_writes_the_dataset(tmp_path, capsys):
    assert main(["data", "synth", "--items", "40", "--users", "10", "--out", str(tmp_path / "s")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["items"] == 40 and printed["out"] == str(tmp_path / "s")
    assert (tmp_path / "s" / synth.SHARDS / INDEX).is_file()
