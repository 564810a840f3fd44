"""Atomic checkpoints: a checkpoint either exists completely or not at all.

Layout under a run's checkpoint root::

    step_00000120/            # complete: holds COMPLETE (JSON: step, meta, sha256 of every file)
    .tmp-step_00000140-ab12/  # being written (or left behind by a crash): never loaded

Writing goes to a temporary folder, every file is fsynced, ``COMPLETE`` is written last with the
hash of each file, and the folder is renamed into place. A crash at any point leaves either the
previous complete checkpoint as the newest one or the new one complete; resume code only ever
looks at folders with a ``COMPLETE`` file whose hashes match.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root``, keyed by its POSIX relative path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }


def tree_digest(root: Path) -> str:
    """One hash for a whole folder: stable across machines, used to name artifacts."""
    lines = "".join(f"{name}\0{digest}\n" for name, digest in hash_tree(root).items())
    return hashlib.sha256(lines.encode()).hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path, step: int, write: Callable[[Path], None], meta: dict[str, Any] | None = None
) -> Checkpoint:
    """Write a checkpoint atomically; ``write(tmp_dir)`` puts the files in place."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        record = {"step": step, "meta": meta or {}, "files": hash_tree(tmp)}
        (tmp / COMPLETE).write_text(json.dumps(record, indent=1))
        _fsync_tree(tmp)
        if final.exists():  # an earlier attempt completed the same step: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Checkpoint(path=final, step=step, meta=meta or {})


def read_complete(path: Path, verify: bool = True) -> Checkpoint | None:
    """The checkpoint at ``path`` if it is complete (and, with ``verify``, its hashes match)."""
    marker = path / COMPLETE
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    files = record.get("files")
    if not isinstance(files, dict):
        return None
    if verify:
        for name, digest in files.items():
            file = path / name
            if not file.is_file() or sha256_file(file) != digest:
                return None
    return Checkpoint(path=path, step=int(record.get("step", 0)), meta=record.get("meta") or {})


def list_complete(root: Path, verify: bool = False) -> list[Checkpoint]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and _STEP_DIR.match(child.name):
            ckpt = read_complete(child, verify=verify)
            if ckpt is not None:
                found.append(ckpt)
    return sorted(found, key=lambda c: c.step)


def latest_complete(root: Path) -> Checkpoint | None:
    """The newest checkpoint whose files all match their recorded hashes."""
    for ckpt in reversed(list_complete(root, verify=False)):
        if read_complete(ckpt.path, verify=True) is not None:
            return ckpt
    return None


def prune(root: Path, keep: int = 2, protect: set[Path] | None = None) -> list[Path]:
    """Delete leftover temp folders and all but the newest ``keep`` complete checkpoints."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if child.name.startswith(".tmp-"):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    protected = {p.resolve() for p in (protect or set())}
    for ckpt in list_complete(root)[:-keep] if keep > 0 else list_complete(root):
        if ckpt.path.resolve() not in protected:
            shutil.rmtree(ckpt.path, ignore_errors=True)
            removed.append(ckpt.path)
    return removed
