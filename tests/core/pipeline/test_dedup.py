"""Dedup: normalisation, exact copies, MinHash near-duplicates, clusters with one survivor."""

from __future__ import annotations

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
