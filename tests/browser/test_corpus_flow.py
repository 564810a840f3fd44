"""In a real browser: a trainer uploads a real Common Crawl WARC, cleans it with a corpus run,
and inspects why pages were kept or dropped, raw HTML beside the extracted text."""

from __future__ import annotations

import pytest

from tests.support.data import SHARED_DATA

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WARC = SHARED_DATA / "web" / "warc" / "resiliparse_cc_warcfile.warc.gz"


def test_a_trainer_cleans_web_data_and_inspects_the_result(
    browser_page, live_server, people, start_worker
):
    page, problems = browser_page
    start_worker("corpus-browser")
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "tom")
    page.fill("input[name=password]", "pw-tom")
    page.click("button[type=submit]")

    page.click("text=Upload web data")
    page.set_input_files("input[name=file]", str(WARC))
    page.click("button:has-text('Upload')")
    page.click("text=Clean it into a corpus")
    assert page.locator("select[name=input_sources] option:checked").count() == 1
    page.fill("input[name=config_workers]", "1")
    page.click("button:has-text('Queue run')")
    page.wait_for_selector("#run-status:has-text('succeeded')", timeout=180_000)

    page.click("text=Inspect why each page was kept or dropped")
    page.wait_for_selector("text=Documents reaching each stage")
    assert page.locator("table.documents tbody tr").count() > 0  # dropped pages, with reasons
    page.click("table.documents tbody tr:first-child a")
    page.wait_for_selector("text=Spot check")
    assert page.locator("pre.source").count() == 1  # the raw HTML, shown as text
    page.check("input[name=correct][value='1']")
    page.click("button:has-text('Save and check another')")
    page.wait_for_selector("text=Spot check saved")
    assert problems == [], problems
