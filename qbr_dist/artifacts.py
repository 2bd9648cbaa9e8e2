"""Run directory, stage manifests and atomic writes.

A run lives in `<root>/<name>/`, one folder per stage. A stage is done when its folder holds a
`manifest.json` whose key (stage, config hash, input fingerprints, package version) matches what
the stage would compute now and whose outputs all exist. Every file is written under a temporary
name and renamed into place, so a killed process never leaves a file that looks complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from qbr_dist import __version__

MANIFEST = "manifest.json"
LOCK = ".lock"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold `<folder>/.lock` for the block, so a second process given the same folder stops with a
    one-line error naming the holder instead of overwriting its files. The lock is the kernel's
    (flock), so it goes away with its holder, even one that was killed."""
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(f"{path}: this run directory is in use by {holder}; wait for it to end or choose "
                               "another run.name") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield


def write_json(path: str | Path, payload) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_array(path: str | Path, array) -> None:
    """`np.save` under a temporary name: never into the file itself, which another run's stage may share by a hard
    link (`pipeline._reuse`)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def file_fingerprint(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Fingerprints:
    """`file_fingerprint` for one run that checks the same large files more than once (the encode stage's
    damaged shards): each file is read once while its size and times stay the same (ctime changes even when a
    restore keeps the old mtime), so a file that changes is read again."""

    def __init__(self):
        self._seen: dict[tuple, str] = {}

    def of(self, path: str | Path) -> str:
        stat = os.stat(path)
        key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in self._seen:
            self._seen[key] = file_fingerprint(path)
        return self._seen[key]


@functools.cache
def code_version() -> dict:
    """Package version, plus the git commit (and whether tracked files differ from it) when the code runs
    from a checkout. Read once per process, so a commit made while a run goes on does not show in the
    manifests of the stages that run started: `run_pipeline` reads it first."""
    version = {"package": __version__}
    commit, changes = _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    if commit is not None:
        version["git"] = commit
    if changes is not None:
        version["dirty"] = bool(changes)
    return version


def _git(*args: str) -> str | None:
    """Stripped output of a git command run beside this package, or None where git or a checkout is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def settings_hash(settings: dict) -> str:
    """Stable short hash of a stage's settings (`Config.section_settings`)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def stage_key(stage: str, settings: dict, inputs: dict[str, str]) -> dict:
    """What must match for a finished stage to be reused: `settings` (`Config.section_settings`) by their hash;
    the key keeps them too, so that a stage run again can say which setting changed."""
    return {"stage": stage, "config_hash": settings_hash(settings), "inputs": inputs, "package": __version__,
            "settings": settings}


def key_digest(key: dict) -> str:
    """Short stable hash of a stage key (names runs that must only resume the same work)."""
    return hashlib.sha256(json.dumps(_compared(key), sort_keys=True).encode()).hexdigest()[:16]


def _compared(key: dict) -> dict:
    """A key as compared: its settings count through `config_hash` (manifests written before keys kept them
    match still)."""
    return {name: value for name, value in key.items() if name != "settings"}


def read_manifest(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def stage_is_current(stage_dir: str | Path, key: dict) -> bool:
    return why_not_current(stage_dir, key) is None


def why_not_current(stage_dir: str | Path, key: dict) -> str | None:
    """None for a finished stage with this key and all its outputs, else what differs, in words."""
    manifest = read_manifest(stage_dir)
    if manifest is None:
        return "not finished"
    found = manifest.get("key", {})
    reasons = [_settings_changed(found, key)] if found.get("config_hash") != key.get("config_hash") else []
    inputs, wanted = found.get("inputs") or {}, key.get("inputs") or {}
    reasons += [f"another '{name}' input" for name in sorted(set(inputs) | set(wanted))
                if inputs.get(name) != wanted.get(name)]
    if found.get("package") != key.get("package") or found.get("stage") != key.get("stage"):
        reasons.append(f"another version ({found.get('stage')} of qbr-dist {found.get('package')})")
    if _compared(found) != _compared(key) and not reasons:
        reasons.append("another stage key")
    if reasons:
        return "computed with " + ", ".join(reasons)
    missing = [name for name in manifest.get("outputs", []) if not (Path(stage_dir) / name).exists()]
    return f"outputs missing: {', '.join(missing)}" if missing else None


def _settings_changed(found: dict, key: dict, shown: int = 3) -> str:
    """'other settings (train.lr 0.001 -> 0.003, ...)' where both keys hold their settings."""
    before, after = _flat(found.get("settings")), _flat(key.get("settings"))
    changed = [name for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]
    if not found.get("settings") or not key.get("settings") or not changed:
        return "other settings (or stage code)"
    listed = [f"{name} {before.get(name, '(none)')} -> {after.get(name, '(none)')}" for name in changed[:shown]]
    more = f", and {len(changed) - shown} more" if len(changed) > shown else ""
    return f"other settings ({', '.join(listed)}{more})"


def _flat(settings: dict | None, prefix: str = "") -> dict:
    """{'train.lr': 0.001, ...}: nested settings by dotted name."""
    flat = {}
    for name, value in (settings or {}).items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{name}.")
        else:
            flat[f"{prefix}{name}"] = json.dumps(value)
    return flat


def begin_stage(stage_dir: str | Path) -> None:
    """Before a stage (re)computes: drop its old manifest, so outputs half replaced by this run can never
    pass for the old finished stage, and the temporary files of writes a killed process left behind; make the
    files it shares with another run its own."""
    stage_dir = Path(stage_dir)
    (stage_dir / MANIFEST).unlink(missing_ok=True)
    for leftover in stage_dir.glob(".*.tmp-*"):
        leftover.unlink()
    _own_copies(stage_dir)


def _own_copies(stage_dir: Path) -> None:
    """Each file of the stage that is hard-linked with another run's (a stage reused from it, then run again under the
    same key, its outputs lost) replaced by a copy of its own: DeepSpeed and Ray Train rewrite some checkpoint files
    in place, which would change the other run's too."""
    for path in list(stage_dir.rglob("*")) if stage_dir.is_dir() else ():
        if path.name.endswith(".tmp-own"):  # a copy a killed process left
            path.unlink()
        elif not path.is_symlink() and path.is_file() and path.stat().st_nlink > 1:
            private = path.with_name(f".{path.name}.tmp-own")
            shutil.copy2(path, private)
            os.replace(private, path)


def empty_folder(folder: str | Path) -> None:
    """Everything in `folder` removed, the folder kept (a stage computed again from nothing, its checkpoints too)."""
    for child in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_manifest(stage_dir: str | Path, key: dict, *, outputs: list[str], rows: dict,
                   content: dict[str, str] | None = None) -> dict:
    """`content`: fingerprints of what the outputs hold, for later stages to key on in place of the manifest's."""
    manifest = {
        "key": key,
        "outputs": outputs,
        "rows": rows,
        "code_version": code_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    } | ({"content": content} if content else {})
    write_json(Path(stage_dir) / MANIFEST, manifest)
    return manifest


def manifest_fingerprint(stage_dir: str | Path) -> str:
    """Fingerprint of a finished stage, used as an input of the stages after it."""
    return file_fingerprint(Path(stage_dir) / MANIFEST)[:16]


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
