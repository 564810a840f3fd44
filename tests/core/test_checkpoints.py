"""Atomic checkpoints: only complete, intact checkpoints are ever resumed from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from training.core.checkpoints import (
    COMPLETE,
    latest_complete,
    list_complete,
    prune,
    save_checkpoint,
    tree_digest,
)


def writer(content: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_text(content)
        (folder / "sub").mkdir()
        (folder / "sub" / "state.json").write_text('{"lr": 0.1}')

    return write


def test_save_then_latest_complete_round_trip(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 10, writer("a"), meta={"loss": 2.5})
    saved = save_checkpoint(tmp_path, 20, writer("b"), meta={"loss": 1.5})
    assert saved.path == tmp_path / "step_00000020"
    latest = latest_complete(tmp_path)
    assert latest is not None
    assert (latest.step, latest.meta, latest.path) == (20, {"loss": 1.5}, saved.path)
    assert (latest.path / "weights.bin").read_text() == "b"
    assert (latest.path / "sub" / "state.json").is_file()
    assert [c.step for c in list_complete(tmp_path)] == [10, 20]


def test_nothing_to_resume_from(tmp_path: Path) -> None:
    assert latest_complete(tmp_path / "missing") is None
    assert latest_complete(tmp_path) is None


def test_temp_folders_and_folders_without_complete_are_ignored(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 5, writer("good"))
    leftover = tmp_path / ".tmp-step_00000009-deadbeef"
    leftover.mkdir()
    (leftover / "weights.bin").write_text("half written")
    incomplete = tmp_path / "step_00000010"
    incomplete.mkdir()
    (incomplete / "weights.bin").write_text("no marker")
    latest = latest_complete(tmp_path)
    assert latest is not None and latest.step == 5
    assert [c.step for c in list_complete(tmp_path)] == [5]


def test_checkpoint_modified_after_complete_is_skipped(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, writer("first"))
    newest = save_checkpoint(tmp_path, 2, writer("second"))
    (newest.path / "weights.bin").write_text("corrupted")
    latest = latest_complete(tmp_path)
    assert latest is not None and latest.step == 1


def test_checkpoint_with_a_missing_file_is_skipped(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, writer("first"))
    newest = save_checkpoint(tmp_path, 2, writer("second"))
    (newest.path / "sub" / "state.json").unlink()
    latest = latest_complete(tmp_path)
    assert latest is not None and latest.step == 1


def test_exception_inside_write_leaves_no_folder(tmp_path: Path) -> None:
    def explode(folder: Path) -> None:
        (folder / "weights.bin").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 3, explode)
    assert list(tmp_path.iterdir()) == []


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 4, writer("old"))
    save_checkpoint(tmp_path, 4, writer("new"))
    latest = latest_complete(tmp_path)
    assert latest is not None and (latest.path / "weights.bin").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000004"]


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    saved = [save_checkpoint(tmp_path, step, writer(str(step))) for step in (1, 2, 3, 4, 5)]
    (tmp_path / ".tmp-step_00000006-cafebabe").mkdir()
    removed = prune(tmp_path, keep=2, protect={saved[0].path})
    assert {p.name for p in removed} == {
        "step_00000002",
        "step_00000003",
        ".tmp-step_00000006-cafebabe",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000001",
        "step_00000004",
        "step_00000005",
    ]


def test_prune_never_removes_a_protected_newest(tmp_path: Path) -> None:
    saved = [save_checkpoint(tmp_path, step, writer(str(step))) for step in (1, 2, 3)]
    prune(tmp_path, keep=0, protect={saved[2].path})
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]


def test_tree_digest_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (a, b, c):
        folder.mkdir()
        writer("same")(folder)
    original = tree_digest(a)
    assert tree_digest(b) == original == tree_digest(a)
    (a / COMPLETE).write_text("markers do not count")
    assert tree_digest(a) == original
    (b / "weights.bin").write_text("changed")
    assert tree_digest(b) != original
    (c / "sub" / "state.json").rename(c / "sub" / "renamed.json")  # names count, not only bytes
    assert tree_digest(c) != original
