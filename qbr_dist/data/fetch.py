"""Dataset fetchers. MovieLens-100K comes from the RecBole 1.2.1 wheel on PyPI (no dependencies)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelDataset:
    wheel: str  # pip requirement of the wheel that ships the files
    wheel_sha256: str
    members: dict[str, str]  # path inside the wheel -> sha256 of its bytes


DATASETS = {
    "ml-100k": WheelDataset(
        wheel="recbole==1.2.1",
        wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        members={
            "recbole/dataset_example/ml-100k/ml-100k.inter":
                "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            "recbole/dataset_example/ml-100k/ml-100k.item":
                "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        },
    ),
}


class FetchError(RuntimeError):
    pass


def fetch(name: str, cache_dir: str | Path) -> Path:
    """Folder holding the dataset's files, downloading and verifying them on first use."""
    spec = _spec(name)
    target = Path(cache_dir) / name
    if all(_sha256_file(target / Path(m).name) == h for m, h in spec.members.items()):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(spec.wheel, Path(tmp))
        extract_verified(wheel, spec, target)
    return target


def pinned_sha256(name: str) -> dict[str, str]:
    """{file name: sha256} of a named dataset's files: what `fetch` verifies them against."""
    return {Path(member).name: sha256 for member, sha256 in _spec(name).members.items()}


def _spec(name: str) -> WheelDataset:
    if name not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def extract_verified(wheel: Path, spec: WheelDataset, target: Path) -> None:
    """Check the wheel's and each member's sha256, then write members atomically into `target`."""
    if _sha256_file(wheel) != spec.wheel_sha256:
        raise FetchError(f"{wheel.name}: sha256 mismatch (expected {spec.wheel_sha256})")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member, expected in spec.members.items():
            if member not in archive.namelist():
                raise FetchError(f"{wheel.name}: has no member {member}")
            data = archive.read(member)
            if hashlib.sha256(data).hexdigest() != expected:
                raise FetchError(f"{wheel.name}:{member}: sha256 mismatch (expected {expected})")
            partial = target / (Path(member).name + ".partial")
            partial.write_bytes(data)
            partial.replace(target / Path(member).name)


def _download_wheel(requirement: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", str(into), requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        detail = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip download {requirement} failed: {detail}")
    return wheels[0]


def _sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
