"""The chat page in a real browser, talking to the tiny random checkpoint (64-token window):
replies stream in token by token, Stop ends a reply and keeps what arrived, Regenerate and Edit
make branches one can page through, hostile model output stays text, and a thumbs-down with a
better answer becomes a conversation for review."""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack

import pytest
from django.conf import settings
from playwright.sync_api import Page, expect

from tests.browser.test_labeling_flow import log_in
from tests.browser.test_labeling_xss import check
from tests.support.xss import HOSTILE, HOSTILE_LINES, LIVE_MARKUP, PAYLOADS, RECORD_CSP, culprits

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ASSISTANT = "#chat-log article.chat-assistant"
# Every text the streaming reply bubble shows, in order, reported to the test as it changes.
WATCH_STREAM = """
new MutationObserver(() => {
  const body = document.querySelector("#chat-log article.chat-assistant.streaming .plain");
  if (body && body.textContent !== window.lastStreamed) {
    window.lastStreamed = body.textContent;
    window.noteStreamed(body.textContent);
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture
def paced(monkeypatch):
    """The tiny model writes its whole reply in a few milliseconds; here each token takes
    ``delay`` seconds, like a real model's, so that one can watch a reply arrive and press Stop
    in the middle of it. The engine, its stop flag and the slots are the real ones."""
    from training.core.generate import Engine

    real = Engine.generate
    state = {"delay": 0.04}

    def generate(self, prompts, params, on_token=None, should_stop=None, **kwargs):
        def slow(event):
            time.sleep(state["delay"])
            on_token(event)

        return real(
            self,
            prompts,
            params,
            on_token=slow if on_token is not None else None,
            should_stop=should_stop,
            **kwargs,
        )

    monkeypatch.setattr(Engine, "generate", generate)
    return state


def start_chat(page: Page, base: str, checkpoint, **fields: str) -> int:
    """A new chat from the chat page's form; returns its id."""
    page.goto(f"{base}/chat/")
    page.select_option("#id_checkpoint", str(checkpoint.pk))
    values = {"temperature": "0", "top_p": "1", "max_new_tokens": "24", **fields}
    for name, value in values.items():
        page.fill(f"#id_{name}", value)
    page.click("main button:has-text('Start')")
    page.wait_for_url("**/chat/*/")
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def send(page: Page, text: str) -> None:
    page.fill("#chat-form textarea[name=content]", text)
    page.press("#chat-form textarea[name=content]", "Enter")


def wait_for_saved_reply(page: Page, count: int) -> None:
    """The page has reloaded after a reply: ``count`` saved replies with their controls."""
    expect(page.locator(f"{ASSISTANT}.streaming")).to_have_count(0)
    expect(page.locator(f"{ASSISTANT} button:has-text('Regenerate')")).to_have_count(count)


def slots_are_free() -> bool:
    """Every generation slot, and every per-person slot of lena's, can be taken (within 2 s)."""
    from training import inference

    slots = inference.generation_slots()
    taken = 0
    deadline = time.monotonic() + 2
    while taken < settings.ORCHARD_MAX_CONCURRENT_GENERATIONS:
        if slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        else:
            break
    for _ in range(taken):
        slots.release()
    return taken == settings.ORCHARD_MAX_CONCURRENT_GENERATIONS


