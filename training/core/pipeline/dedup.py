"""Deduplication: exact copies and near-duplicates (MinHash), one document kept per group.

Runs after the per-document filters, over every kept document of the run (FineWeb dedups each
crawl dump separately; an Orchard run is one such unit). PIPELINE.md section 10.

Both methods work on the *normalised* text: lower-cased, diacritics stripped, numbers replaced by
``0``, punctuation replaced by spaces, whitespace collapsed (datatrove's ``simplify_text``).

- Exact: a 64-bit BLAKE2b hash of the normalised text; the first document with a hash is kept.
- Near (FineWeb's ``MinhashConfig``): shingles are word 5-grams of the normalised text, each
  hashed to 64 bits (FineWeb: SHA-1 of the joined words; here a polynomial of per-word hashes,
  see :func:`shingle_hashes`); 112 hash functions ``(h * a + b) mod (2**61 - 1)`` (a, b drawn
  from ``RandomState(1)``, arithmetic wrapping at 64 bits as in datatrove) give a 112-value
  signature, cut into 14 bands of 8. Two documents whose values agree on a whole band are
  duplicates (probability 0.92 at Jaccard similarity 0.8, threshold about 0.72); pairs are merged
  into clusters with union-find and the earliest document of each cluster is kept.

Instead of 8 values per band, each band is stored as one 64-bit hash of them: 15 numbers per
document (the exact hash and 14 bands), so the whole run's dedup index costs 120 bytes per
document on disk, and finding duplicates loads one column at a time (8 bytes per document) and
sorts it. Band collisions are not re-checked against the true Jaccard similarity (neither does
FineWeb).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from functools import cache

import numpy as np

NGRAM = 5
BANDS = 14
ROWS = 8
NUM_HASHES = BANDS * ROWS
SEED = 1
MERSENNE_PRIME = np.uint64((1 << 61) - 1)
KEY_COLUMNS = 1 + BANDS  # exact hash, then one hash per band
_SHINGLE_BLOCK = 256  # shingles per numpy step: 256 x 112 x 8 bytes (229 KB) stay in L2 cache
_SHINGLE_MULTIPLIER = np.uint64(0x100000001B3)  # the 64-bit FNV prime: odd, well spread bits

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


@cache
def _category_class(prefixes: tuple[str, ...]) -> str:
    """A regular-expression character class of every Basic Multilingual Plane character whose
    Unicode category starts with one of ``prefixes``, written as ranges (built once per process;
    the planes above hold almost no such characters)."""
    codes = [c for c in range(0x10000) if unicodedata.category(chr(c)).startswith(prefixes)]
    ranges: list[str] = []  # each run of consecutive code points as one range
    start = codes[0]
    for code, following in zip(codes, [*codes[1:], None], strict=True):
        if following != code + 1:
            ranges.append(f"\\u{start:04x}-\\u{code:04x}")
            start = following
    return "[" + "".join(ranges) + "]"


@cache
def _marks() -> re.Pattern[str]:
    """Non-spacing marks (category Mn): the diacritics NFD splits off letters."""
    return re.compile(_category_class(("Mn",)))


@cache
def _separators() -> re.Pattern[str]:
    """Runs of punctuation, symbols and control characters (categories P, S, C)."""
    return re.compile(_category_class(("P", "S", "C")) + "+")


def normalise(text: str) -> str:
    text = text.lower()
    if not text.isascii():  # only non-ASCII text can carry diacritics
        text = _marks().sub("", unicodedata.normalize("NFD", text))
    text = _NUMBER.sub("0", text)
    # punctuation, symbols and control characters become spaces; letters and the spacing vowel
    # signs of Indic scripts (which \W would count as separators) stay. A whole run becomes one
    # space, which the whitespace collapsing below would make of it anyway; a regular expression
    # scans a character class much faster than str.translate looks each character up in a dict.
    text = _separators().sub(" ", text)
    return " ".join(text.split())


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@cache
def _permutations() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(SEED)
    a = rng.randint(1, MERSENNE_PRIME, dtype=np.uint64, size=(1, NUM_HASHES))
    b = rng.randint(0, MERSENNE_PRIME, dtype=np.uint64, size=(1, NUM_HASHES))
    return a, b


def shingle_hashes(normalised: str) -> np.ndarray:
    """64-bit hashes of the distinct word 5-grams (a text shorter than 5 words is one shingle).

    Each distinct word is hashed once (BLAKE2b, 64 bits) and a 5-gram's hash is the polynomial
    ``((w0 * M + w1) * M + w2) ...`` of its words' hashes, wrapping at 64 bits: computed for all
    5-grams at once, instead of hashing every joined 5-gram string (datatrove: SHA-1 per
    shingle). Any well-mixed 64-bit shingle hash serves MinHash equally.
    """
    words = normalised.split()
    values = _word_hashes(words)
    n = min(NGRAM, len(values))
    if n == 0:
        return np.zeros(1, dtype=np.uint64)  # an empty text is one (empty) shingle
    grams = values[: len(values) - n + 1].copy()
    for offset in range(1, n):
        grams = grams * _SHINGLE_MULTIPLIER + values[offset : len(values) - n + 1 + offset]
    return np.unique(grams)


_WORD_HASHES: dict[str, int] = {}
_WORD_HASHES_MAX = 1 << 20  # about 100 MB of cache at most; emptied when full


def _word_hashes(words: list[str]) -> np.ndarray:
    """``_hash64`` of each word. Word frequencies are skewed, so most words of a document were
    seen in earlier ones: their hashes are remembered (per process; the values never change)."""
    known = _WORD_HASHES
    new = set(words).difference(known)
    if len(known) + len(new) > _WORD_HASHES_MAX:
        known.clear()
        new = set(words)
    for word in new:
        known[word] = _hash64(word.encode())
    return np.fromiter(map(known.__getitem__, words), dtype=np.uint64, count=len(words))


def signature(normalised: str) -> np.ndarray:
    """The 112 MinHash values of a normalised text."""
    hashes = shingle_hashes(normalised)
    a, b = _permutations()
    result = np.full(NUM_HASHES, np.iinfo(np.uint64).max, dtype=np.uint64)
    rows = min(len(hashes), _SHINGLE_BLOCK)
    values = np.empty((rows, NUM_HASHES), dtype=np.uint64)  # reused by every block
    low = np.empty_like(values)
    for start in range(0, len(hashes), _SHINGLE_BLOCK):
        block = hashes[start : start + _SHINGLE_BLOCK].reshape(-1, 1)
        permuted = _permute(block, a, b, values[: len(block)], low[: len(block)])
        np.minimum(result, permuted.min(axis=0), out=result)
    return result


def _permute(
    block: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray, low: np.ndarray
) -> np.ndarray:
    """``(block * a + b) mod (2**61 - 1)`` into ``out`` (``low`` is scratch space).

    The multiply and add wrap at 64 bits, as in datatrove. The modulo is done without a
    division, which costs more than all the other steps together: writing x = hi * 2**61 + lo,
    x = hi + lo modulo 2**61 - 1, and hi + lo < 2 * (2**61 - 1), so it is the residue unless it
    reaches the prime; in that rare case (about one value in 2**58) the block is reduced by
    division, giving the same numbers either way.
    """
    np.multiply(block, a, out=out)
    np.add(out, b, out=out)
    np.bitwise_and(out, MERSENNE_PRIME, out=low)
    np.right_shift(out, np.uint64(61), out=out)
    np.add(out, low, out=out)
    if out.max() >= MERSENNE_PRIME:
        np.remainder(out, MERSENNE_PRIME, out=out)
    return out


def keys(text: str) -> np.ndarray:
    """The 15 dedup keys of a document: exact hash, then one hash per MinHash band."""
    normalised = normalise(text)
    bands = signature(normalised).reshape(BANDS, ROWS)
    row = [_hash64(normalised.encode())] + [_hash64(band.tobytes()) for band in bands]
    return np.array(row, dtype=np.uint64)


class _UnionFind:
    """Clusters of document indices; a cluster's root is always its smallest index."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        root = i
        while (up := self.parent.get(root, root)) != root:
            root = up
        while (up := self.parent.get(i, i)) != root:  # path compression
            self.parent[i] = root
            i = up
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _equal_neighbours(column: np.ndarray, index: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of ``index`` entries whose ``column`` values are equal: neighbours after a stable
    sort, so each group of equal values becomes a chain starting at its earliest document."""
    values = column[index]
    order = np.argsort(values, kind="stable")
    same = np.flatnonzero(values[order][1:] == values[order][:-1])
    ordered = index[order]
    return list(zip(ordered[same].tolist(), ordered[same + 1].tolist(), strict=True))


def find_duplicates(
    column: Callable[[int], np.ndarray], count: int, *, exact: bool = True, near: bool = True
) -> dict[int, tuple[str, int]]:
    """Documents to drop: ``{index: (reason, index of the document kept instead)}``.

    ``column(c)`` returns key column ``c`` (0: exact hash, 1..14: bands) for all ``count``
    documents in order. Reasons are ``exact_duplicate`` and ``near_duplicate``; the kept document
    is always the earliest of its group.
    """
    drop: dict[int, tuple[str, int]] = {}
    everyone = np.arange(count)
    if exact:
        kept_for: dict[int, int] = {}
        for i, j in _equal_neighbours(column(0), everyone):
            kept_for[j] = kept_for.get(i, i)
            drop[j] = ("exact_duplicate", kept_for[j])
    if not near:
        return drop
    # exact copies are out already: cluster only the rest, so a chain never runs through them
    remaining = np.array([i for i in range(count) if i not in drop], dtype=np.int64)
    clusters = _UnionFind()
    for band in range(1, KEY_COLUMNS):
        for i, j in _equal_neighbours(column(band), remaining):
            clusters.union(i, j)
    for i in list(clusters.parent):
        root = clusters.find(i)
        if root != i:
            drop[i] = ("near_duplicate", root)
    return drop
