"""The tokenizer stage, trained once on a slice of Tiny Shakespeare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from tests.support.data import SHARED_DATA
from training.core.reporting import Cancelled, RecordingReporter
from training.core.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    TokenizerConfig,
    run,
)

# The shared data folder next to the repository (the same override as tests/conftest.py).
SHAKESPEARE = SHARED_DATA / "pretrain" / "tinyshakespeare.txt"
VOCAB = 1024
RESERVED = 3


def shakespeare_slice(target: Path, size: int) -> Path:
    """Copy the first ``size`` bytes of the shared corpus into the test's temp folder."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not available")
    with open(SHAKESPEARE, "rb") as fh:
        target.write_bytes(fh.read(size))
    return target


class Trained(NamedTuple):
    out: Path
    result: dict[str, Any]
    reporter: RecordingReporter


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("tokenizer")
    corpus = shakespeare_slice(root / "shakespeare.txt", 300_000)
    cfg = TokenizerConfig(vocab_size=VOCAB, num_reserved_tokens=RESERVED, model_max_length=256)
    reporter = RecordingReporter()
    result = run(cfg, {"corpus": [corpus]}, root / "out", reporter)
    return Trained(root / "out", result, reporter)


@pytest.fixture(scope="module")
def tok(trained: Trained) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained.out)


def test_output_folder_holds_a_v5_tokenizer_and_manifest(trained: Trained) -> None:
    out, result, _reporter = trained
    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
    manifest = json.loads((out / "orchard.json").read_text())
    assert manifest["kind"] == "tokenizer"
    assert manifest["config"]["vocab_size"] == VOCAB
    assert manifest["stats"]["num_merges"] == result["num_merges"]


def test_special_token_ids(tok: Any) -> None:
    named = SPECIAL_TOKENS + TOOL_TOKENS
    assert tok.convert_tokens_to_ids(named) == list(range(8))
    reserved = [f"<|reserved_{i}|>" for i in range(RESERVED)]
    assert tok.convert_tokens_to_ids(reserved) == list(range(8, 8 + RESERVED))
    for token in named + reserved:
        assert len(tok.encode(token, add_special_tokens=False)) == 1
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|endoftext|>",
        "<|im_end|>",
        "<|pad|>",
        None,
    )
    assert tok.model_max_length == 256
    assert tok.encode("<|im_start|>user", add_special_tokens=False)[0] == 2


def test_byte_level_round_trip_is_lossless(tok: Any) -> None:
    for text in ["naïve café 𝔘 日本語", "tabs\tand\r\nnewlines  ", "emoji 🍎🍐 and \x00 nul"]:
        assert tok.decode(tok.encode(text)) == text


def test_chat_template_masks_exactly_the_assistant_turns(tok: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "weather", "arguments": {"city": "X"}}}
            ],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    enc = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == (
        "Hello there.<|im_end|>"
        '<|tool_call|>{"name": "weather", "arguments": {"city": "X"}}<|/tool_call|><|im_end|>'
        "Sunny.<|im_end|>"
    )
    text = tok.apply_chat_template(messages, tokenize=False)
    assert "<|im_start|>tool\n<|tool_result|>sunny<|/tool_result|><|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")


def test_generation_prompt(tok: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(messages, tokenize=False) == "<|im_start|>user\nHi<|im_end|>\n"
    assert tok.chat_template == CHAT_TEMPLATE


def test_unknown_role_is_refused(tok: Any) -> None:
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="unknown chat role: narrator"):
        tok.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)


