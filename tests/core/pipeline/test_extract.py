"""HTML to text: both modes, the per-page time limit, and no memory between pages."""

from __future__ import annotations

import time

import pytest

from tests.core.pipeline.helpers import article, page
from training.core.pipeline import extract as extract_module
from training.core.pipeline.extract import ExtractionTimeout, extract, time_limit


@pytest.mark.parametrize("mode", ["precision", "fast"])
def test_main_content_without_navigation_and_footer(mode: str) -> None:
    text = extract(page(article(1), title="Harbour news"), mode)
    body = article(1).split("\n\n")
    assert all(paragraph in text for paragraph in body)
    assert "Contact" not in text and "All rights reserved" not in text


def test_empty_or_textless_pages_give_empty_text() -> None:
    assert extract("<html><body><script>var a = 1;</script></body></html>", "precision") == ""
    assert extract("", "fast") == ""


def test_precision_mode_has_no_memory_of_earlier_pages() -> None:
    """trafilatura's deduplicate drops segments it saw in earlier calls; Orchard resets it, so
    a page extracts the same however many times (and after whichever pages) it is seen."""
    html = page(article(2))
    assert len({extract(html, "precision") for _ in range(4)}) == 1


def test_time_limit_stops_slow_python_code() -> None:
    started = time.monotonic()
    with pytest.raises(ExtractionTimeout), time_limit(0.05):
        while True:
            pass
    assert time.monotonic() - started < 1


def test_a_slow_page_times_out_and_the_next_one_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(html: str) -> str:
        while html == "slow":
            pass
        return html

    monkeypatch.setitem(extract_module.EXTRACTORS, "fast", slow)
    with pytest.raises(ExtractionTimeout):
        extract("slow", "fast", timeout=0.05)
    assert extract("quick", "fast", timeout=0.05) == "quick"
    time.sleep(0.1)  # the timer was cancelled: nothing fires later


def test_no_time_limit_outside_the_main_thread() -> None:
    import threading

    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(extract(page(article(3)), "fast", 0.01)))
    worker.start()
    worker.join()
    assert result and result[0]
