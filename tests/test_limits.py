"""Rate limits on login and generation, each with a clear 429 and a Retry-After."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    cache.clear()


def test_login_attempts_are_limited(people, settings) -> None:
    settings.ORCHARD_LOGIN_RATE = "3/m"
    client = Client()
    codes = [
        client.post("/login/", {"username": "lena", "password": "wrong"}).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
    blocked = client.post("/login/", {"username": "lena", "password": "pw-lena"})
    assert blocked.status_code == 429 and blocked["Retry-After"] == "60"
    assert "Slow down" in blocked.content.decode()


def test_generation_is_limited_per_person(client_for, tiny_checkpoint, settings) -> None:
    settings.ORCHARD_GENERATION_RATE = "2/m"
    lena = client_for("lena")
    form = {"checkpoint": tiny_checkpoint.pk, "prompt": "Hi", "temperature": 0, "top_k": 0,
            "top_p": 1, "n": 1, "max_new_tokens": 2}  # fmt: skip
    assert [lena.post("/playground/", form).status_code for _ in range(2)] == [200, 200]
    limited = lena.post("/playground/stream/", form)
    assert limited.status_code == 429 and limited.json()["detail"].startswith("Too many")
    assert client_for("leo").post("/playground/", form).status_code == 200  # per person


def test_the_openai_api_shares_the_generation_limit(people, tiny_checkpoint, settings) -> None:
    from rest_framework.authtoken.models import Token

    settings.ORCHARD_GENERATION_RATE = "1/m"
    token = Token.objects.create(user=people["lena"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    body = {"model": f"orchard-{tiny_checkpoint.pk}", "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    assert client.post("/v1/chat/completions", body, "application/json").status_code == 200
    limited = client.post("/v1/chat/completions", body, "application/json")
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_exceeded"
