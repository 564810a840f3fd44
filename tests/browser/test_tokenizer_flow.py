"""In a real browser: a trainer logs in, uploads a corpus, launches a tokenizer run and watches
the run page update itself (htmx polling) until the run succeeds and shows its vocabulary."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_trainer_trains_a_tokenizer_from_the_browser(
    browser_page, live_server, people, start_worker, shakespeare_slice, tmp_path
):
    page, problems = browser_page
    start_worker("browser")
    corpus_path = shakespeare_slice(120_000)

    page.goto(f"{live_server.url}/runs/")
    page.fill("input[name=username]", "tom")
    page.fill("input[name=password]", "pw-tom")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/runs/")

    page.click("text=Upload corpus")
    page.set_input_files("input[name=file]", str(corpus_path))
    page.click("button:has-text('Upload')")
    page.wait_for_selector("text=Train a tokenizer on it")
    page.click("text=Train a tokenizer on it")

    assert page.locator("select[name=input_corpus] option:checked").count() == 1
    page.fill("input[name=config_vocab_size]", "600")
    page.click("button:has-text('Queue run')")
    page.wait_for_selector("#run-status")
    assert "/runs/" in page.url

    # No reload from here on: the page updates itself until the run ends.
    page.wait_for_selector("#run-status:has-text('succeeded')", timeout=120_000)
    assert page.locator("#sample-encoding span").count() > 3
    assert page.locator("text=Vocabulary size").count() == 1
    assert page.locator("progress[value='1.0'], progress[value='1']").count() == 1
    assert problems == [], problems
