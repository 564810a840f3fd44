"""Stored XSS, in a real browser: hostile text in every field a person or a model can write is
shown as text. Chromium reports no dialog, no live markup on any page (event handlers, script URLs,
frames), no script blocked by the CSP (which would mean the markup reached the page as HTML) and no
request to another origin."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.support.xss import HOSTILE, LIVE_MARKUP, PAYLOADS, RECORD_CSP, culprits
from training import services, uploads
from training.models import Run, RunRecord, RunStatus

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_hostile_text_is_inert_on_every_page(browser_page, live_server, people):
    page, problems = browser_page
    dialogs: list[str] = []
    foreign: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: r.url.startswith(live_server.url) or foreign.append(r.url))

    tom = people["tom"]
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("x.txt", f"{HOSTILE}\n".encode()),
        name=HOSTILE[:200],
        user=tom,
    )
    run = services.run_create(kind="countdown", config={}, inputs={}, user=tom)
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.FAILED,
        error=HOSTILE,
        traceback=HOSTILE,
        log_tail=HOSTILE,
        message=HOSTILE[:200],
    )
    RunRecord.objects.create(
        run=run, step=1, name="samples", payload={"samples": [{"prompt": HOSTILE, "text": HOSTILE}]}
    )

    page.add_init_script(RECORD_CSP)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "tom")
    page.fill("input[name=password]", "pw-tom")
    page.click("button[type=submit]")
    from urllib.parse import quote

    for path in (
        "/",
        "/runs/",
        f"/runs/{run.pk}/",
        "/artifacts/",
        f"/artifacts/{corpus.pk}/",
        "/checkpoints/",
        f"/runs/new/tokenizer/?input_corpus={corpus.pk}",
        f"/tokenizers/playground/?text={quote(HOSTILE)}",
    ):
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")  # images, frames and htmx have had their try
        live = page.evaluate(LIVE_MARKUP, "body, form.launch")  # the launch forms' own htmx
        assert live == [], (path, live, culprits(live))
        assert page.evaluate("window.cspViolations") == [], path
        if path == f"/runs/{run.pk}/":
            text = page.locator("body").inner_text()
            assert [p for p in PAYLOADS if p not in text] == []  # shown, as text
    assert dialogs == [], culprits(dialogs)
    assert foreign == [], culprits(foreign)
    assert problems == [], problems  # includes "Refused to execute inline script" CSP reports
