"""Checkpoints a Hugging Face ``Trainer`` (so every TRL trainer) writes, made safe to resume.

The Trainer writes ``checkpoint-<step>`` folders in place, not atomically: a worker killed during a
save leaves a half-written folder that ``get_last_checkpoint`` would happily pick. Every stage that
trains through a Trainer marks a folder complete (``COMPLETE``, with the hash of every file) only
once ``on_save`` reports the save finished, resumes only from the newest complete one whose files
still match, and prunes the rest itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from training.core.checkpoints import COMPLETE, hash_tree, read_complete
from training.core.reporting import Reporter

CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's folder names: checkpoint-<global step>


def _step_of(folder: Path) -> int | None:
    suffix = folder.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if folder.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def checkpoint_folders(root: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder under ``root``, complete or not, oldest first."""
    if not root.is_dir():
        return []
    found = [(_step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((step, p) for step, p in found if step is not None)


def mark_complete(folder: Path, step: int, meta: dict[str, Any]) -> None:
    """Flush a finished save to disk and write its ``COMPLETE`` marker (hashes of every file)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    record = {"step": step, "meta": meta, "files": hash_tree(folder)}
    tmp = folder / f".{COMPLETE}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / COMPLETE)


def latest_checkpoint(root: Path, reporter: Reporter) -> tuple[int, Path] | None:
    """The newest complete checkpoint whose files match their hashes.

    Folders without a marker (a save that never finished) are deleted, and so are newer ones
    whose files no longer match it; older complete ones stay until the next prune.
    """
    newest = None
    for step, folder in reversed(checkpoint_folders(root)):
        if newest is None and read_complete(folder, verify=True) is not None:
            newest = (step, folder)
        elif newest is None or read_complete(folder, verify=False) is None:
            reporter.log(f"deleting the incomplete checkpoint {folder.name}")
            shutil.rmtree(folder, ignore_errors=True)
    return newest


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; delete the rest, complete or not."""
    complete = [
        p for _, p in checkpoint_folders(root) if read_complete(p, verify=False) is not None
    ]
    kept = set(complete[-keep:])
    for _, folder in checkpoint_folders(root):
        if folder not in kept:
            shutil.rmtree(folder, ignore_errors=True)
