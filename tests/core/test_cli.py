"""``python -m training.core``: the same stages, run from the shell without Django."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-m", "training.core", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tiny_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.jsonl"
    lines = [{"text": f"Document {i}: the orchard has {i} apple trees."} for i in range(300)]
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return corpus


def test_tokenizer_stage_runs_from_the_shell(tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"vocab_size": 512, "num_reserved_tokens": 2}))
    out = tmp_path / "out"
    corpus = f"corpus={tiny_corpus(tmp_path)}"
    done = run_cli(
        "tokenizer", "--config", config, "--input", corpus, "--input", corpus, "--out", out
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["documents"] == 600  # a repeated input name collects a list of files
    assert "[progress]" in done.stderr

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == result["vocab_size"]
    assert tok.convert_tokens_to_ids("<|reserved_1|>") == 9


def test_bad_config_exits_2_and_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"vocab_size": 10, "colour": "red"}))
    done = run_cli(
        "tokenizer",
        "--config",
        config,
        "--input",
        f"corpus={tiny_corpus(tmp_path)}",
        "--out",
        tmp_path / "out",
    )
    assert done.returncode == 2
    assert "vocab_size" in done.stderr
    assert "colour" in done.stderr
    assert not (tmp_path / "out").exists()


def test_bad_corpus_exits_1_with_the_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    done = run_cli("tokenizer", "--input", f"corpus={corpus}", "--out", tmp_path / "out")
    assert done.returncode == 1
    assert "line 2" in done.stderr and '"text"' in done.stderr


def test_help_and_usage_errors() -> None:
    assert run_cli("--help").returncode == 0
    assert run_cli("no-such-stage", "--out", "x").returncode == 2
    assert run_cli("tokenizer", "--input", "no-equals-sign", "--out", "x").returncode == 2
