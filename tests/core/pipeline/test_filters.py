"""Quality filters: every threshold of PIPELINE.md sections 6-9, just inside and just outside."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from tests.core.pipeline.helpers import article
from training.core.pipeline import filters
from training.core.pipeline.filters import Verdict

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ti", "sa", "po", "de", "fu"]


def word(i: int) -> str:
    """A distinct word for every i: six letters below 1000, eight below 10,000."""
    return "".join(_SYLLABLES[int(digit)] for digit in f"{i:03d}")


def prose(count: int, start: int = 0) -> str:
    return " ".join(word(i) for i in range(start, start + count))


def straddle(
    build: Callable[[int], str], check: Callable[[str], Verdict], measure: str, limit: float
) -> tuple[Verdict, Verdict]:
    """``build(k)`` dilutes a repeat more as k grows: the verdicts of the last text measuring
    above ``limit`` and of the first at or below it (found by bisection)."""

    def value(k: int) -> float:
        return check(build(k)).scores[measure]

    low, high = 0, 1  # value(low) > limit >= value(high)
    assert value(low) > limit
    while value(high) > limit:
        low, high = high, high * 2
        assert high < 10_000, "the limit is never crossed"
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if value(middle) > limit else (low, middle)
    return check(build(low)), check(build(high))


# --- Gopher repetition -----------------------------------------------------------------------


def lines_with_repeats(unique: int, repeats: int, sep: str = "\n") -> str:
    """``unique`` distinct lines and ``repeats`` copies of the short line "ok" among them."""
    lines = [prose(8, start=8 * i) for i in range(unique)]
    for r in range(repeats):
        lines.insert(2 * r + 1, "ok")
    return sep.join(lines)


@pytest.mark.parametrize(("sep", "reason"), [("\n", "dup_line_frac"), ("\n\n", "dup_para_frac")])
def test_duplicate_line_and_paragraph_fraction(sep: str, reason: str) -> None:
    at_limit = filters.gopher_repetition(lines_with_repeats(6, 4, sep))  # 3 repeats of 10
    assert at_limit.scores[reason] == pytest.approx(0.3)
    assert at_limit.keep
    over = filters.gopher_repetition(lines_with_repeats(6, 5, sep))  # 4 of 11
    assert (over.keep, over.reason) == (False, reason)


def test_duplicate_line_characters() -> None:
    repeated = prose(20, start=500)

    def build(k: int) -> str:  # k short distinct lines between two copies of a long line
        return "\n".join([repeated, *(prose(4, start=4 * i) for i in range(k)), repeated])

    over, under = straddle(build, filters.gopher_repetition, "dup_line_char_frac", 0.2)
    assert over.reason == "dup_line_char_frac"
    assert under.reason != "dup_line_char_frac"


@pytest.mark.parametrize(("n", "limit"), list(filters.TOP_NGRAM_CHAR_FRAC.items()))
def test_top_ngram_character_fraction(n: int, limit: float) -> None:
    gram = ["garden", "house", "window", "door"][:n]

    def build(k: int) -> str:
        parts = []
        for i in range(12):  # the n-gram 12 times, each time between distinct words
            parts += [word(i), *gram]
        return " ".join(parts + [prose(k, start=100)])

    over, under = straddle(build, filters.gopher_repetition, f"top_{n}_gram", limit)
    assert over.reason == f"top_{n}_gram"
    assert under.keep


@pytest.mark.parametrize(("n", "limit"), list(filters.DUP_NGRAM_CHAR_FRAC.items()))
def test_duplicated_ngram_character_fraction(n: int, limit: float) -> None:
    phrase = prose(n).upper()  # words the filler never uses

    def build(k: int) -> str:
        # the n-word phrase 8 times, each copy followed by a distinct word, so no longer
        # n-gram repeats and the most frequent 2-4-grams stay under their own limits
        parts = [f"{phrase} {word(i)}" for i in range(8)]
        return " ".join(parts + [prose(k, start=100)])

    over, under = straddle(build, filters.gopher_repetition, f"duplicated_{n}_n_grams", limit)
    assert over.reason == f"duplicated_{n}_n_grams"
    assert under.keep


def test_ngram_measures_match_the_string_definitions() -> None:
    """The hashed n-gram counting equals datatrove's string-building definitions."""

    def top(words: tuple[str, ...], n: int) -> int:
        grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        gram, count = grams.most_common(1)[0] if grams else ("", 0)
        return len(gram) * count

    def duplicated(words: tuple[str, ...], n: int) -> int:
        seen, chars, i = set(), 0, 0
        while i < len(words) - n + 1:
            gram = "".join(words[i : i + n])
            if gram in seen:
                chars, i = chars + len(gram), i + n
            else:
                seen.add(gram)
                i += 1
        return chars

    texts = [article(s) for s in range(5)] + ["a b a b a b c a b a b d " * 9, "x", ""]
    texts += [" ".join(["one two three four five six"] * 3 + ["seven"] * 4)]
    for text in texts:
        words = filters.split_words(text)
        grams = filters._NGrams(words)
        assert [grams.top_chars(n) for n in (2, 3, 4)] == [top(words, n) for n in (2, 3, 4)]
        assert [grams.duplicated_chars(n) for n in range(5, 11)] == [
            duplicated(words, n) for n in range(5, 11)
        ]


