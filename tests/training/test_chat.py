"""The chat page: sessions, streaming, branches, limits, disconnects, feedback into data."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings

from labeling.models import Conversation, Item
from training import inference
from training.models import ChatMessage, ChatSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(client_for: Any, tiny_checkpoint: Any) -> ChatSession:
    response = client_for("lena").post(
        "/chat/",
        {"checkpoint": tiny_checkpoint.pk, "system_prompt": "", "temperature": 0, "top_p": 1,
         "max_new_tokens": 8},
    )  # fmt: skip
    session = ChatSession.objects.get()
    assert response.url == f"/chat/{session.pk}/"
    return session


def events_of(response: Any) -> list[tuple[str, dict]]:
    text = b"".join(response.streaming_content).decode()
    events = []
    for block in text.strip().split("\n\n"):
        kind = block.split("\n")[0].removeprefix("event: ")
        events.append((kind, json.loads(block.split("\n")[1].removeprefix("data: "))))
    return events


def test_send_without_javascript_saves_question_and_reply(client_for, session) -> None:
    lena = client_for("lena")
    assert lena.post(f"/chat/{session.pk}/send/", {"content": "Hi there"}).status_code == 302
    session.refresh_from_db()
    question, reply = ChatMessage.objects.order_by("id")
    assert (question.role, question.content) == ("user", "Hi there")
    assert reply.parent == question and reply.role == "assistant"
    assert reply.checkpoint_id == session.checkpoint_id and session.leaf == reply
    assert session.title == "Hi there"
    page = lena.get(f"/chat/{session.pk}/").content.decode()
    assert "Hi there" in page and "Regenerate" in page


def test_streaming_reply_matches_what_is_saved(client_for, session) -> None:
    response = client_for("lena").post(
        f"/chat/{session.pk}/send/", {"content": "Hello", "stream": "1"}
    )
    assert response["Content-Type"] == "text/event-stream"
    events = events_of(response)
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "token" in kinds
    streamed = "".join(p["text"] for k, p in events if k == "token")
    reply = ChatMessage.objects.get(pk=events[-1][1]["message"])
    assert reply.content == streamed


def test_regenerate_and_edit_make_branches(client_for, session) -> None:
    lena = client_for("lena")
    lena.post(f"/chat/{session.pk}/send/", {"content": "First"})
    first_reply = ChatMessage.objects.get(role="assistant")
    lena.post(f"/chat/{session.pk}/messages/{first_reply.pk}/regenerate/")
    replies = ChatMessage.objects.filter(role="assistant").order_by("id")
    assert replies.count() == 2 and replies[0].parent_id == replies[1].parent_id
    assert "2/2" in lena.get(f"/chat/{session.pk}/").content.decode()
    lena.post(f"/chat/{session.pk}/messages/{replies[0].pk}/show/")
    session.refresh_from_db()
    assert session.leaf == replies[0]
    question = ChatMessage.objects.get(role="user")
    lena.post(f"/chat/{session.pk}/send/", {"content": "First, edited", "edit": question.pk})
    questions = ChatMessage.objects.filter(role="user")
    assert questions.count() == 2 and {q.parent_id for q in questions} == {None}
    assert ChatMessage.objects.count() == 5  # nothing was deleted


def test_too_long_and_dropped_turns(client_for, session) -> None:
    lena = client_for("lena")
    refused = lena.post(f"/chat/{session.pk}/send/", {"content": "apples " * 300, "stream": "1"})
    assert refused.status_code == 400 and "longer" in refused.json()["detail"]
    assert ChatMessage.objects.filter(role="user").count() == 1  # the question is kept
    for i in range(4):
        lena.post(f"/chat/{session.pk}/send/", {"content": f"question {i}"})
    response = lena.post(f"/chat/{session.pk}/send/", {"content": "again", "stream": "1"})
    start = events_of(response)[0]
    assert start[0] == "start" and start[1]["dropped"] > 0


def test_busy_gives_429_with_retry_after(client_for, session) -> None:
    slots = inference.generation_slots()
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        response = client_for("lena").post(
            f"/chat/{session.pk}/send/", {"content": "Hi", "stream": "1"}
        )
        assert response.status_code == 429 and response["Retry-After"]
    finally:
        for _ in range(taken):
            slots.release()
    with inference.user_slot(session.user_id), inference.user_slot(session.user_id):
        limited = client_for("lena").post(
            f"/chat/{session.pk}/send/", {"content": "Hi", "stream": "1"}
        )
        assert limited.status_code == 429


@pytest.mark.django_db(transaction=True)  # closing a response closes DB connections
def test_disconnects_stop_generation_and_free_slots(client_for, session) -> None:
    """A client that leaves mid-reply: the relay closes, the engine stops, the slot is freed
    and what was generated is kept as a stopped reply. 100 times, no slot leaks."""
    session.max_new_tokens = 30
    session.save()
    lena = client_for("lena")
    for _ in range(100):
        response = lena.post(f"/chat/{session.pk}/send/", {"content": "Hi", "stream": "1"})
        assert response.status_code == 200, response.content
        stream = iter(response.streaming_content)
        next(stream)  # the start event
        next(stream)  # the first token
        response.close()  # the client goes away, as a WSGI server reports it
    # the last generation thread notices the stop within a decoding step, then frees its slot
    slots = inference.generation_slots()
    acquired = [
        slots.acquire(timeout=2.0) for _ in range(settings.ORCHARD_MAX_CONCURRENT_GENERATIONS)
    ]
    assert all(acquired)
    for _ in acquired:
        slots.release()
    assert ChatMessage.objects.filter(role="assistant", finish_reason="stopped").count() >= 90


def test_sessions_are_private_searchable_and_deletable(client_for, session) -> None:
    lena = client_for("lena")
    lena.post(f"/chat/{session.pk}/send/", {"content": "Tell me about pears"})
    assert client_for("leo").get(f"/chat/{session.pk}/").status_code == 404
    assert "pears" in lena.get("/chat/?q=pears").content.decode()
    assert "No chat mentions" in lena.get("/chat/?q=kumquat").content.decode()
    lena.post(f"/chat/{session.pk}/delete/")
    assert not ChatSession.objects.exists() and not ChatMessage.objects.exists()


def test_feedback_correction_and_ranking_go_into_labeling(client_for, session, people) -> None:
    lena = client_for("lena")
    lena.post(f"/chat/{session.pk}/send/", {"content": "What is 2+2?"})
    reply = ChatMessage.objects.get(role="assistant")
    lena.post(
        f"/chat/{session.pk}/messages/{reply.pk}/feedback/", {"value": "down", "reason": "wrong"}
    )
    reply.refresh_from_db()
    assert (reply.feedback, reply.feedback_reason) == ("down", "wrong")
    lena.post(f"/labeling/from-chat/{reply.pk}/correction/", {"content": "2 + 2 = 4."})
    corrected = Conversation.objects.get(source="chat")
    assert corrected.status == "submitted" and "chat-correction" in corrected.tags
    assert corrected.messages[-2:] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
    ]
    assert corrected.project.name == "Chat feedback"
    refused = lena.post(f"/labeling/from-chat/{reply.pk}/rank/", follow=True)
    assert "Regenerate at least once" in refused.content.decode()
    lena.post(f"/chat/{session.pk}/messages/{reply.pk}/regenerate/")
    lena.post(f"/labeling/from-chat/{reply.pk}/rank/", {"project": corrected.project_id})
    item = Item.objects.get(kind="rank")
    assert len(item.responses) == 2 and item.seed_messages[-1]["content"] == "What is 2+2?"
    assert client_for("leo").post(f"/labeling/from-chat/{reply.pk}/rank/").status_code == 404


def test_a_chat_with_tools_on_replies_through_the_tool_loop(client_for, session) -> None:
    session.tools = True
    session.save()
    response = client_for("lena").post(
        f"/chat/{session.pk}/send/", {"content": "2+2?", "stream": "1"}
    )
    events = events_of(response)
    assert events[-1][0] == "done"
    reply = ChatMessage.objects.get(pk=events[-1][1]["message"])
    assert reply.role in ("assistant", "tool") and reply.checkpoint_id == session.checkpoint_id


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 50), ("temperature", -1), ("top_p", 7), ("top_p", 0), ("max_new_tokens", 0)],
)
def test_sampling_settings_outside_the_engines_bounds_are_refused(
    client_for, session, field, value
) -> None:
    """On a new session and in a session's settings: a clear error, and nothing saved that the
    engine would refuse at the next reply."""
    lena = client_for("lena")
    good = {"checkpoint": session.checkpoint_id, "system_prompt": "", "temperature": 0.7,
            "top_p": 0.9, "max_new_tokens": 8}  # fmt: skip
    new = lena.post("/chat/", {**good, field: value})
    assert new.status_code == 200 and ChatSession.objects.count() == 1
    assert "Ensure this value is" in new.content.decode()
    page = lena.post(f"/chat/{session.pk}/settings/", {**good, field: value}, follow=True)
    assert f"{field}: Ensure this value is" in page.content.decode()
    session.refresh_from_db()
    assert (session.temperature, session.top_p, session.max_new_tokens) == (0, 1, 8)
    assert lena.post(f"/chat/{session.pk}/settings/", good).status_code == 302
    session.refresh_from_db()
    assert (session.temperature, session.top_p) == (0.7, 0.9)


def test_the_new_session_form_offers_the_models_defaults(client_for, tiny_checkpoint) -> None:
    page = client_for("lena").get("/chat/").content.decode()
    defaults = {
        name: ChatSession._meta.get_field(name).default for name in ("temperature", "top_p")
    }
    assert f'name="temperature" value="{defaults["temperature"]}"' in page
    assert f'name="top_p" value="{defaults["top_p"]}"' in page
    assert 'name="max_new_tokens"' in page and 'max="' in page
