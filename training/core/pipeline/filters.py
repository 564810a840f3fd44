"""Heuristic quality filters on extracted text: Gopher repetition, Gopher quality, C4, FineWeb.

These are the four text filters FineWeb runs (datatrove ``examples/fineweb.py``), in that order,
with datatrove's defaults, which are the thresholds in ``shared/docs/PIPELINE.md`` sections 6-9:

- :func:`gopher_repetition`: Gopher (Rae et al. 2021) Table A1. Drop when the fraction of
  duplicated lines / paragraphs, of characters in them, in the most frequent 2-4-gram or in
  duplicated 5-10-grams is *above* its threshold.
- :func:`gopher_quality`: Gopher's quality rules: 50-100,000 non-symbol words, mean word length
  3-10, at most 0.1 ``#`` or ellipses per word, at most 90 % bullet lines and 30 % ellipsis lines,
  at least 80 % of words with a letter, at least 2 of 8 English stop words.
- :func:`c4_lines`: C4's line cleanup as FineWeb configures it (no terminal-punctuation rule):
  rewrites the text, dropping lines and whole documents.
- :func:`fineweb_quality`: FineWeb's line-level ratios.

Each returns a :class:`Verdict`: keep or drop, the reason (the first rule that failed) and the
measured values as ``scores``, so a dropped document can be explained. Comparisons are strict
where the reference is ("drop if above 0.3" keeps 0.3 exactly).

Simplifications against datatrove: words come from a regular expression instead of spaCy's English
tokenizer (words keep inner apostrophes and dots, every other punctuation mark is its own token;
URLs are split), and C4 counts sentences by terminal punctuation followed by a space instead of
spaCy's sentencizer. Word counts on ordinary prose agree within a few percent.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

# Unicode sentence terminals (the Basic Multilingual Plane part of datatrove's
# TERMINAL_PUNCTUATION): FineWeb's "line ends in terminal punctuation" uses this set.
TERMINAL_PUNCTUATION = tuple(
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕៖៙៚᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᭽᭾᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼⹓⹔。꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡"
)

# Words as spaCy's English tokenizer (what datatrove uses) cuts them, closely enough for counting:
# URLs whole; initials and dotted abbreviations keep their dots; "'s", "'m", "n't"-style endings
# split off; dots, commas, colons and hyphens stay inside words where spaCy keeps them (3.5,
# 10,000, 12:30, COVID-19, example.org) but a dot between a lower-case and an upper-case letter
# splits ("end.Next"); ellipses, single sentence marks and other punctuation runs are tokens.
_SENTENCE_MARKS = ".!?。！？"
_WORD = re.compile(
    r"""
    (?:[a-z][a-z0-9+.-]*://|www\.)\S+?(?=[.,;:!?)\]'"]*(?:\s|$))
  | (?:[A-Za-z]{1,2}\.){2,}
  | [A-Z]\.(?=\s)
  | \w+(?:(?:(?<![a-z])\.|\.(?![A-Z])|(?<=\d)[,:](?=\d)|-(?=\d)|(?<=\d)–(?=\d)
        |['’](?!(?:s|m|re|ve|ll|d|t)\b))\w+)*
  | ['’](?:s|m|re|ve|ll|d|t)\b
  | \.{2,}|…
  | [.!?。！？]
  | [^\w\s.!?。！？…]+
    """,
    re.VERBOSE,
)
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str = ""
    scores: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # the rewritten text, for filters that change it (C4)


@lru_cache(maxsize=8)
def split_words(text: str) -> tuple[str, ...]:
    """Words and punctuation marks, in order (stands in for spaCy's tokenizer): exactly
    ``_WORD.findall(text)``. Cached: the Gopher filters split the same text one after the
    other."""
    return tuple(_words_of(text, ends_text=True))


@lru_cache(maxsize=8)
def line_words(text: str) -> tuple[tuple[str, ...], ...]:
    """The words of each line of ``text`` (lines end at line feeds) as :func:`split_words` cuts
    the whole text, so together they are ``split_words(text)``. Cached: C4 counts sentences per
    line of the text it keeps and FineWeb counts the words of that same text."""
    lines = text.split("\n")
    inner = (tuple(_words_of(line, ends_text=False)) for line in lines[:-1])
    return (*inner, tuple(_words_of(lines[-1], ends_text=True)))


def _words_of(piece: str, *, ends_text: bool) -> list[str]:
    r"""``_WORD`` matches in ``piece``, a stretch of a text that whitespace follows, or that ends
    the text (``ends_text``).

    No ``_WORD`` match holds whitespace, every other character starts one and no lookbehind
    reaches back before a match, so the words are those of each whitespace-separated chunk,
    each chunk split on its own with a space after it (whitespace is all the lookaheads can see
    there). A chunk of letters and digits only (most of them) is one word: only the rest needs
    the slow regex. The last chunk of the text is split without the space: ``[A-Z]\.(?=\s)``
    tells the two apart.
    """
    chunks = piece.split()
    last = chunks.pop() if ends_text and chunks and not piece[-1].isspace() else None
    words: list[str] = []
    for chunk in chunks:
        if chunk.isalnum():
            words.append(chunk)
        else:
            words += _WORD.findall(chunk + " ")
    if last is not None:
        words += [last] if last.isalnum() else _WORD.findall(last)
    return words


def _is_symbol(word: str) -> bool:
    return not (word[0].isalnum() or any(ch.isalnum() for ch in word))


def _has_letter(word: str) -> bool:
    return word[0].isalpha() or any(ch.isalpha() for ch in word)


def _first_failure(scores: dict[str, Any], rules: list[tuple[str, bool]]) -> Verdict:
    """Drop on the first rule (name, failed) that failed, else keep; scores go along either way."""
    for reason, failed in rules:
        if failed:
            return Verdict(False, reason, scores)
    return Verdict(True, "", scores)


# --- Gopher repetition (PIPELINE.md section 6) -------------------------------------------------

DUP_LINE_FRAC = 0.30
DUP_PARA_FRAC = 0.30
DUP_LINE_CHAR_FRAC = 0.20
DUP_PARA_CHAR_FRAC = 0.20
TOP_NGRAM_CHAR_FRAC = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM_CHAR_FRAC = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and how many characters those repeats hold."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


@dataclass(frozen=True)
class _Repeats:
    """The n-grams of one length n that occur more than once in a text."""

    positions: np.ndarray  # where each occurrence starts, ascending
    hashes: np.ndarray  # the n-gram hash at each of those positions
    top_count: int  # occurrences of the most frequent n-gram (1 when none repeats)
    top_start: int  # where the most frequent n-gram (the first seen among equals) first starts


def _find_repeats(positions: np.ndarray, hashes: np.ndarray) -> _Repeats:
    """Which of the n-grams at ``positions`` (ascending) with these ``hashes`` occur more than
    once among them, found by sorting the hashes."""
    nothing = _Repeats(positions[:0], hashes[:0], 1, 0)
    if not len(hashes):
        return nothing
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(starts, append=len(ordered))
    most = int(counts.max())
    if most == 1:
        return nothing
    # a stable sort of ascending positions: each group's first entry is its first occurrence
    top_start = int(positions[order[starts[counts == most]]].min())
    repeated = np.sort(order[np.repeat(counts > 1, counts)])
    return _Repeats(positions[repeated], hashes[repeated], most, top_start)


class _NGrams:
    """The n-grams of a word sequence as 64-bit hashes (rolling: ``h_n = h_(n-1) * M + word``),
    so repeats are counted without building the n-gram strings. Word values come from Python's
    ``hash``, which is consistent within a process: enough, as n-grams are only compared within
    one document."""

    MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, words: tuple[str, ...]) -> None:
        count = len(words)
        self.words = np.fromiter(map(hash, words), dtype=np.int64, count=count).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=count)
        self.offsets = np.concatenate(([0], np.cumsum(lengths)))
        self._repeats: dict[int, _Repeats] = {}

    def repeats(self, n: int) -> _Repeats:
        """The n-grams occurring more than once. The (n-1)-word prefix of such an n-gram occurs
        more than once too, at the same positions, so only the positions of repeated
        (n-1)-grams are looked at: most of the text for n = 2, a few percent from n = 4 on."""
        if n not in self._repeats:
            if n == 1:
                positions, hashes = np.arange(len(self.words)), self.words
            else:
                shorter = self.repeats(n - 1)
                positions = shorter.positions[shorter.positions <= len(self.words) - n]
                prefixes = shorter.hashes[: len(positions)]  # positions are ascending
                hashes = prefixes * self.MULTIPLIER + self.words[positions + n - 1]
            self._repeats[n] = _find_repeats(positions, hashes)
        return self._repeats[n]

    def letters(self, n: int) -> np.ndarray:
        """Characters of each n-gram's words, separators not counted."""
        return self.offsets[n:] - self.offsets[:-n]

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram joined with spaces, times its count; ties go to
        the n-gram seen first (as ``Counter.most_common`` picks)."""
        if len(self.words) < n:
            return 0
        repeats = self.repeats(n)  # when nothing repeats, every n-gram ties: the first one wins
        return int(self.letters(n)[repeats.top_start] + n - 1) * repeats.top_count

    def duplicated_chars(self, n: int) -> int:
        """Characters (separators not counted) in n-grams that repeat an earlier one; a repeat
        skips ahead n words so overlapping repeats are not counted twice (Gopher's definition,
        as datatrove codes it).

        Only n-grams occurring more than once can ever repeat, so only their positions are
        walked; ``follow`` is the next position the word-by-word walk would look at.
        """
        repeats = self.repeats(n)
        if not len(repeats.positions):  # the common case for n >= 5: nothing repeats
            return 0
        letters = self.letters(n)
        seen: set[int] = set()
        chars = follow = 0
        for position, gram in zip(repeats.positions.tolist(), repeats.hashes.tolist(), strict=True):
            if position < follow:  # skipped over by an earlier repeat
                continue
            if gram in seen:
                chars += int(letters[position])
                follow = position + n
            else:
                seen.add(gram)
                follow = position + 1
        return chars


def gopher_repetition(text: str) -> Verdict:
    if not text:
        return Verdict(False, "empty")
    length = len(text)
    paragraphs = _PARAGRAPH_BREAK.split(text.strip())
    para_dups, para_chars = _duplicates(paragraphs)
    lines = _LINE_BREAKS.split(text)
    line_dups, line_chars = _duplicates(lines)
    scores: dict[str, Any] = {
        "dup_para_frac": para_dups / len(paragraphs),
        "dup_para_char_frac": para_chars / length,
        "dup_line_frac": line_dups / len(lines),
        "dup_line_char_frac": line_chars / length,
    }
    rules = [
        ("dup_para_frac", scores["dup_para_frac"] > DUP_PARA_FRAC),
        ("dup_para_char_frac", scores["dup_para_char_frac"] > DUP_PARA_CHAR_FRAC),
        ("dup_line_frac", scores["dup_line_frac"] > DUP_LINE_FRAC),
        ("dup_line_char_frac", scores["dup_line_char_frac"] > DUP_LINE_CHAR_FRAC),
    ]
    verdict = _first_failure(scores, rules)
    if not verdict.keep:  # the n-gram measures are the expensive part: skip them when decided
        return verdict
    grams = _NGrams(split_words(text))
    for n, limit in TOP_NGRAM_CHAR_FRAC.items():
        scores[f"top_{n}_gram"] = grams.top_chars(n) / length
        rules.append((f"top_{n}_gram", scores[f"top_{n}_gram"] > limit))
    for n, limit in DUP_NGRAM_CHAR_FRAC.items():
        scores[f"duplicated_{n}_n_grams"] = grams.duplicated_chars(n) / length
        rules.append((f"duplicated_{n}_n_grams", scores[f"duplicated_{n}_n_grams"] > limit))
    return _first_failure(scores, rules)


# --- Gopher quality (PIPELINE.md section 7) ----------------------------------------------------

MIN_WORDS = 50
MAX_WORDS = 100_000
MIN_MEAN_WORD_LENGTH = 3
MAX_MEAN_WORD_LENGTH = 10
MAX_SYMBOL_WORD_RATIO = 0.1
MAX_BULLET_LINES_RATIO = 0.9
MAX_ELLIPSIS_LINES_RATIO = 0.3
MIN_ALPHA_WORDS_RATIO = 0.8
MIN_STOP_WORDS = 2
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


def gopher_quality(text: str) -> Verdict:
    words = split_words(text)
    # Each distinct word is classified once: a text repeats most of its words.
    counts = Counter(words)
    real = {word: count for word, count in counts.items() if not _is_symbol(word)}
    n_real = sum(real.values())
    scores: dict[str, Any] = {"words": n_real}
    if n_real < MIN_WORDS:
        return Verdict(False, "short_doc", scores)
    if n_real > MAX_WORDS:
        return Verdict(False, "long_doc", scores)
    n_words = len(words)  # ratios per word count symbols too, as the reference does
    lines = text.splitlines()
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    ellipsis_lines = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    scores |= {
        "mean_word_length": sum(len(word) * count for word, count in real.items()) / n_real,
        "hash_ratio": text.count("#") / n_words,
        "ellipsis_ratio": (text.count("...") + text.count("…")) / n_words,
        "bullet_lines_ratio": bullets / len(lines),
        "ellipsis_lines_ratio": ellipsis_lines / len(lines),
        "alpha_words_ratio": sum(c for word, c in counts.items() if _has_letter(word)) / n_words,
        # distinct stop words, matched case-sensitively like datatrove
        "stop_words": len(STOP_WORDS.intersection(counts)),
    }
    return _first_failure(
        scores,
        [
            ("short_words", scores["mean_word_length"] < MIN_MEAN_WORD_LENGTH),
            ("long_words", scores["mean_word_length"] > MAX_MEAN_WORD_LENGTH),
            ("too_many_hashes", scores["hash_ratio"] > MAX_SYMBOL_WORD_RATIO),
            ("too_many_ellipsis", scores["ellipsis_ratio"] > MAX_SYMBOL_WORD_RATIO),
            ("too_many_bullet_lines", scores["bullet_lines_ratio"] > MAX_BULLET_LINES_RATIO),
            ("too_many_ellipsis_lines", scores["ellipsis_lines_ratio"] > MAX_ELLIPSIS_LINES_RATIO),
            ("too_few_alpha_words", scores["alpha_words_ratio"] < MIN_ALPHA_WORDS_RATIO),
            ("too_few_stop_words", scores["stop_words"] < MIN_STOP_WORDS),
        ],
    )


# --- C4 line filter, FineWeb settings (PIPELINE.md section 8) ----------------------------------

MAX_WORD_LENGTH = 1000
MIN_WORDS_PER_LINE = 3
MIN_SENTENCES = 5
CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
TERMINAL_LINE_ENDINGS = (".", "?", "!", '"', "'")


def count_sentences(line: str) -> int:
    """Sentences as spaCy's sentencizer counts them: a new one starts at the first word after a
    lone sentence mark (so "Dr. G. Allen" and "wait..." do not end a sentence)."""
    return _sentences(split_words(line))


def _sentences(words: tuple[str, ...]) -> int:
    """:func:`count_sentences` of the line with these words."""
    sentences = 1 if words else 0
    after_mark = False
    for word in words:
        if word in _SENTENCE_MARKS:
            after_mark = True
        elif after_mark and not _is_symbol(word):
            sentences += 1
            after_mark = False
    return sentences


def c4_lines(text: str, require_terminal_punctuation: bool = False) -> Verdict:
    """Clean line by line; the kept lines become the new text (``Verdict.text``).

    ``require_terminal_punctuation`` restores C4's rule FineWeb turns off: keep only lines ending
    in ``. ? ! " '`` and not in ``...``.
    """
    dropped = Counter[str]()
    kept: list[str] = []
    lines = text.splitlines()
    for raw_line in lines:
        line = raw_line.strip()
        words = line.split()
        if len(line) > MAX_WORD_LENGTH and any(len(word) > MAX_WORD_LENGTH for word in words):
            dropped["long_word"] += 1
            continue
        line = CITATION.sub("", line)
        if require_terminal_punctuation and (
            not line.endswith(TERMINAL_LINE_ENDINGS) or line.endswith("...")
        ):
            dropped["no_terminal_punctuation"] += 1
            continue
        if len(words) < MIN_WORDS_PER_LINE:
            dropped["few_words"] += 1
            continue
        lowered = line.lower()
        if "lorem ipsum" in lowered:
            return Verdict(False, "lorem_ipsum", {"lines": len(lines)})
        if "javascript" in lowered:
            dropped["javascript"] += 1
            continue
        if "{" in line:
            return Verdict(False, "curly_bracket", {"lines": len(lines)})
        if any(phrase in lowered for phrase in POLICY_PHRASES):
            dropped["policy"] += 1
            continue
        kept.append(line)
    cleaned = "\n".join(kept).strip()
    # Sentences of each kept line, from the words of the cleaned text (FineWeb's filter reuses
    # them): a line's words there differ from the line's own only where it ends in a capital
    # and a full stop ("A." is one word before whitespace, "A" and "." end a string), and both
    # count the same sentences.
    sentences = sum(map(_sentences, line_words(cleaned)))
    scores = {
        "lines": len(lines),
        "lines_kept": len(kept),
        "lines_dropped": dict(dropped),
        "sentences": sentences,
    }
    if sentences < MIN_SENTENCES:
        return Verdict(False, "too_few_sentences", scores)
    return Verdict(True, "", scores, text=cleaned)


# --- FineWeb quality (PIPELINE.md section 9) ---------------------------------------------------

MIN_LINE_PUNCT_RATIO = 0.12
SHORT_LINE_LENGTH = 30
MAX_SHORT_LINE_RATIO = 0.67
MAX_CHAR_DUP_RATIO = 0.01
MAX_NEWLINE_WORD_RATIO = 0.3


def fineweb_quality(text: str) -> Verdict:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return Verdict(False, "empty")
    words = sum(map(len, line_words(text)))  # as len(split_words(text)), shared with C4
    chars = len(text.replace("\n", ""))
    scores: dict[str, Any] = {
        "line_punct_ratio": sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines),
        "short_line_ratio": sum(len(line) <= SHORT_LINE_LENGTH for line in lines) / len(lines),
        "char_dup_ratio": _duplicates(lines)[1] / chars,
        # a non-blank line holds at least one token, so words is not 0 here
        "list_ratio": text.count("\n") / words,
    }
    return _first_failure(
        scores,
        [
            ("line_punct_ratio", scores["line_punct_ratio"] < MIN_LINE_PUNCT_RATIO),
            ("short_line_ratio", scores["short_line_ratio"] > MAX_SHORT_LINE_RATIO),
            ("char_dup_ratio", scores["char_dup_ratio"] > MAX_CHAR_DUP_RATIO),
            ("list_ratio", scores["list_ratio"] > MAX_NEWLINE_WORD_RATIO),
        ],
    )