# --- Gopher quality --------------------------------------------------------------------------

STOP = "the and"  # two distinct stop words


def quality(text: str) -> tuple[bool, str]:
    verdict = filters.gopher_quality(text)
    return verdict.keep, verdict.reason


def test_word_count_limits() -> None:
    assert quality(f"{prose(48)} {STOP}") == (True, "")  # 50 words
    assert quality(f"{prose(47)} {STOP}") == (False, "short_doc")
    long_text = " ".join(["kalomi"] * (filters.MAX_WORDS - 2)) + f" {STOP}"
    assert quality(long_text) == (True, "")
    assert quality(long_text + " kalomi") == (False, "long_doc")


def test_mean_word_length_limits() -> None:
    three = " ".join(["abc"] * 48)
    assert quality(f"{three} {STOP}") == (True, "")  # mean exactly 3
    assert quality(f"{three[:-1]} {STOP}") == (False, "short_words")  # one word of 2
    ten = " ".join(["abcdefghij"] * 46 + ["abcdefghijklmnopq"] * 2)
    assert filters.gopher_quality(f"{ten} {STOP}").scores["mean_word_length"] == 10
    assert quality(f"{ten} {STOP}") == (True, "")
    assert quality(f"{ten}x {STOP}") == (False, "long_words")


@pytest.mark.parametrize(
    ("mark", "reason"), [("#", "too_many_hashes"), ("...", "too_many_ellipsis")]
)
def test_hash_and_ellipsis_ratio(mark: str, reason: str) -> None:
    words = prose(52).split()

    def text(marks: int) -> str:
        tokens = [*words]
        for i in range(marks):
            tokens.insert(1 + 7 * i, mark)  # inside lines, never at their end
        return " ".join(tokens) + f" {STOP}"

    assert quality(text(6)) == (True, "")  # 6 of 60 words: 0.1
    assert quality(text(7)) == (False, reason)


def test_bullet_and_ellipsis_lines() -> None:
    def lines(bullets: int, plain: int, ending: str = "") -> str:
        body = [f"- {prose(8, 8 * i)} {STOP}" for i in range(bullets)]
        body += [f"{prose(8, 8 * (bullets + i))} {STOP}{ending}" for i in range(plain)]
        return "\n".join(body)

    assert quality(lines(9, 1)) == (True, "")  # 90 % bullets
    assert quality(lines(19, 1)) == (False, "too_many_bullet_lines")
    assert quality(lines(0, 7) + "\n" + lines(0, 3, "…").replace("kalo", "kali")) == (True, "")
    assert quality(lines(0, 6) + "\n" + lines(0, 4, "…").replace("kalo", "kali")) == (
        False,
        "too_many_ellipsis_lines",
    )


def test_alpha_words_and_stop_words() -> None:
    numbers = " ".join(str(1000 + i) for i in range(10))
    assert quality(f"{prose(38)} {STOP} {numbers}") == (True, "")  # 40 of 50 have letters
    assert quality(f"{prose(38)} {STOP} {numbers} 7") == (False, "too_few_alpha_words")
    assert quality(f"{prose(50)} the the the") == (False, "too_few_stop_words")
    assert quality(f"{prose(50)} the of") == (True, "")
    assert quality(f"{prose(50)} The Of") == (False, "too_few_stop_words")  # as datatrove


# --- C4 (FineWeb settings) -------------------------------------------------------------------


def sentences(count: int, start: int = 0) -> str:
    return " ".join(f"{prose(4, start + 4 * i).capitalize()}." for i in range(count))


def test_c4_needs_five_sentences() -> None:
    assert filters.c4_lines(f"{sentences(3)}\n{sentences(2, 40)}").keep
    verdict = filters.c4_lines(f"{sentences(3)}\n{sentences(1, 40)}")
    assert (verdict.keep, verdict.reason, verdict.scores["sentences"]) == (
        False,
        "too_few_sentences",
        4,
    )


def test_c4_line_rules_rewrite_the_text() -> None:
    text = "\n".join(
        [
            sentences(5),
            "Too short.",
            "Please enable JavaScript to view the comments.",
            "Read our privacy policy before you continue here.",
            f"Sources agree on this point[1] and more[edit] {prose(3, 80)}",
            "a " + "x" * 1000 + " tail words",  # a word of exactly 1000 characters is allowed
            "b " + "y" * 1001 + " tail words",
            "no terminal punctuation at the end",
        ]
    )
    verdict = filters.c4_lines(text)
    assert verdict.keep
    assert verdict.text.splitlines() == [
        sentences(5),
        f"Sources agree on this point and more {prose(3, 80)}",
        "a " + "x" * 1000 + " tail words",
        "no terminal punctuation at the end",
    ]
    assert verdict.scores["lines_dropped"] == {
        "few_words": 1,
        "javascript": 1,
        "policy": 1,
        "long_word": 1,
    }
    strict = filters.c4_lines(text + "\nthis one trails off...", require_terminal_punctuation=True)
    assert "no terminal punctuation at the end" not in strict.text
    assert strict.scores["lines_dropped"]["no_terminal_punctuation"] == 4


