"""HTML to text: the main content of a page, without menus, footers and comments.

Two modes (PIPELINE.md section 4):

- ``precision`` (FineWeb's choice): ``trafilatura.extract(html, favor_precision=True,
  include_comments=False, deduplicate=True)``. F1 0.958 on the 181-page article-extraction
  benchmark, about 60 pages per second per core.
- ``fast``: resiliparse ``extract_plain_text(HTMLTree.parse(html), main_content=True)``. F1 about
  0.90, roughly ten times faster.

Each document gets a time limit (FineWeb: 1 s); pages that run over it, and pages the extractor
fails on, are dropped with reason ``timeout`` or ``error``. FineWeb runs trafilatura in a sandbox
process; here the limit is a ``SIGALRM`` timer in the process doing the work, which needs no
extra process per document. A timer can only interrupt Python code: a page that spends its time
inside C code (lxml parsing, all of resiliparse) is stopped, and counted as a timeout, once that
call returns. Outside the main thread, where Python allows no signal handler, pages run without a
limit.

trafilatura's ``deduplicate`` remembers text segments across calls in a module-level cache and
drops segments it has seen too often. Orchard empties that cache before every page: a page's text
then depends only on the page, so results do not change with how documents are spread over
worker processes, and a resumed run produces the same corpus as an uninterrupted one. Repeated
boilerplate across pages is still removed by the C4/FineWeb line filters and by dedup.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

Mode = Literal["precision", "fast"]
DEFAULT_TIMEOUT = 1.0


class ExtractionTimeout(BaseException):
    """Raised by the alarm. A BaseException, so extractor code that catches Exception (trafilatura
    does in places) cannot swallow it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ExtractionTimeout in the block after ``seconds``; no limit outside the main thread."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(_signum: int, _frame: object) -> None:
        raise ExtractionTimeout()

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _trafilatura(html: str) -> str:
    import trafilatura
    from trafilatura.deduplication import LRU_TEST

    LRU_TEST.clear()  # see the module docstring: no memory of earlier pages
    text = trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True)
    return text or ""


def _resiliparse(html: str) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse(html), main_content=True)


EXTRACTORS: dict[str, Callable[[str], str]] = {"precision": _trafilatura, "fast": _resiliparse}


def extract(html: str, mode: Mode = "precision", timeout: float = DEFAULT_TIMEOUT) -> str:
    """The page's main text ("" when there is none); ExtractionTimeout past ``timeout`` seconds.

    Extractor errors propagate; the caller counts them.
    """
    with time_limit(timeout):
        return EXTRACTORS[mode](html).strip()