def test_chat_streams_stops_regenerates_and_branches(
    browser_page, live_server, people, tiny_checkpoint, paced
):
    from training import inference
    from training.models import ChatMessage, ChatSession

    page, problems = browser_page
    base = live_server.url
    streamed: list[str] = []
    page.expose_function("noteStreamed", lambda text: streamed.append(text))
    page.add_init_script(WATCH_STREAM)
    log_in(page, base, "lena")
    session_id = start_chat(page, base, tiny_checkpoint)
    session = ChatSession.objects.get(pk=session_id, user=people["lena"])
    assert (session.checkpoint, session.max_new_tokens, session.temperature) == (
        tiny_checkpoint,
        24,
        0,
    )

    # Enter sends: the question appears at once, the reply grows token by token, then the page
    # reloads with the saved reply and its controls
    send(page, "Hi")
    expect(page.locator("#chat-log article.chat-user.streaming .plain")).to_have_text("Hi")
    expect(page.locator("#chat-send")).to_be_disabled()
    expect(page.locator("#chat-stop")).to_be_visible()
    wait_for_saved_reply(page, 1)
    first = ChatMessage.objects.get(session=session, role="assistant")
    assert first.parent.content == "Hi" and first.finish_reason in ("eos", "length")
    assert first.content, "the tiny model wrote nothing"
    growing = [len(text) for text in streamed]
    assert len(growing) >= 3 and growing == sorted(growing), growing  # it grew, a bit at a time
    assert streamed[-1] == first.content
    reply = page.locator(f"#msg-{first.pk}")
    expect(reply.locator("button[aria-label='Good answer']")).to_be_visible()
    expect(reply.locator("button[aria-label='Bad answer']")).to_be_visible()
    expect(page.locator("#chat-stop")).to_be_hidden()
    expect(page.locator("#chat-send")).to_be_enabled()

    # Regenerate: a second answer to the same question, shown as 2/2; ‹ goes back to 1/2
    page.click(f"#msg-{first.pk} button:has-text('Regenerate')")
    expect(page.locator(f"{ASSISTANT} .branch-nav")).to_contain_text("2/2")
    second = ChatMessage.objects.filter(role="assistant").exclude(pk=first.pk).get()
    assert second.parent_id == first.parent_id
    expect(page.locator(f"#msg-{second.pk}")).to_be_visible()
    page.click(f"#msg-{second.pk} button[aria-label='Previous version']")
    expect(page.locator(f"#msg-{first.pk} .branch-nav")).to_contain_text("1/2")
    expect(page.locator(f"#msg-{first.pk} button[aria-label='Next version']")).to_be_visible()
    expect(page.locator(f"#msg-{second.pk}")).to_have_count(0)

    # Edit the first question: a new branch, with its own reply
    question = page.locator("#chat-log article.chat-user").first
    question.locator("summary:has-text('Edit')").click()
    question.locator("textarea[name=content]").fill("Hello")
    question.locator("button:has-text('Send as a new branch')").click()
    expect(page.locator("#chat-log article.chat-user .plain").first).to_have_text("Hello")
    wait_for_saved_reply(page, 1)
    expect(page.locator("#chat-log article.chat-user .branch-nav")).to_contain_text("2/2")
    questions = ChatMessage.objects.filter(session=session, role="user").order_by("id")
    assert [(q.content, q.parent_id) for q in questions] == [("Hi", None), ("Hello", None)]
    session.refresh_from_db()
    assert session.leaf.parent_id == questions[1].pk and session.leaf.role == "assistant"

    # Stop: a longer, sampled reply is cut short; what arrived is kept and marked stopped
    page.locator("summary:has-text('Settings')").click()
    page.fill("aside #id_max_new_tokens", "40")
    page.fill("aside #id_temperature", "1")
    page.click("aside button:has-text('Save settings')")
    expect(page.locator("ul.messages")).to_contain_text("Settings saved")
    paced["delay"] = 0.15
    streamed.clear()
    send(page, "Hey")
    streaming = page.locator(f"{ASSISTANT}.streaming .plain")
    expect(streaming).not_to_have_text("")
    shown = streaming.text_content()
    page.click("#chat-stop")
    expect(page.locator(f"{ASSISTANT} .muted:has-text('stopped')")).to_be_visible()
    stopped = ChatMessage.objects.get(session=session, parent__content="Hey")
    assert stopped.finish_reason == "stopped"
    assert stopped.content.startswith(shown) and streamed[-1].startswith(shown)
    assert slots_are_free()
    with ExitStack() as lenas:  # lena's own per-person slots are all free too
        for _ in range(settings.ORCHARD_MAX_GENERATIONS_PER_USER):
            lenas.enter_context(inference.user_slot(people["lena"].pk))
    assert problems == [], problems