@pytest.mark.parametrize(
    ("extra", "reason"),
    [("Lorem ipsum dolor sit.", "lorem_ipsum"), ("var x = {a: 1} here.", "curly_bracket")],
)
def test_c4_drops_documents(extra: str, reason: str) -> None:
    verdict = filters.c4_lines(f"{sentences(6)}\n{extra}")
    assert (verdict.keep, verdict.reason) == (False, reason)


def test_sentence_counting_ignores_initials_and_abbreviations() -> None:
    assert filters.count_sentences("Paul G. Allen founded it, e.g. in 2014. It grew!") == 2
    assert filters.count_sentences("Wait... what? Yes.") == 2


# --- FineWeb quality -------------------------------------------------------------------------


def fineweb(text: str) -> tuple[bool, str]:
    verdict = filters.fineweb_quality(text)
    return verdict.keep, verdict.reason


def test_line_punctuation_ratio() -> None:
    def text(ended: int) -> str:
        return "\n".join(prose(8, 8 * i) + ("." if i < ended else "") for i in range(25))

    assert fineweb(text(3)) == (True, "")  # 3 of 25 lines: 0.12
    assert fineweb(text(2)) == (False, "line_punct_ratio")


def test_short_line_ratio() -> None:
    def text(short: int) -> str:
        lines = [f"{prose(4, 4 * i)}." for i in range(short)]  # 28 characters
        lines += [f"{prose(8, 500 + 8 * i)}." for i in range(100 - short)]
        return "\n".join(lines)

    assert fineweb(text(67)) == (True, "")
    assert fineweb(text(68)) == (False, "short_line_ratio")


def test_duplicated_line_characters() -> None:
    repeated = f"{prose(8).upper()}."

    def build(k: int) -> str:
        return "\n".join([repeated, *(f"{prose(8, 8 * i)}." for i in range(k)), repeated])

    over, under = straddle(build, filters.fineweb_quality, "char_dup_ratio", 0.01)
    assert over.reason == "char_dup_ratio"
    assert under.keep


def test_list_ratio() -> None:
    def text(lines: int) -> str:  # each line: 2 long words and a full stop = 3 tokens
        return "\n".join(f"{word(i) * 3} {word(i + 500) * 3}." for i in range(lines))

    assert filters.fineweb_quality(text(10)).scores["list_ratio"] == pytest.approx(0.3)
    assert fineweb(text(10)) == (True, "")
    assert fineweb(text(11)) == (False, "list_ratio")


def test_a_real_article_passes_every_filter() -> None:
    text = article(7)
    for check in (filters.gopher_repetition, filters.gopher_quality, filters.fineweb_quality):
        assert check(text).keep, check(text)
    # C4 keeps every line; blank lines (fewer than 3 words) go
    assert filters.c4_lines(text).text == text.replace("\n\n", "\n")


# --- word splitting --------------------------------------------------------------------------


def _tricky_texts(count: int) -> list[str]:
    """Random texts made of the pieces the word pattern treats specially."""
    rng = random.Random(1)
    pieces = [*"abcwXYZ019_ .,:;-–'’!?…/\\\"()[]{}#@\n\t", "\n\n", "\u2028", "\x0b", "\xa0"]
    pieces += ["www.", "http://x.org", "e.g.", "U.S.", "n't", "'s", "é", "中", "A. ", "A.\n", "A."]
    pieces += ["3,5", "10:30", "COVID-19", "。", "Dr. G. Allen", "end.Next", "[1]", "word, "]
    return [article(seed) for seed in range(3)] + [
        "".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))) for _ in range(count)
    ]


def test_split_words_is_exactly_the_word_pattern() -> None:
    """Splitting chunk by chunk (and line by line) finds what the regular expression finds."""
    for text in _tricky_texts(3000):
        expected = tuple(filters._WORD.findall(text))
        assert filters.split_words(text) == expected, text
        assert tuple(w for line in filters.line_words(text) for w in line) == expected, text
        lines = text.split("\n")
        assert len(filters.line_words(text)) == len(lines)


def test_c4_counts_the_sentences_of_its_kept_lines() -> None:
    """C4 counts sentences on the words of its cleaned text: the same as line by line."""
    checked = 0
    for text in _tricky_texts(3000):
        verdict = filters.c4_lines(text)
        if verdict.keep:
            lines = verdict.text.split("\n")
            assert verdict.scores["sentences"] == sum(map(filters.count_sentences, lines))
            checked += 1
    assert checked > 50
