"""The OpenAI-compatible API: /v1/models and /v1/chat/completions, over HTTP and with `openai`."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client, override_settings
from rest_framework.authtoken.models import Token

from training import inference
from training.models import Artifact

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def fresh_engines():
    inference.engine_cache().clear()
    yield
    inference.engine_cache().clear()


@pytest.fixture
def api(people):
    """A client authenticated as lena (a labeler: chat is one of her capabilities)."""
    token = Token.objects.create(user=people["lena"])
    return Client(HTTP_AUTHORIZATION=f"Bearer {token.key}")


def body(checkpoint, **overrides) -> dict:
    data = {
        "model": f"orchard-{checkpoint.pk}",
        "messages": [{"role": "user", "content": "document number"}],
        "max_tokens": 8,
        "temperature": 0,
        "seed": 7,
    }
    data.update(overrides)
    return data


def post(client, data, **extra):
    return client.post(URL, json.dumps(data), content_type="application/json", **extra)


def chunks(response) -> list:
    assert response["Content-Type"].startswith("text/event-stream")
    raw = b"".join(response.streaming_content).decode()
    lines = [block for block in raw.split("\n\n") if block]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def assert_error(response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_models_lists_checkpoints_but_not_reward_models(api, tiny_checkpoint):
    reward = Artifact.objects.create(
        kind="checkpoint", name="rm", path="rm", sha256="0" * 64, meta={"stage": "reward"}
    )
    listing = api.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == [f"orchard-{tiny_checkpoint.pk}"]
    model = listing["data"][0]
    assert model["object"] == "model" and model["owned_by"] == "orchard"
    assert isinstance(model["created"], int)
    assert api.get(f"/v1/models/orchard-{tiny_checkpoint.pk}").json()["id"] == model["id"]
    assert_error(api.get(f"/v1/models/orchard-{reward.pk}"), 404, "model", "model_not_found")


def test_a_completion_has_openai_shape_and_usage(api, tiny_checkpoint):
    response = post(api, body(tiny_checkpoint))
    assert response.status_code == 200, response.content
    reply = response.json()
    assert reply["id"].startswith("chatcmpl-") and reply["object"] == "chat.completion"
    assert reply["model"] == f"orchard-{tiny_checkpoint.pk}" and isinstance(reply["created"], int)
    [choice] = reply["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert 5 < usage["prompt_tokens"] < 64
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 8


def test_model_by_name_or_bare_id_and_text_parts(api, tiny_checkpoint):
    parts = [{"type": "text", "text": "document"}, {"type": "text", "text": "number"}]
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]
    by_name = post(api, body(tiny_checkpoint, model="tiny", messages=messages))
    by_pk = post(api, body(tiny_checkpoint, model=str(tiny_checkpoint.pk), messages=messages))
    assert by_name.status_code == by_pk.status_code == 200
    assert by_name.json()["choices"] == by_pk.json()["choices"]


def test_streamed_deltas_concatenate_to_the_plain_greedy_text(api, tiny_checkpoint):
    plain = post(api, body(tiny_checkpoint, max_tokens=12)).json()
    events = chunks(
        post(
            api,
            body(tiny_checkpoint, max_tokens=12, stream=True, stream_options={"include_usage": 1}),
        )
    )
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finish = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finish[:-1] == [None] * (len(finish) - 1)
    assert finish[-1] == plain["choices"][0]["finish_reason"]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]


def test_max_tokens_is_lowered_to_the_server_ceiling(api, tiny_checkpoint):
    with override_settings(ORCHARD_MAX_NEW_TOKENS=3):
        reply = post(api, body(tiny_checkpoint, max_completion_tokens=10_000)).json()
    assert reply["usage"]["completion_tokens"] <= 3


def test_n_samples_and_stop_strings(api, tiny_checkpoint):
    reply = post(api, body(tiny_checkpoint, n=3, temperature=1.0, max_tokens=6)).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert reply["usage"]["completion_tokens"] <= 18

    greedy = post(api, body(tiny_checkpoint, max_tokens=20)).json()["choices"][0]
    text = greedy["message"]["content"]
    assert len(text) >= 6, "the tiny model's greedy reply is too short to test stop strings"
    stop = text[3:6]
    stopped = post(api, body(tiny_checkpoint, max_tokens=20, stop=[stop, "\x00"])).json()
    choice = stopped["choices"][0]
    assert choice["message"]["content"] == text[: text.find(stop)]
    assert choice["finish_reason"] == "stop"
    single = post(api, body(tiny_checkpoint, max_tokens=20, stop=stop)).json()
    assert single["choices"][0]["message"]["content"] == text[: text.find(stop)]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"temperature": 9}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"n": 17}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "many"}, "max_completion_tokens"),
        ({"stop": [""]}, "stop"),
        ({"seed": -1}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"model": None}, "model"),
    ],
)
def test_invalid_requests_name_the_parameter(api, tiny_checkpoint, overrides, param):
    error = assert_error(post(api, body(tiny_checkpoint, **overrides)), 400, param)
    assert error["type"] == "invalid_request_error"


def test_unknown_model_and_malformed_json(api, tiny_checkpoint):
    assert_error(post(api, body(tiny_checkpoint, model="gpt-4o")), 404, "model", "model_not_found")
    bad_json = api.post(URL, "{not json", content_type="application/json")
    assert_error(bad_json, 400)


def test_a_prompt_longer_than_the_context_window_is_refused(api, tiny_checkpoint):
    long = [{"role": "user", "content": "document number " * 60}]
    error = assert_error(
        post(api, body(tiny_checkpoint, messages=long)), 400, "messages", "context_length_exceeded"
    )
    assert "64 tokens" in error["message"]


def test_credentials_are_required(people, tiny_checkpoint):
    response = post(Client(), body(tiny_checkpoint))
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == "Bearer"
    assert_error(Client().get("/v1/models"), 401)
    assert_error(post(Client(HTTP_AUTHORIZATION="Bearer nope"), body(tiny_checkpoint)), 401)
    token = Token.objects.create(user=people["tom"])  # a trainer, with "Token <key>"
    response = post(Client(HTTP_AUTHORIZATION=f"Token {token.key}"), body(tiny_checkpoint))
    assert response.status_code == 200


def test_a_session_works_for_the_browser_but_needs_csrf(people, tiny_checkpoint):
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["lena"])
    assert client.get("/v1/models").status_code == 200
    error = assert_error(post(client, body(tiny_checkpoint)), 403)
    assert "CSRF" in error["message"]


def test_busy_slots_answer_429_with_retry_after(api, tiny_checkpoint):
    slots = inference.generation_slots()
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        for stream in (False, True):
            response = post(api, body(tiny_checkpoint, stream=stream))
            error = assert_error(response, 429, code="rate_limit_exceeded")
            assert error["type"] == "rate_limit_exceeded"
            assert response["Retry-After"].isdigit()
    finally:
        for _ in range(taken):
            slots.release()


def test_a_streaming_client_that_disconnects_stops_the_generation(
    api, tiny_checkpoint, monkeypatch
):
    engine = inference.engine_cache().get(tiny_checkpoint)
    finished: list = []
    original = engine.generate

    def spy(*args, **kwargs):
        finished.extend(original(*args, **kwargs))
        return finished

    monkeypatch.setattr(engine, "generate", spy)
    short = [{"role": "user", "content": "hi"}]
    response = post(api, body(tiny_checkpoint, messages=short, max_tokens=400, stream=True))
    stream = iter(response.streaming_content)
    next(stream), next(stream)  # the role chunk, then the first content (or the end)
    response.close()  # what the server does when the client goes away
    deadline = time.monotonic() + 5
    while not finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert finished and finished[0].finish_reason == "stopped"
    assert len(finished[0].token_ids) < 50


@pytest.mark.django_db(transaction=True)
def test_the_openai_client_chats_and_streams(live_server, people, tiny_checkpoint):
    openai = pytest.importorskip("openai")
    token = Token.objects.create(user=people["lena"])
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=token.key, max_retries=0)
    model = f"orchard-{tiny_checkpoint.pk}"
    assert [m.id for m in client.models.list()] == [model]
    messages = [{"role": "user", "content": "document number"}]
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, seed=3
    )
    assert reply.object == "chat.completion" and reply.usage.completion_tokens <= 8
    text = reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, seed=3, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces) == text
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong").models.list()
