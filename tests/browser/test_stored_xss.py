"""Stored XSS, in a real browser: hostile text in every field a person or a model can write is
shown as text. Chromium reports no dialog, no script blocked by the CSP (which would mean the
markup reached the page as HTML) and no request to another origin."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from training import services, uploads
from training.models import Run, RunRecord, RunStatus

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "<svg onload=alert(3)>",
    "</script><script>alert(4)</script>",
    '"><img src=x onerror=alert(5)>',
    "'><svg/onload=alert(6)>",
    "<a href=javascript:alert(7)>x</a>",
    "[x](javascript:alert(8)) ![y](https://evil.example/i.png)",
    '<div hx-get="/logout/" hx-trigger="load">x</div>',
    "<div hx-on:click=alert(9)>x</div>",
    "{{7*7}} {% debug %}",
    "\u2028<script>alert(10)</script>\u2029",
    '<iframe srcdoc="<script>alert(11)</script>"></iframe>',
    "<img src=https://evil.example/leak.png>",
    '{"a": "</script><script>alert(12)</script>"}',
]
HOSTILE = " ".join(PAYLOADS)


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
        page.wait_for_load_state("networkidle")
        assert page.locator("body").inner_text()  # rendered
    assert (
        page.evaluate("document.querySelectorAll('iframe, svg[onload], img[onerror]').length") == 0
    )
    assert dialogs == []
    assert foreign == []
    assert problems == [], problems  # includes "Refused to execute inline script" CSP reports