def test_result_stats_are_consistent(trained: Trained, tok: Any) -> None:
    _out, result, reporter = trained
    json.dumps(result)  # JSON-serialisable
    assert result["vocab_size"] == len(tok) == len(tok.get_vocab()) == VOCAB
    assert result["num_merges"] == VOCAB - 256 - 8 - RESERVED
    assert result["bytes_read"] == 300_000
    assert result["eval_source"] == "held_out"
    assert result["eval_documents"] == result["documents"] // 100
    assert result["bytes_per_token"] > 1
    assert result["chars_per_token"] > 1
    assert result["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS + TOOL_TOKENS)}
    assert len(result["longest_tokens"]) == 10
    lengths = [len(t.encode()) for t in result["longest_tokens"]]
    assert lengths == sorted(lengths, reverse=True)
    histogram = result["token_length_histogram"]
    assert list(histogram)[0] == "1" and list(histogram)[-1] == "16+"
    assert histogram["1"] == 256
    assert sum(histogram.values()) == VOCAB - 8 - RESERVED

    sample = result["sample"]
    assert "".join(piece for piece, _ in sample["tokens"]) == sample["text"]
    assert [i for _, i in sample["tokens"]] == tok.encode(sample["text"])

    chat = result["chat_sample"]
    assert chat["text"].startswith("<|im_start|>system\n")
    assistant = "".join(piece for piece, _, is_assistant in chat["tokens"] if is_assistant)
    assert assistant == "2 + 3 = 5.<|im_end|>"

    assert reporter.progress_calls[-1][0] == reporter.progress_calls[-1][1] == 300_000
    (values, _step), *_ = reporter.metric_calls
    assert values == {k: result[k] for k in ("bytes_per_token", "chars_per_token")}


def test_multibyte_sample_pieces_show_bytes(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"doc {i} about apples"}) + "\n" for i in range(50))
    )
    cfg = TokenizerConfig(vocab_size=512, num_reserved_tokens=0, sample_text="é apples")
    result = run(cfg, {"corpus": [corpus]}, tmp_path / "out", RecordingReporter())
    pieces = [piece for piece, _ in result["sample"]["tokens"]]
    assert pieces[:2] == ["<0xC3>", "<0xA9>"]  # 'é' was never seen, so it stays two byte tokens
    assert result["eval_source"] == "training_sample"  # fewer than 100 documents


def test_max_corpus_mb_limits_reading(tmp_path: Path) -> None:
    corpus = shakespeare_slice(tmp_path / "c.txt", 1_100_000)
    cfg = TokenizerConfig(vocab_size=512, max_corpus_mb=1)
    result = run(cfg, {"corpus": [corpus]}, tmp_path / "out", RecordingReporter())
    assert 1_000_000 <= result["bytes_read"] < 1_010_000


def test_cancel_stops_training(tmp_path: Path) -> None:
    corpus = shakespeare_slice(tmp_path / "c.txt", 200_000)
    cfg = TokenizerConfig(vocab_size=512)

    # Without a cancel, this corpus and interval give many progress reports ...
    full = RecordingReporter()
    run(cfg, {"corpus": [corpus]}, tmp_path / "full", full, progress_interval=0.0)
    assert len(full.progress_calls) > 10

    # ... so a cancel after the first one lands while the corpus is being read.
    cancelling = RecordingReporter(stop_after_progress_calls=1)
    with pytest.raises(Cancelled):
        run(cfg, {"corpus": [corpus]}, tmp_path / "out", cancelling, progress_interval=0.0)
    assert len(cancelling.progress_calls) == 1
    assert not (tmp_path / "out" / "orchard.json").exists()


def test_corpus_problems_surface_before_training(tmp_path: Path) -> None:
    from training.core.corpus import CorpusError

    cfg = TokenizerConfig(vocab_size=512)
    with pytest.raises(CorpusError, match="at least one corpus file"):
        run(cfg, {}, tmp_path / "out", RecordingReporter())
    with pytest.raises(CorpusError, match="unsupported"):
        run(cfg, {"corpus": [tmp_path / "c.csv"]}, tmp_path / "out", RecordingReporter())
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CorpusError, match="no documents"):
        run(cfg, {"corpus": [empty]}, tmp_path / "out", RecordingReporter())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"vocab_size": 100}, "vocab_size"),
        ({"vocab_size": 300_000}, "vocab_size"),
        ({"vocab_size": 520, "num_reserved_tokens": 256}, "vocab_size"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"sample_text": "x" * 2001}, "sample_text"),
        ({"vocab_sise": 1000}, "vocab_sise"),
    ],
)
def test_config_validation_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        TokenizerConfig.model_validate(data)
    assert field in str(exc.value)
    assert [err["loc"] for err in exc.value.errors()] == [(field,)]


def test_config_defaults_and_descriptions() -> None:
    cfg = TokenizerConfig()
    assert (cfg.vocab_size, cfg.min_frequency, cfg.num_reserved_tokens) == (8192, 2, 8)
    assert (cfg.model_max_length, cfg.max_corpus_mb) == (2048, 0)
    assert all(f.description for f in TokenizerConfig.model_fields.values())
