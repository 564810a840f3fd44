"""An Idempotency-Key makes retried API calls act once, even when the retries race."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from rest_framework.authtoken.models import Token

from labeling import services
from labeling.models import Conversation, Revision
from tests.labeling.conftest import GOOD


def token_client(user: Any) -> Client:
    token, _ = Token.objects.get_or_create(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


@pytest.mark.django_db
def test_the_same_key_ten_times_makes_one_record(project: Any, people: dict) -> None:
    tom = token_client(people["tom"])
    body = {"conversations": [{"messages": GOOD}], "status": "approved"}
    answers = [
        tom.post(
            f"/api/labeling/projects/{project.pk}/conversations/",
            body,
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY="bulk-1",
        )
        for _ in range(10)
    ]
    assert {a.status_code for a in answers} == {201}
    assert Conversation.objects.count() == 1
    assert len({tuple(a.json()["created"]) for a in answers}) == 1
    assert answers[1]["Idempotent-Replayed"] == "true"
    other = tom.post(
        f"/api/labeling/projects/{project.pk}/items/",
        {"kind": "write", "count": 1},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="bulk-1",
    )
    assert other.status_code == 422  # a key belongs to one endpoint
    fresh = tom.post(
        f"/api/labeling/projects/{project.pk}/conversations/",
        body,
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="bulk-2",
    )
    assert fresh.status_code == 201 and Conversation.objects.count() == 2


@pytest.mark.django_db
def test_a_failed_request_can_be_retried_with_its_key(project: Any, people: dict) -> None:
    draft = services.conversation_create(project=project, user=people["lena"], messages=GOOD[1:2])
    lena = token_client(people["lena"])
    url = f"/api/labeling/conversations/{draft.pk}/submit/"
    first = lena.post(url, {}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="s1")
    assert first.status_code == 400  # no assistant turn yet: nothing stored
    services.conversation_save(
        conversation=draft, user=people["lena"], messages=GOOD, expected_version=draft.version
    )
    again = lena.post(url, {}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="s1")
    assert again.status_code == 200
    assert (
        lena.post(url, {}, content_type="application/json", HTTP_IDEMPOTENCY_KEY="s1").json()
        == again.json()
    )
    assert Revision.objects.filter(conversation=draft, action="submit").count() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_retries_act_once(project: Any, people: dict) -> None:
    tom = people["tom"]
    Token.objects.get_or_create(user=tom)
    answers: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        try:
            barrier.wait()
            client = token_client(tom)
            response = client.post(
                f"/api/labeling/projects/{project.pk}/conversations/",
                {"conversations": [{"messages": GOOD}], "status": "approved"},
                content_type="application/json",
                HTTP_IDEMPOTENCY_KEY="race",
            )
            answers.append(response.status_code)
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert answers == [201] * 8
    assert Conversation.objects.count() == 1
