"""htmx and CSRF in a real browser: a logged-in page hands its CSRF token to htmx through
``hx-headers`` on <body> (templates/base.html), so an unsafe htmx request carries it and goes
through; the same request without that wiring is refused. tests/test_csrf.py covers every route
with Django's test client."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page

from tests.browser.test_labeling_flow import log_in

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# An unsafe request issued by the page's own htmx, from <main> (so that it inherits whatever the
# page wires into htmx); resolves to the answer's status.
HTMX_POST = """async (path) => {
  let status = null;
  document.body.addEventListener("htmx:afterRequest", (e) => { status = e.detail.xhr.status; },
    {once: true});
  await htmx.ajax("POST", path, {source: "main", swap: "none"}).catch(() => null);
  return status;
}"""


def htmx_post(page: Page, path: str) -> tuple[int, dict[str, str], int]:
    """POST ``path`` through htmx: (status of the POST itself, its headers, the final status)."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(path)) as sent:
        final = page.evaluate(HTMX_POST, path)
    request = sent.value
    return request.response().status, request.all_headers(), final


def test_an_htmx_post_from_a_logged_in_page_carries_the_token(browser_page, live_server, people):
    from training import services
    from training.models import Run, RunStatus

    page, problems = browser_page
    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    log_in(page, live_server.url, "tom")
    page.goto(f"{live_server.url}/runs/")
    path = f"/runs/{run.pk}/cancel/"

    # without the page's wiring the same request is refused, and nothing is cancelled
    page.evaluate("document.body.removeAttribute('hx-headers')")
    status, headers, _ = htmx_post(page, path)
    assert headers["hx-request"] == "true" and "x-csrftoken" not in headers
    assert status == 403
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED

    page.reload()
    wiring = json.loads(page.locator("body").get_attribute("hx-headers"))  # masked anew per page
    status, headers, final = htmx_post(page, path)
    assert headers["hx-request"] == "true"
    assert headers["x-csrftoken"] == wiring["X-CSRFToken"]
    # cancelled, then the run's page: 286 is its answer to htmx about a run that has ended
    assert (status, final) == (302, 286)
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    assert [p for p in problems if "403" not in p] == [], problems  # only the provoked refusal
