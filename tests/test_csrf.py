"""CSRF is enforced on every unsafe method, htmx requests included, after a real login.

The routes come from tests/test_permissions.py's CASES, which test_every_route_is_classified
keeps equal to what the URL resolver serves, so a new endpoint is covered here without a list of
its own. Each route is called by a person the permission table lets through (a refusal can then
only be the CSRF check) with ``HX-Request: true``, as htmx sends it: without a token every unsafe
method is refused; with the token the page wires into htmx (``hx-headers`` on <body>) the route
answers as the permission table says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from tests import test_permissions as permissions
from tests.test_permissions import API_CREATE, CASES, Case
from training import services

pytestmark = pytest.mark.django_db

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
ROUTES = {**CASES, "api-run-create": API_CREATE}
# The objects the permission table's paths point at (tom's run, lena's chat, ...), made fresh.
objects = permissions.objects


def allowed_persona(case: Case) -> str:
    """Someone the route serves: a success or a validation answer first, else a 404 (the
    object is not theirs, but the request reached the view)."""
    people = [p for p in permissions.PERSONAS if p != "anon"]
    for refused in ((401, 403, 404), (401, 403)):
        for person in people:
            if case.expect[person] not in refused:
                return person
    raise AssertionError(f"no one may use {case}")


def log_in(name: str) -> Client:
    """A browser-like session: the login form's own token, then the session it starts."""
    client = Client(enforce_csrf_checks=True)
    form = client.get("/login/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, "the login form carries a CSRF token"
    response = client.post(
        "/login/",
        {"username": name, "password": f"pw-{name}", "csrfmiddlewaretoken": token[1]},
    )
    assert response.status_code == 302, f"{name} could not log in"
    return client


def htmx_token(client: Client, page_path: str = "/") -> str:
    """The token a page hands to htmx: ``<body hx-headers='{"X-CSRFToken": ...}'>``."""
    page = client.get(page_path).content.decode()
    wiring = re.search(r"<body hx-headers='([^']+)'>", page)
    assert wiring, "base.html wires the CSRF token into htmx"
    return json.loads(wiring[1])["X-CSRFToken"]


def send(
    client: Client,
    method: str,
    path: str,
    token: str | None = None,
    data: Any = None,
    form: bool = False,
) -> Any:
    """An htmx-style request (``HX-Request: true``), with the token header when one is given;
    JSON, or a form's fields (as htmx posts a form, and as a file upload is sent)."""
    headers = {"HX-Request": "true"}
    if token is not None:
        headers["X-CSRFToken"] = token
    call = getattr(client, method.lower())
    if form or (isinstance(data, dict) and any(hasattr(v, "read") for v in data.values())):
        return call(path, data, headers=headers)
    return call(path, json.dumps(data or {}), content_type="application/json", headers=headers)


def csrf_refusal(response: Any) -> bool:
    """Django's middleware and DRF's session authentication both say what refused the call (an
    HTML-only API view, the Swagger page, renders a bare "403 Forbidden" instead)."""
    return response.status_code == 403 and b"CSRF" in response.content


def test_every_unsafe_method_without_a_token_is_refused(objects: Callable[[], dict]) -> None:
    from labeling.models import Conversation
    from training.models import ChatSession, Run, RunStatus

    made = objects()
    clients: dict[str, Client] = {}
    accepted = []
    for name, case in sorted(ROUTES.items()):
        person = allowed_persona(case)
        if person not in clients:
            clients[person] = log_in(person)
        client = clients[person]
        path = case.path(made)
        for method in UNSAFE:
            data = case.data() if case.data and method == case.method else None
            response = send(client, method, path, data=data)
            if response.status_code == 403 and not csrf_refusal(response):
                # a bare 403: it was the CSRF check if the token alone turns it into another answer
                response = send(client, method, path, htmx_token(client), data)
                refused_for_csrf = response.status_code != 403
            else:
                refused_for_csrf = csrf_refusal(response)
            if not refused_for_csrf:
                accepted.append(f"{method} {path} ({name}, {person}): {response.status_code}")
    assert accepted == []
    # and nothing happened: the run is still queued, lena's chat and conversation untouched
    assert Run.objects.get(pk=made["run"].pk).status == RunStatus.QUEUED
    assert ChatSession.objects.filter(pk=made["chat"].pk).exists()
    conversation = made["conversation"]
    assert Conversation.objects.get(pk=conversation.pk).version == conversation.version


UNSAFE_ROUTES = sorted(n for n, c in ROUTES.items() if c.method in UNSAFE)


@pytest.mark.parametrize("name", UNSAFE_ROUTES)
def test_the_token_htmx_sends_lets_the_request_through(
    objects: Callable[[], dict], name: str
) -> None:
    case = ROUTES[name]
    person = allowed_persona(case)
    client = log_in(person)
    made = objects()
    data = case.data() if case.data else None
    response = send(client, case.method, case.path(made), htmx_token(client), data)
    assert not csrf_refusal(response)
    assert response.status_code == case.expect[person], response.content[:300]


def test_real_writes_need_the_token_and_go_through_with_it(objects: Callable[[], dict]) -> None:
    """Launching a run, a review decision and an editor autosave, as the pages send them: refused
    and without effect when the token is missing, done when it is there."""
    from labeling.models import Conversation
    from training.models import Run

    conversation = objects()["conversation"]

    def state() -> tuple[int, int, str]:
        stored = Conversation.objects.get(pk=conversation.pk)
        return Run.objects.count(), stored.version, stored.status

    def post(person: str, path: str, data: Any, form: bool, expected: int) -> None:
        client = log_in(person)
        before = state()
        assert csrf_refusal(send(client, "POST", path, None, data, form)), path
        assert state() == before, path
        response = send(client, "POST", path, htmx_token(client), data, form)
        assert response.status_code == expected, (path, response.content[:300])

    runs, version, _ = state()
    launch = {"config_steps": "2", "config_checkpoint_every": "1", "config_step_seconds": "0"}
    post("tom", "/runs/new/countdown/", launch, True, 302)
    assert state() == (runs + 1, version, "submitted")

    review = {"decision": "approve", "comment": "Fine.", "version": str(version)}
    post("rita", f"/labeling/conversations/{conversation.pk}/review/", review, True, 302)
    _, approved, status = state()
    assert status == "approved"

    # the author edits the approved conversation: one version on, and back to review
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    autosave = {"version": approved, "turns": turns}
    post("lena", f"/labeling/conversations/{conversation.pk}/autosave/", autosave, False, 200)
    assert state() == (runs + 1, approved + 1, "submitted")


def test_put_patch_and_delete_with_the_token_reach_the_view(objects: Callable[[], dict]) -> None:
    """The API saves a conversation with PUT (the labeling API's optimistic-lock write); the
    methods a route does not take are answered 405 by the view, not 403 by the CSRF check."""
    made = objects()
    conversation = made["conversation"]
    client = log_in("lena")  # its author
    token = htmx_token(client)
    path = f"/api/labeling/conversations/{conversation.pk}/"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    body = {"messages": messages, "version": conversation.version}
    saved = send(client, "PUT", path, token, body)
    assert saved.status_code == 200, saved.content[:300]
    conversation.refresh_from_db()
    assert conversation.messages[-1]["content"] == "Hello!"
    for method in ("PATCH", "DELETE"):
        assert send(client, method, path, token).status_code == 405
    autosave = f"/labeling/conversations/{conversation.pk}/autosave/"
    for method in ("PUT", "PATCH", "DELETE"):
        assert send(client, method, autosave, token).status_code == 405


def test_a_token_from_before_the_login_is_refused_after_it(people: dict) -> None:
    """Logging in rotates the CSRF secret: a token planted or read before the login is stale."""
    client = Client(enforce_csrf_checks=True)
    before = htmx_token(client, "/login/")
    response = client.post(
        "/login/", {"username": "tom", "password": "pw-tom", "csrfmiddlewaretoken": before}
    )
    assert response.status_code == 302
    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    assert csrf_refusal(send(client, "POST", f"/runs/{run.pk}/cancel/", before))
    assert send(client, "POST", f"/runs/{run.pk}/cancel/", htmx_token(client)).status_code == 302
