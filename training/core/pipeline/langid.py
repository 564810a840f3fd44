"""Language identification: keep documents written in the languages the user asked for.

FineWeb keeps a document when fastText ``lid.176`` gives a requested language a score above
**0.65** (datatrove ``LanguageFilter``, PIPELINE.md section 5). That model is downloaded at run
time, so Orchard uses py3langid instead: its model ships inside the package (139 languages,
BSD-3), and with ``norm_probs=True`` its scores are probabilities summing to 1 like fastText's.
As in datatrove, newlines are replaced by spaces before classifying and the whole text is used.

The verdict records the most likely language and its probability on every document, kept or not.
A document is dropped with reason ``language:<code>`` when its most likely language is not a
requested one, and ``low_language_score`` when it is, but with a probability of at most the
threshold. With no languages requested, any language above the threshold is kept.

The 0.65 threshold was calibrated for ``lid.176``; on the English benchmark pages py3langid is at
least as confident on full documents, so the same number is used.

Speed: py3langid finds its byte n-gram features by walking a finite automaton one byte at a time
in Python (about 1 microsecond per byte), the slowest step of the fast pipeline. Its automaton is
an Aho-Corasick machine whose deepest state is 6 bytes from the start, so the state after any
byte depends only on the 6 bytes ending there: Orchard computes all states at once with numpy, 6
vectorised steps, and hands the same feature counts, in the same order, to py3langid's own
scoring (whose float16 weight table is widened to float32 once, 57 MB per process, instead of
for every document). Results are identical (a test compares them); the automaton depth is
checked by a test too, since a new model could be deeper.
"""

from __future__ import annotations

from functools import cache
from typing import Any

THRESHOLD = 0.65
AUTOMATON_DEPTH = 6  # longest path from the start state of py3langid 0.4's feature automaton

# The labels of py3langid 0.4's bundled model (a test keeps this in step with the model), so a
# config can be validated without loading it.
_MODEL_LABELS = (
    "ace af am an ar ary arz as az ba bcl be bg bn br bs ca crh cs cy da de dz el en eo es et eu "
    "ext fa fi fo fr fuv fy ga gcf gcr gd gl gom grc gu gug guw ha hbo he hi hr ht hu hy id ig is "
    "it ja jv ka kab kik kk km kn ko ku ky la lb lg lij ln lo lt ltg lv mg mk ml mn mr ms mt my ne "
    "nl nn no nso oc om or pa pcm pl ps pt qu ro ru rw sa sdh se si sk sl sn so sq sr st sv sw ta "
    "te tg th tk tl tr tt ug uk ur uz uzs vec vi vo wa wuu xh yo yue zh zu zxx"
)
LANGUAGES = frozenset(_MODEL_LABELS.split())


def parse_languages(text: str) -> list[str]:
    """``"en, de"`` -> ``["en", "de"]``; ValueError naming any code the model does not know."""
    codes = [code.strip().lower() for code in text.split(",") if code.strip()]
    unknown = [code for code in codes if code not in LANGUAGES]
    if unknown:
        raise ValueError(
            f"unknown language code(s) {', '.join(unknown)}: use ISO 639-1 codes such as en, de, fr"
        )
    return codes


@cache
def _identifier() -> Any:
    import numpy as np
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    class VectorisedIdentifier(LanguageIdentifier):
        """py3langid's identifier with the automaton walk done for all bytes at once."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            moves = self.tk_nextmove  # an array.array: viewed, not copied
            self.moves = np.frombuffer(moves, dtype=np.dtype(moves.typecode))
            self.rows = np.asarray(self._rowbase, dtype=np.int64)
            self.outputs = np.asarray(self.tk_output, dtype=np.int64)
            # Scoring gathers rows of this float16 table and multiplies in float32: converting
            # it once (exact) saves the per-document conversion; the arithmetic is unchanged.
            self.nb_ptc = self.nb_ptc.astype(np.float32)

        def _raw_score(self, text: bytes) -> np.ndarray:
            features = self.features(text)
            if not len(features):
                return super()._raw_score(b"")  # py3langid's score for "no features"
            values, first, counts = np.unique(features, return_index=True, return_counts=True)
            order = np.argsort(first)  # first-seen order, as py3langid's Counter has it
            visits = dict(zip(values[order].tolist(), counts[order].tolist(), strict=True))
            return self._sparse_score(visits, self.nb_ptc)

        def features(self, text: bytes) -> np.ndarray:
            """Feature ids in text order: what py3langid's ``visit_counts`` walk emits."""
            data = np.frombuffer(text, dtype=np.uint8)
            states = np.zeros(len(data), dtype=np.int64)
            # Step k moves every position i by byte i - lag: after the last step, position i
            # has read bytes i-5 .. i from the start state (positions near the start, fewer).
            for lag in range(AUTOMATON_DEPTH - 1, -1, -1):
                if lag < len(data):
                    current = states[lag:]
                    states[lag:] = self.moves[self.rows[current] + data[: len(data) - lag]]
            emitted = self.outputs[states]
            return emitted[emitted >= 0]

    return VectorisedIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify(text: str) -> tuple[str, float]:
    """The most likely language of ``text`` and its probability."""
    language, score = _identifier().classify(text.replace("\n", " "))
    return str(language), float(score)


class LanguageFilter:
    def __init__(self, languages: list[str], threshold: float = THRESHOLD) -> None:
        self.languages = frozenset(languages)
        self.threshold = threshold

    def check(self, text: str) -> tuple[str, float, str]:
        """``(language, score, reason)``; the reason is empty when the document is kept."""
        language, score = identify(text)
        if self.languages and language not in self.languages:
            return language, score, f"language:{language}"
        if score <= self.threshold:
            return language, score, "low_language_score"
        return language, score, ""
