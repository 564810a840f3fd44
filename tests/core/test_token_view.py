"""The tokenizer playground's view of text: pieces, offsets, per-character layout, stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.core.reporting import RecordingReporter
from training.core.token_view import load_tokenizer, pieces, text_stats
from training.core.tokenizer import TokenizerConfig, run

TEXT = "the strawberry is red. café 日本\n<|im_start|>user"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "c.txt"
    corpus.write_text("\n\n".join(f"the berry number {i} is red and sweet" for i in range(400)))
    run(TokenizerConfig(vocab_size=600), {"corpus": [corpus]}, folder / "out", RecordingReporter())
    return load_tokenizer(folder / "out")


def test_pieces_cover_the_text_in_order_with_ids(tokenizer) -> None:
    found = pieces(tokenizer, TEXT)
    assert [p.token_id for p in found] == tokenizer.encode(TEXT, add_special_tokens=False).ids
    joined = "".join(p.text for p in found if "<0x" not in p.text)
    assert "the strawberry is red. caf" in joined  # é may be two byte tokens
    marker = next(p for p in found if p.special)
    assert (marker.text, marker.token_id) == ("<|im_start|>", 2)
    assert TEXT[marker.start : marker.end] == "<|im_start|>"
    assert all(p.start <= p.end for p in found)


def test_a_word_is_fewer_tokens_than_letters(tokenizer) -> None:
    word = pieces(tokenizer, "strawberry")
    assert 1 < len(word) < len("strawberry")
    assert sum(len(p.characters) for p in word) == len("strawberry")


def test_multibyte_characters_split_across_tokens_show_their_bytes(tokenizer) -> None:
    shown = [p.text for p in pieces(tokenizer, "日本")]
    assert any(text.startswith("<0x") for text in shown)


def test_text_stats(tokenizer) -> None:
    stats = text_stats(tokenizer, ["the berry is red", "café"])
    assert stats.characters == 20 and stats.bytes == 21
    assert stats.tokens > 0 and stats.chars_per_token == pytest.approx(20 / stats.tokens)


def test_loading_reads_only_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="tokenizer.json|No such file"):
        load_tokenizer(tmp_path)


def test_chat_segments_match_the_tokenizers_template_and_mask(tiny_model_dir) -> None:
    """The editor's ChatML view renders without transformers; it must equal what training sees."""
    from transformers import AutoTokenizer

    from training.core.token_view import chat_pieces, chat_segments, load_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    call = {"name": "calc", "arguments": {"z": "<b>", "expr": "2+2é"}}
    conversations = [
        [
            {"role": "system", "content": "Be <nice> & 'kind'"},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "Let me compute.", "tool_calls": [
                {"type": "function", "function": call}]},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "It is 4."},
        ],
        [{"role": "user", "content": " leading space\n\nand lines"},
         {"role": "assistant", "content": "\n"}],
    ]  # fmt: skip
    fast = load_tokenizer(tiny_model_dir)
    for messages in conversations:
        rendered = "".join(s.text for s in chat_segments(messages))
        assert rendered == tok.apply_chat_template(messages, tokenize=False)
        reference = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        pieces = chat_pieces(fast, messages)
        assert [p.piece.token_id for p in pieces] == list(reference["input_ids"])
        assert [int(p.trained) for p in pieces] == list(reference["assistant_masks"])
