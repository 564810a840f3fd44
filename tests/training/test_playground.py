"""The base-model playground: plain HTTP, streaming, limits, busy answers, disconnects."""

from __future__ import annotations

import json
import time

import pytest
from django.test import override_settings

from training import inference

pytestmark = pytest.mark.django_db


def form(checkpoint, **overrides) -> dict:
    data = {
        "checkpoint": checkpoint.pk,
        "prompt": "document number",
        "temperature": "0.8",
        "top_k": "0",
        "top_p": "1",
        "max_new_tokens": "8",
        "seed": "7",
        "n": "2",
    }
    data.update(overrides)
    return data


def sse_events(response) -> list[tuple[str, dict]]:
    raw = b"".join(response.streaming_content).decode()
    events = []
    for block in raw.strip().split("\n\n"):
        kind = block.split("\n")[0].removeprefix("event: ")
        events.append((kind, json.loads(block.split("data: ", 1)[1])))
    return events


@pytest.fixture(autouse=True)
def fresh_engines():
    inference.engine_cache().clear()
    yield
    inference.engine_cache().clear()


def test_the_page_offers_checkpoints_and_explains_an_empty_state(client_for, tiny_checkpoint):
    body = client_for("lena").get(f"/playground/?checkpoint={tiny_checkpoint.pk}").content
    assert f'value="{tiny_checkpoint.pk}" selected'.encode() in body


def test_plain_http_returns_samples_with_token_probabilities(client_for, tiny_checkpoint):
    response = client_for("lena").post("/playground/", form(tiny_checkpoint))
    assert response.status_code == 200
    samples = response.context["samples"]
    assert len(samples) == 2
    assert all(1 <= len(s["tokens"]) <= 8 for s in samples)
    token = samples[0]["tokens"][0]
    assert 0 < token["p"] <= 1 and len(token["top"]) == 5
    assert 'title="p=' in response.content.decode()


def test_the_same_seed_repeats_and_streaming_matches_plain_http(client_for, tiny_checkpoint):
    client = client_for("lena")
    plain = client.post("/playground/", form(tiny_checkpoint)).context["samples"]
    events = sse_events(client.post("/playground/stream/", form(tiny_checkpoint)))
    assert events[-1][0] == "done"
    streamed = events[-1][1]["samples"]
    assert [s["text"] for s in streamed] == [s["text"] for s in plain]
    by_seq: dict[int, str] = {}
    for kind, payload in events[:-1]:
        assert kind == "token"
        by_seq[payload["seq"]] = by_seq.get(payload["seq"], "") + payload["text"]
    assert [by_seq.get(i, "") for i in range(2)] == [s["text"] for s in streamed]


def test_max_new_tokens_is_capped_by_the_server(client_for, tiny_checkpoint):
    with override_settings(ORCHARD_MAX_NEW_TOKENS=16):
        response = client_for("lena").post(
            "/playground/stream/", form(tiny_checkpoint, max_new_tokens="1000000000")
        )
    assert response.status_code == 400
    assert "max_new_tokens" in response.json()["errors"]


def test_busy_slots_answer_429_with_retry_after(client_for, tiny_checkpoint):
    slots = inference.generation_slots()
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        response = client_for("lena").post("/playground/stream/", form(tiny_checkpoint))
        assert response.status_code == 429
        assert response["Retry-After"].isdigit()
        page = client_for("lena").post("/playground/", form(tiny_checkpoint))
        assert page.status_code == 503 and "busy" in page.content.decode()
    finally:
        for _ in range(taken):
            slots.release()


def test_a_client_that_disconnects_stops_the_generation_and_frees_its_slot(
    client_for, tiny_checkpoint, monkeypatch
):
    engine = inference.engine_cache().get(tiny_checkpoint)
    finished: list = []
    original = engine.generate

    def spy(*args, **kwargs):
        finished.extend(original(*args, **kwargs))
        return finished

    monkeypatch.setattr(engine, "generate", spy)
    response = client_for("lena").post(
        "/playground/stream/", form(tiny_checkpoint, max_new_tokens="400", n="1")
    )
    next(iter(response.streaming_content))  # the first token arrived
    response.close()  # what the server does when the client goes away
    deadline = time.monotonic() + 5
    while not finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert finished and finished[0].finish_reason == "stopped"
    assert len(finished[0].token_ids) < 400
    assert wait_for_free_slots() == inference.settings.ORCHARD_MAX_CONCURRENT_GENERATIONS


def wait_for_free_slots(timeout: float = 5) -> int:
    slots = inference.generation_slots()
    deadline = time.monotonic() + timeout
    while True:
        free = 0
        while slots.acquire(blocking=False):
            free += 1
        for _ in range(free):
            slots.release()
        limit = inference.settings.ORCHARD_MAX_CONCURRENT_GENERATIONS
        if free == limit or time.monotonic() > deadline:
            return free
        time.sleep(0.02)


def test_the_engine_cache_keeps_a_bounded_number_of_models(tiny_checkpoint):
    cache = inference.EngineCache(size=1)
    first = cache.get(tiny_checkpoint)
    assert cache.get(tiny_checkpoint) is first
    assert len(cache._engines) == 1