def test_model_output_never_runs_as_script(
    browser_page, live_server, people, tiny_checkpoint, monkeypatch
):
    """Hostile model output, stored and streamed, is shown as text and never runs.

    The stored path: replies, a tool call and a tool result holding the payloads, rendered as
    sanitised Markdown and escaped text. The streamed path: the model itself is replaced (and
    only the model: the view, the relay, the saving and the page are the real ones) by one that
    writes the payloads, so that the test controls what it outputs."""
    from training import chat
    from training.models import ChatMessage

    page, problems = browser_page
    base = live_server.url
    dialogs: list[str] = []
    foreign: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("request", lambda r: r.url.startswith(base) or foreign.append(r.url))
    page.add_init_script(RECORD_CSP)

    lena = people["lena"]
    session = chat.session_create(
        user=lena, checkpoint=tiny_checkpoint, max_new_tokens=24, system_prompt=HOSTILE
    )
    question = chat.add_user_message(session=session, content=HOSTILE, parent=None)
    call = {"type": "function", "function": {"name": PAYLOADS[1], "arguments": {"q": HOSTILE}}}
    answer = chat.save_reply(
        session=session,
        parent=question,
        turns=[
            {"role": "assistant", "content": HOSTILE, "tool_calls": [call]},
            {"role": "tool", "content": HOSTILE},
            {"role": "assistant", "content": HOSTILE_LINES},  # Markdown's block syntax too
        ],
        checkpoint=tiny_checkpoint,
        finish_reason="eos",
    )
    chat.set_feedback(message=answer, value="down", reason=HOSTILE)

    # (a) stored: Markdown, the tool step, the question, the title, the settings
    log_in(page, base, "lena")
    page.goto(f"{base}{session.get_absolute_url()}")
    for details in page.locator("#chat-log details").all():
        details.locator("summary").first.click()  # open every tool step and edit box
    check(page, "lena", *PAYLOADS)
    expect(page.locator(f"#msg-{question.pk} .plain")).to_contain_text(PAYLOADS[0])
    expect(page.locator("#chat-log article.chat-tool pre")).to_have_text(HOSTILE)
    expect(page.locator("#chat-log article.chat-assistant pre").first).to_contain_text(
        json.dumps(PAYLOADS[1])
    )
    assert page.locator("#chat-log .markdown").count() == 2

    # (b) streamed: the model writes the payloads token by token, waits until the test has
    # looked at the streaming bubble, then finishes
    looked = threading.Event()

    def hostile_model(*, artifact, messages, params, tools=False):
        yield {"event": "token", "text": ""}
        for payload in PAYLOADS:
            yield {"event": "token", "text": payload + " "}
        yield {"event": "tool_call", "name": PAYLOADS[2], "arguments": {"q": PAYLOADS[3]}}
        yield {"event": "tool_result", "content": PAYLOADS[4], "ok": True}
        looked.wait(timeout=15)
        yield {
            "event": "done",
            "messages": [{"role": "assistant", "content": HOSTILE_LINES}],
            "finish_reason": "eos",
            "tokens": len(PAYLOADS),
        }

    monkeypatch.setattr("training.chat_views.inference.stream_chat", hostile_model)
    # a chat of its own: the hostile system prompt above leaves no room in a 64-token window
    streamed = chat.session_create(user=lena, checkpoint=tiny_checkpoint, max_new_tokens=24)
    page.goto(f"{base}{streamed.get_absolute_url()}")
    send(page, "Hi")
    streaming = page.locator(f"{ASSISTANT}.streaming .plain").first
    expect(streaming).to_have_text(" ".join(PAYLOADS) + " ")
    expect(page.locator("#chat-log article.chat-tool.streaming .plain").last).to_have_text(
        PAYLOADS[4]
    )
    check(page, "lena", *PAYLOADS)
    looked.set()
    expect(page.locator(f"{ASSISTANT}.streaming")).to_have_count(0)
    saved = ChatMessage.objects.get(session=streamed, role="assistant")
    assert (saved.content, saved.finish_reason) == (HOSTILE_LINES, "eos")
    expect(page.locator(f"#msg-{saved.pk}")).to_be_visible()
    check(page, "lena", *PAYLOADS)
    assert page.evaluate(LIVE_MARKUP, "body") == []
    assert dialogs == [], culprits(dialogs)
    assert foreign == [], culprits(foreign)
    assert problems == [], problems


def test_feedback_turns_a_bad_answer_into_a_conversation_for_review(
    browser_page, live_server, people, tiny_checkpoint
):
    from labeling.models import Conversation, ConversationStatus
    from training.models import ChatMessage

    page, problems = browser_page
    base = live_server.url
    log_in(page, base, "lena")
    start_chat(page, base, tiny_checkpoint, max_new_tokens="8")
    send(page, "Hi")
    wait_for_saved_reply(page, 1)
    reply = ChatMessage.objects.get(role="assistant")
    card = page.locator(f"#msg-{reply.pk}")

    card.locator("input[name=reason]").fill("Not an answer to a greeting")
    card.locator("button[aria-label='Bad answer']").click()
    expect(card.locator("button[aria-label='Bad answer']")).to_have_class("link chosen")
    expect(card.locator("input[name=reason]")).to_have_value("Not an answer to a greeting")
    reply.refresh_from_db()
    assert (reply.feedback, reply.feedback_reason) == ("down", "Not an answer to a greeting")

    better = "Hello! How can I help you today?"
    card.locator("summary:has-text('Give a better answer')").click()
    card.locator("textarea[name=content]").fill(better)
    card.locator("button:has-text('Send for review as a training example')").click()
    expect(page.locator("ul.messages")).to_contain_text("Sent for review as conversation #")
    conversation = Conversation.objects.get(source="chat")
    assert conversation.status == ConversationStatus.SUBMITTED
    assert conversation.messages[-2:] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": better},
    ]
    assert conversation.project.name == "Chat feedback"
    assert f"#{conversation.pk}" in page.locator("ul.messages").inner_text()
    assert problems == [], problems
