"""Language identification: py3langid's bundled model, the 0.65 threshold, the fast walk."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.core.pipeline.helpers import WARC_DIR, article
from training.core.pipeline import langid
from training.core.pipeline.extract import extract
from training.core.pipeline.langid import LanguageFilter, parse_languages
from training.core.pipeline.sources import iter_documents


def test_english_is_kept_with_its_score() -> None:
    language, score, reason = LanguageFilter(["en"]).check(article(1))
    assert (language, reason) == ("en", "")
    assert score > 0.99


def test_the_zh_and_ru_pages_of_the_common_crawl_warc_are_dropped() -> None:
    lid = LanguageFilter(["en"])
    verdicts = {}
    for doc, _offset in iter_documents(WARC_DIR / "resiliparse_cc_warcfile.warc.gz"):
        text = extract(doc["html"], "fast")
        if text:
            verdicts[doc["url"]] = lid.check(text)
    reasons = {reason for _lang, _score, reason in verdicts.values()}
    assert {"language:zh", "language:ru"} <= reasons
    assert verdicts["http://01spb.ru/company/"][2] == "language:ru"
    assert verdicts["http://0513mt.com/index.php/art/detail/id/8884.html"][2] == "language:zh"


def test_threshold_is_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    lid = LanguageFilter(["en", "de"], threshold=0.65)
    monkeypatch.setattr(langid, "identify", lambda _text: ("en", 0.65))
    assert lid.check("x") == ("en", 0.65, "low_language_score")
    monkeypatch.setattr(langid, "identify", lambda _text: ("de", 0.6501))
    assert lid.check("x") == ("de", 0.6501, "")
    monkeypatch.setattr(langid, "identify", lambda _text: ("fr", 0.99))
    assert lid.check("x") == ("fr", 0.99, "language:fr")
    # no languages requested: any confident language is kept
    assert LanguageFilter([]).check("x") == ("fr", 0.99, "")


def test_newlines_do_not_change_the_result() -> None:
    text = article(2)
    assert langid.identify(text) == langid.identify(text.replace("\n", " "))


def test_language_codes_are_checked() -> None:
    assert parse_languages(" en, DE ,,fr") == ["en", "de", "fr"]
    assert parse_languages("") == []
    with pytest.raises(ValueError, match="unknown language code.*xx, english"):
        parse_languages("en, xx, english")


def test_known_codes_are_the_models_labels() -> None:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    assert set(model.labels) == langid.LANGUAGES


def _texts() -> list[str]:
    rng = random.Random(0)
    alphabet = [chr(c) for c in [*range(32, 127), *range(0x400, 0x450), *range(0x4E00, 0x4E40)]]
    texts = ["", " ", "a", "Hello", "Привет мир", article(3), article(4).upper()]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 2000))) for _ in range(40)]
    for doc, _offset in iter_documents(WARC_DIR / "resiliparse_cc_warcfile.warc.gz"):
        texts.append(doc["html"][:20000])
    return texts


def test_vectorised_walk_finds_py3langids_exact_feature_counts() -> None:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier, visit_counts

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    model = langid._identifier()
    for text in _texts():
        encoded = reference._encode(text.replace("\n", " "))
        expected = visit_counts(
            reference.tk_nextmove, reference._rowbase, reference.tk_output, encoded
        )
        features = model.features(encoded)
        if not expected:
            assert not len(features)
            continue
        ids, counts = langid._first_seen_counts(features)
        # the same features, counts and first-seen order as py3langid's Counter
        assert list(zip(ids.tolist(), counts.tolist(), strict=True)) == list(expected.items())


def test_scores_are_py3langids_summed_in_double_precision() -> None:
    """Same language as py3langid; the probability differs only by py3langid's float32
    rounding, and the raw scores are within a hundredth of the exact sums."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    reference = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    model = langid._identifier()
    table = reference.nb_ptc.astype(np.float64)
    for text in _texts():
        language, score = langid.identify(text)
        expected_language, expected_score = reference.classify(text.replace("\n", " "))
        assert language == expected_language
        assert score == pytest.approx(expected_score, abs=1e-4)
        encoded = reference._encode(text.replace("\n", " "))
        features = model.features(encoded)
        if len(features):
            ids, counts = langid._first_seen_counts(features)
            exact = np.log1p(counts.astype(np.float64)) @ table[ids] + reference.nb_pc
            assert np.abs(model._raw_score(encoded) - exact).max() < 0.01


def test_automaton_depth_is_six() -> None:
    """The vectorised walk is exact only if no automaton state is deeper than AUTOMATON_DEPTH:
    a breadth-first search from the start state finds the deepest one."""
    model = langid._identifier()
    depth = np.full(len(model.rows), -1)
    depth[0] = 0
    frontier, level = np.array([0]), 0
    while len(frontier):
        level += 1
        reached = model.moves[(model.rows[frontier][:, None] + np.arange(256)).ravel()]
        reached = np.unique(reached)
        reached = reached[depth[reached] < 0]
        depth[reached] = level
        frontier = reached
    assert (depth >= 0).all()
    assert depth.max() == langid.AUTOMATON_DEPTH


def test_the_unpacked_model_is_cached_and_loads_the_same(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(langid.CACHE_ENV, str(tmp_path / "cache"))
    unpacked = langid._identifier.__wrapped__()  # a miss: unpacks py3langid's file, caches it
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.startswith("py3langid-")
    cached = langid._identifier.__wrapped__()  # a hit: memory-mapped from the folder
    assert isinstance(cached.nb_ptc.base, np.memmap)
    for name, array in unpacked.arrays().items():
        assert np.array_equal(cached.arrays()[name], array), name
    assert cached.nb_classes == unpacked.nb_classes
    for text in (article(5), "Привет мир, как дела?", "这是一个测试句子。"):
        assert cached.classify(text) == unpacked.classify(text)


def test_a_broken_or_unwritable_cache_only_costs_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(langid.CACHE_ENV, str(blocker))  # nothing can be written under a file
    assert langid._identifier.__wrapped__().classify(article(6))[0] == "en"
    assert blocker.read_text() == "not a folder"

    monkeypatch.setenv(langid.CACHE_ENV, str(tmp_path / "cache"))
    langid._identifier.__wrapped__()
    (folder,) = (tmp_path / "cache").iterdir()
    (folder / "ptc.npy").write_bytes(b"truncated")
    assert langid._identifier.__wrapped__().classify(article(6))[0] == "en"
    assert isinstance(langid._identifier.__wrapped__().nb_ptc.base, np.memmap)  # repaired

    monkeypatch.setenv(langid.CACHE_ENV, "")
    assert langid.cache_root() is None
