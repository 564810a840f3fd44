"""Dedup: normalisation, exact copies, MinHash near-duplicates, clusters with one survivor."""

from __future__ import annotations

import random
import re
import unicodedata

import numpy as np
import pytest

from tests.core.pipeline.helpers import WARC_DIR, article
from training.core.pipeline import dedup
from training.core.pipeline.extract import extract
from training.core.pipeline.sources import iter_documents


def long_article(seed: int) -> str:
    return "\n\n".join(article(100 * seed + part) for part in range(4))


def drops(texts: list[str], *, exact: bool = True, near: bool = True) -> dict:
    keys = np.stack([dedup.keys(t) for t in texts])
    return dedup.find_duplicates(lambda c: keys[:, c], len(texts), exact=exact, near=near)


def test_normalise() -> None:
    assert dedup.normalise("  Crème BRÛLÉE,\n costs 3,50 € (2024)! ") == "creme brulee costs 0 0"
    assert dedup.normalise("it's_a-test") == "it s a test"
    assert dedup.normalise("Ελληνικά и русский 中文") == "ελληνικα и русскии 中文"


def test_signature_shape_and_determinism() -> None:
    text = dedup.normalise(article(1))
    signature = dedup.signature(text)
    assert signature.shape == (dedup.NUM_HASHES,) == (112,)
    assert (signature == dedup.signature(text)).all()
    assert dedup.keys(article(1)).shape == (15,)
    assert dedup.shingle_hashes("too short").shape == (1,)  # one shingle below 5 words


def test_exact_copies_keep_the_first() -> None:
    a, b = article(1), article(2)
    result = drops([a, b, a.upper(), a], near=False)  # normalisation makes case irrelevant
    assert result == {2: ("exact_duplicate", 0), 3: ("exact_duplicate", 0)}


def test_near_duplicates_are_caught_and_distinct_documents_kept() -> None:
    base = long_article(5)
    edited = base.replace("the", "a", 2)  # two words differ out of ~500
    distinct = [long_article(seed) for seed in range(6, 16)]
    result = drops([base, *distinct, edited])
    assert result == {11: ("near_duplicate", 0)}


def test_jaccard_estimate_tracks_overlap() -> None:
    words = long_article(20).split()
    a = " ".join(words)
    b = " ".join(words[: len(words) * 9 // 10] + [f"extra{i}x" for i in range(30)])
    shared = (dedup.signature(dedup.normalise(a)) == dedup.signature(dedup.normalise(b))).mean()
    assert 0.6 < shared < 0.95


def test_clusters_join_through_chains_and_keep_the_earliest() -> None:
    # rows: 0 and 2 share band 3; 2 and 4 share band 7; 1 and 3 unrelated; 5 is an exact copy of 0
    keys = np.arange(6 * dedup.KEY_COLUMNS, dtype=np.uint64).reshape(6, dedup.KEY_COLUMNS)
    keys[2, 3] = keys[0, 3]
    keys[4, 7] = keys[2, 7]
    keys[5] = keys[0]
    result = dedup.find_duplicates(lambda c: keys[:, c], 6)
    assert result == {
        5: ("exact_duplicate", 0),
        2: ("near_duplicate", 0),
        4: ("near_duplicate", 0),
    }


@pytest.mark.parametrize("exact", [True, False])
def test_allenai_fetched_three_times(exact: bool) -> None:
    """dolma_sample-0001: allenai.org twice byte-identical and once 4 bytes different."""
    texts, urls = [], []
    for doc, _offset in iter_documents(WARC_DIR / "dolma_sample-0001.warc.gz"):
        texts.append(extract(doc["html"], "precision") or doc["id"])
        urls.append(doc["url"])
    allenai = [i for i, url in enumerate(urls) if url == "https://allenai.org/"]
    assert len(allenai) == 3
    result = drops(texts, exact=exact)
    first, *copies = allenai
    reason = "exact_duplicate" if exact else "near_duplicate"
    assert {i: result[i] for i in copies} == {i: (reason, first) for i in copies}
    assert set(result) == set(copies)  # every other page is kept


def test_normalise_follows_its_definition_on_any_text() -> None:
    """Lower-case, NFD without combining marks, numbers to 0, every punctuation, symbol and
    control character of the Basic Multilingual Plane to a space, whitespace collapsed."""

    def category_to(prefixes: tuple[str, ...], by: str | None) -> dict[int, str | None]:
        return {c: by for c in range(0x10000) if unicodedata.category(chr(c)).startswith(prefixes)}

    marks, separators = category_to(("Mn",), None), category_to(("P", "S", "C"), " ")

    def reference(text: str) -> str:
        text = unicodedata.normalize("NFD", text.lower()).translate(marks)
        text = re.sub(r"\d+(?:[.,]\d+)?", "0", text)
        return " ".join(text.translate(separators).split())

    rng = random.Random(2)
    alphabet = [*"aZé\u0301ß İ.,;!?-–—'\"()[]{}<>@#$%&*+=/\\|^~`_0123456789\t\n\r\x00\x7f\xa0"]
    alphabet += ["中文", "ελληνικά", "русский", "हिन्दी", "العربية", "😀"]
    alphabet += ["\u200b", "\u2028", "\ufeff"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3000)]
    for text in [*texts, article(1).upper(), "3,50 € 1.000.000 x2y 4th"]:
        assert dedup.normalise(text) == reference(text), repr(text)


def test_permutation_is_the_modulo_even_where_the_shortcut_reaches_the_prime() -> None:
    a, b = dedup._permutations()
    prime = int(dedup.MERSENNE_PRIME)
    rng = np.random.default_rng(3)
    block = rng.integers(0, 2**64, size=(300, 1), dtype=np.uint64)
    out, low = (np.empty((300, dedup.NUM_HASHES), dtype=np.uint64) for _ in range(2))
    assert (dedup._permute(block, a, b, out, low) == (block * a + b) % dedup.MERSENNE_PRIME).all()
    # values whose high and low parts add up to the prime or just above: the division path
    edge = [2**61 + prime - 1, 2**62 + prime - 3, 7 * 2**61 + prime - 1, prime, 2**64 - 1, 0]
    x = np.array(edge, dtype=np.uint64).reshape(-1, 1)
    ones, zeros = np.ones((1, 1), dtype=np.uint64), np.zeros((1, 1), dtype=np.uint64)
    got = dedup._permute(x, ones, zeros, np.empty_like(x), np.empty_like(x)).ravel().tolist()
    assert got == [value % prime for value in edge]


def test_word_hashes_are_remembered_up_to_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_WORD_HASHES", {})
    monkeypatch.setattr(dedup, "_WORD_HASHES_MAX", 5)
    words = ["the", "cat", "saw", "the", "other", "cat"]
    expected = [dedup._hash64(w.encode()) for w in words]
    assert dedup._word_hashes(words).tolist() == expected
    assert set(dedup._WORD_HASHES) == set(words)
    more = ["a", "b", "c", "d"]  # would pass the limit: the remembered hashes are dropped first
    assert dedup._word_hashes(more).tolist() == [dedup._hash64(w.encode()) for w in more]
    assert set(dedup._WORD_HASHES) == set(more)
