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
