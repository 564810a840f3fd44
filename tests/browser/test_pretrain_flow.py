"""In a real browser: a trainer launches pretraining (seeing the estimate first), watches the
run page until it ends with samples and a loss chart, then samples from the new checkpoint in
the playground with tokens streamed in and their probabilities on hover."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_trainer_pretrains_and_samples_from_the_browser(
    browser_page,
    live_server,
    people,
    start_worker,
    corpus_and_tokenizer,
):
    page, problems = browser_page
    corpus, tokenizer = corpus_and_tokenizer
    start_worker("pretrain-browser")

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "tom")
    page.fill("input[name=password]", "pw-tom")
    page.click("button[type=submit]")
    page.goto(
        f"{live_server.url}/runs/new/pretrain/"
        f"?input_corpus={corpus.pk}&input_tokenizer={tokenizer.pk}"
    )
    assert page.locator("#estimate").inner_text().count("FLOPs per token") == 1
    tiny_parameters = page.locator("#estimate dd").first.inner_text()
    page.select_option("select[name=config_preset]", "mini")  # htmx recomputes the estimate
    page.wait_for_function(
        "before => document.querySelector('#estimate dd').innerText !== before", arg=tiny_parameters
    )
    page.select_option("select[name=config_preset]", "tiny")
    for name, value in {
        "max_steps": "16",
        "batch_size": "4",
        "context_length": "64",
        "eval_every": "8",
        "sample_every": "8",
        "checkpoint_every": "8",
        "warmup_steps": "2",
        "sample_max_new_tokens": "12",
    }.items():
        page.fill(f"input[name=config_{name}]", value)
    page.click("button:has-text('Queue run')")
    page.wait_for_selector("#run-status:has-text('succeeded')", timeout=180_000)
    assert page.locator("#run-samples td.sample-text").count() >= 2
    assert page.locator("figure.chart polyline").count() >= 1

    page.click("text=Sample from it in the playground")
    page.fill("input[name=max_new_tokens]", "12")
    page.fill("input[name=seed]", "3")
    page.click("#generate")
    page.wait_for_selector("article.sample h3 .muted:not(:has-text('generating'))", timeout=60_000)
    tokens = page.locator("article.sample .tokens span:not(.prompt)")
    assert tokens.count() >= 3
    assert tokens.first.get_attribute("title").startswith("p=")
    assert problems == [], problems
