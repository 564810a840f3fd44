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
vectorised steps, and finds the same feature counts, in the same order (a test compares them;
the automaton depth is checked by a test too, since a new model could be deeper). Scoring sums
them in double precision (:func:`_sparse_score`: py3langid's float32 sum depends on the
machine), so probabilities differ from py3langid's in the sixth decimal at most.

py3langid unpacks its xz-compressed model (most of a second) in every process that loads it.
Orchard keeps the unpacked arrays, widened to what scoring uses, in a cache folder (named by the
model file's hash; :func:`cache_root`) and memory-maps them: a worker process loads the model in
milliseconds, and all workers share one copy in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

THRESHOLD = 0.65
CACHE_ENV = "ORCHARD_CACHE_DIR"
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
    """py3langid's model as a :class:`VectorisedIdentifier`, from the cache of unpacked models
    when it is there (unpacked and cached otherwise)."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE

    folder = _cache_folder(MODEL_DIR / MODEL_FILE)
    identifier = _load_unpacked(folder) if folder is not None else None
    if identifier is None:
        identifier = _vectorised_identifier().from_py3langid()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged copy, if any
            _save_unpacked(identifier, folder)
    return identifier


@cache
def _vectorised_identifier() -> Any:
    """The VectorisedIdentifier class (defined on first use: it needs numpy and py3langid)."""
    import numpy as np
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    class VectorisedIdentifier(LanguageIdentifier):
        """py3langid's identifier with the automaton walk done for all bytes at once.

        ``moves`` and ``rows`` are py3langid's transition table and per-state row offsets,
        ``outputs`` the feature each state emits (-1: none) and ``ptc`` the weight table
        widened to float32; none of them is ever written to.
        """

        def __init__(
            self,
            ptc: np.ndarray,
            pc: np.ndarray,
            classes: list[str],
            moves: np.ndarray,
            rows: np.ndarray,
            outputs: np.ndarray,
        ) -> None:
            # the base class's own walk tables stay empty: features() replaces its walk
            super().__init__(ptc, pc, classes, moves, outputs, norm_probs=True, tk_row=[])
            self.moves, self.rows, self.outputs = moves, rows, outputs

        def arrays(self) -> dict[str, np.ndarray]:
            """The model's arrays, by the names :meth:`__init__` takes them."""
            return {
                "ptc": self.nb_ptc,
                "pc": self.nb_pc,
                "moves": self.moves,
                "rows": self.rows,
                "outputs": self.outputs,
            }

        @classmethod
        def from_py3langid(cls) -> VectorisedIdentifier:
            model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            moves = model.tk_nextmove  # an array.array: viewed, not copied
            return cls(
                # scoring gathers rows of this float16 table and computes in float32: widened
                # once here (exactly), not for every document
                ptc=model.nb_ptc.astype(np.float32),
                pc=model.nb_pc,
                classes=list(model.nb_classes),
                moves=np.frombuffer(moves, dtype=np.dtype(moves.typecode)),
                rows=np.asarray(model._rowbase, dtype=np.int64),
                outputs=np.asarray(model.tk_output, dtype=np.int64),
            )

        def _raw_score(self, text: bytes) -> np.ndarray:
            features = self.features(text)
            if not len(features):
                return super()._raw_score(b"")  # py3langid's score for "no features"
            ids, counts = _first_seen_counts(features)
            return _sparse_score(self.nb_ptc, self.nb_pc, ids, counts)

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

    return VectorisedIdentifier


# --- the cache of unpacked models -------------------------------------------------------------

_UNPACKED_ARRAYS = ("ptc", "pc", "moves", "rows", "outputs")  # VectorisedIdentifier.arrays()
_UNPACKED_FORMAT = 1  # bump when those arrays change meaning


def cache_root() -> Path | None:
    """Where unpacked models are kept: ``$ORCHARD_CACHE_DIR``, else ``orchard`` in
    ``$XDG_CACHE_HOME`` or ``~/.cache``; None (no cache) when ``ORCHARD_CACHE_DIR`` is set but
    empty."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit is not None:
        return Path(explicit) if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "orchard"


def _cache_folder(model_file: Path) -> Path | None:
    """The cache folder of this model file, named by its content (and the layout version)."""
    root = cache_root()
    if root is None:
        return None
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:16]
    return root / f"py3langid-{digest}-v{_UNPACKED_FORMAT}"


def _load_unpacked(folder: Path) -> Any:
    """The identifier from a cache folder, or None when it is missing or unreadable. The arrays
    are memory-mapped, so worker processes share one copy in the page cache."""
    import numpy as np

    try:
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in _UNPACKED_ARRAYS
        }
        classes = json.loads((folder / "classes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    plain = {name: array.view(np.ndarray) for name, array in arrays.items()}
    return _vectorised_identifier()(classes=classes, **plain)


def _save_unpacked(identifier: Any, folder: Path) -> None:
    """Write the identifier's arrays to ``folder``, atomically (written aside, then renamed: a
    process that loses the race to another one drops its copy). A cache that cannot be written
    is skipped: it only saves time."""
    import numpy as np

    temporary = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        temporary.mkdir(parents=True, exist_ok=True)
        for name, array in identifier.arrays().items():
            np.save(temporary / f"{name}.npy", array, allow_pickle=False)
        classes = json.dumps(list(identifier.nb_classes))
        (temporary / "classes.json").write_text(classes, encoding="utf-8")
        os.rename(temporary, folder)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)


def _first_seen_counts(features: Any) -> tuple[Any, Any]:
    """The distinct feature ids in the order they first appear and how often each appears: the
    keys and values of the Counter py3langid's walk builds.

    Each id is packed with its position into one integer (ids are below 2**17, so positions up
    to 2**46 fit) and the packed values are sorted: numpy's sort of plain integers is several
    times faster than the stable argsort ``np.unique`` needs, and within a run of equal ids the
    first entry is the earliest.
    """
    import numpy as np

    n = len(features)
    packed = np.sort(features * n + np.arange(n))
    ids = packed // n
    starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    counts = np.diff(starts, append=n)
    order = np.argsort(packed[starts] % n)  # first positions are all different
    return ids[starts][order], counts[order]


def _sparse_score(ptc: Any, pc: Any, ids: Any, counts: Any) -> Any:
    """py3langid's naive Bayes scores: the weights of each feature seen times log(1 + its
    count), summed, plus the class priors.

    py3langid sums the terms (thousands per page) in float32 with a BLAS matrix product: the
    rounding error reaches whole units of the score, and its value depends on how many threads
    BLAS splits the product over, so on the machine's cores (and BLAS's waiting threads spin
    on the cores the other workers need). Here the float32 products are summed in float64:
    within a thousandth of the exact sum, and the same on every machine. Scores are returned in
    float32, as py3langid's are.
    """
    import numpy as np

    weights = ptc[ids]
    weights *= np.log1p(counts.astype(np.float32))[:, None]
    total = np.add.reduce(weights, axis=0, dtype=np.float64)
    return (total + pc).astype(np.float32)


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
