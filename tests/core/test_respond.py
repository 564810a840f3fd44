"""The responses stage: K seeded replies per prompt from each checkpoint, in a fixed layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.core.reporting import RecordingReporter
from training.core.respond import ResponsesConfig, read_prompts, run


def write_prompts(path: Path, prompts: list[str]) -> Path:
    lines = [json.dumps({"id": i, "prompt": [{"role": "user", "content": p}]}) for i, p in
             enumerate(prompts)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replies_per_checkpoint_are_seeded(tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["Hi", "2+3?", "Name?"])
    cfg = ResponsesConfig(samples_per_checkpoint=2, max_new_tokens=5, seed=3)
    inputs = {"checkpoints": [tiny_model_dir, tiny_model_dir], "prompts": [prompts]}
    reporter = RecordingReporter()
    result = run(cfg, inputs, tmp_path / "a", reporter)
    rows = [
        json.loads(line) for line in (tmp_path / "a" / "responses.jsonl").read_text().splitlines()
    ]
    assert result["prompts"] == 3 and result["responses"] == 12
    assert [r["id"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert [(r["checkpoint"], r["sample"]) for r in row["responses"]] == [
            (0, 0), (0, 1), (1, 0), (1, 1)
        ]  # fmt: skip
    run(cfg, inputs, tmp_path / "b", RecordingReporter())
    again = (tmp_path / "b" / "responses.jsonl").read_text()
    assert again == (tmp_path / "a" / "responses.jsonl").read_text()
    assert reporter.progress_calls[-1][:2] == (6, 6)


def test_prompts_must_end_with_a_user_turn(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "assistant", "content": "x"}]}) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 1: the prompt must end with a user turn"):
        read_prompts(bad)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(empty)
