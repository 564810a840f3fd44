"""Seeing text the way a model sees it: tokens, their ids, and the characters each one covers.

Used by the tokenizer playground. Loads only ``tokenizer.json`` with the ``tokenizers`` library
(milliseconds; no transformers import), so the web process can show it instantly.

A model reads ids, not letters: "strawberry" may be three tokens, and nothing in the ids says
how many r's it has. ``character_view`` lays that out: each token with the characters under it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from training.core.tokenizer import display_piece, token_bytes

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class Piece:
    token_id: int
    text: str  # what the token stands for ("<0xE2>" for part of a multi-byte character)
    start: int  # character offsets into the input text
    end: int
    special: bool

    @property
    def characters(self) -> list[str]:
        return list(self.text) if not self.special else [self.text]


def load_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def pieces(tokenizer: Tokenizer, text: str) -> list[Piece]:
    encoding = tokenizer.encode(text, add_special_tokens=False)
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    result = []
    for token_id, token, (start, end) in zip(
        encoding.ids, encoding.tokens, encoding.offsets, strict=True
    ):
        is_special = token in special
        shown = token if is_special else display_piece(token_bytes(token))
        result.append(Piece(token_id, shown, start, end, is_special))
    return result


@dataclass(frozen=True)
class TextStats:
    characters: int
    bytes: int
    tokens: int

    @property
    def chars_per_token(self) -> float:
        return self.characters / self.tokens if self.tokens else 0.0

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0


def text_stats(tokenizer: Tokenizer, texts: list[str]) -> TextStats:
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return TextStats(
        characters=sum(len(t) for t in texts),
        bytes=sum(len(t.encode("utf-8")) for t in texts),
        tokens=sum(len(e.ids) for e in encodings),
    )


def count_tokens(tokenizer: Tokenizer, texts: Iterable[str], batch_size: int = 512) -> int:
    """Tokens in all ``texts``, encoded in batches (the Rust tokenizer uses every core)."""
    iterator = iter(texts)
    total = 0
    while batch := list(islice(iterator, batch_size)):
        total += sum(len(e.ids) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
    return total


# --- conversations as the model sees them ------------------------------------------------------


@dataclass(frozen=True)
class ChatSegment:
    text: str
    role: str
    trained: bool  # inside the assistant's {% generation %} span: the tokens SFT learns


def chat_segments(messages: list[dict]) -> list[ChatSegment]:
    """The ChatML text of ``messages``, cut where the loss mask changes.

    Mirrors ``tokenizer.CHAT_TEMPLATE`` (a test checks that the joined text and the trained spans
    equal what transformers renders and masks), so the labeling editor can show it on every
    keystroke without importing transformers.
    """
    import json

    segments: list[ChatSegment] = []
    for message in messages:
        role = str(message.get("role", ""))
        segments.append(ChatSegment(f"<|im_start|>{role}\n", role, False))
        content = message.get("content") or ""
        if role == "assistant":
            calls = "".join(
                "<|tool_call|>"
                # transformers' own tojson filter: key order kept, non-ASCII kept
                + json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False)
                + "<|/tool_call|>"
                for fn in (c.get("function", c) for c in message.get("tool_calls") or [])
            )
            segments.append(ChatSegment(f"{content}{calls}<|im_end|>", role, True))
        elif role == "tool":
            segments.append(
                ChatSegment(f"<|tool_result|>{content}<|/tool_result|><|im_end|>", role, False)
            )
        else:
            segments.append(ChatSegment(f"{content}<|im_end|>", role, False))
        segments.append(ChatSegment("\n", role, False))
    return segments


@dataclass(frozen=True)
class ChatPiece:
    piece: Piece
    role: str
    trained: bool


def chat_pieces(tokenizer: Tokenizer, messages: list[dict]) -> list[ChatPiece]:
    """Every token of the rendered conversation with its turn's role and whether it is trained.

    A token belongs to the segment its first character falls in, as in transformers' assistant
    mask (characters → tokens through the offsets).
    """
    segments = chat_segments(messages)
    text = "".join(s.text for s in segments)
    bounds: list[tuple[int, ChatSegment]] = []
    position = 0
    for segment in segments:
        bounds.append((position, segment))
        position += len(segment.text)
    result: list[ChatPiece] = []
    index = 0
    for piece in pieces(tokenizer, text):
        while index + 1 < len(bounds) and bounds[index + 1][0] <= piece.start:
            index += 1
        segment = bounds[index][1]
        result.append(ChatPiece(piece, segment.role, segment.trained))
    return result
