"""The webdata benchmark's extraction metric reproduces the published figures."""

from __future__ import annotations

import pytest

from training.core.bench import webdata


def test_page_scores() -> None:
    assert webdata.page_scores("a b c d e", "a b c d e") == (1.0, 0.0, 0.0)
    assert webdata.page_scores("a b c d e", "") == (0.0, 0.0, 1.0)
    tp, fp, fn = webdata.page_scores("a b c d e f", "a b c d x y")
    assert (tp, fp, fn) == pytest.approx((1 / 5, 2 / 5, 2 / 5))


def test_metric_reproduces_the_published_f1() -> None:
    """README of the article-extraction benchmark: trafilatura 0.958, html-text 0.665."""
    reference = webdata.reference_f1()
    assert reference["trafilatura"] == pytest.approx(0.958, abs=0.001)
    assert reference["html-text"] == pytest.approx(0.665, abs=0.001)


@pytest.mark.slow
def test_quick_run_without_datatrove() -> None:
    report = webdata.main(["--quick", "--no-datatrove"])
    assert set(report["throughput"]) == {"precision", "fast"}
    assert report["throughput"]["precision"]["documents"] == 56
    assert report["extraction"]["precision"]["f1"] >= 0.95
    assert report["extraction"]["fast"]["f1"] >= 0.89
    assert "speedup" not in report["goals"]["fast"]
