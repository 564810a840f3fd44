"""Chat sessions: a tree of messages per conversation, the branch on screen, and replies.

Editing an earlier question adds a sibling of it and regenerating adds a sibling answer; the
session's ``leaf`` says which branch is shown, so nothing anyone wrote or saw is ever deleted
until the whole session is.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Q

from training.models import Artifact, ChatMessage, ChatSession

TITLE_CHARS = 60


def session_create(*, user: Any, checkpoint: Artifact | None, **settings: Any) -> ChatSession:
    return ChatSession.objects.create(user=user, checkpoint=checkpoint, **settings)


def branch(session: ChatSession, leaf: ChatMessage | None = None) -> list[ChatMessage]:
    """The messages from the root to ``leaf`` (default: the session's), oldest first."""
    node = leaf if leaf is not None else session.leaf
    by_id = {m.pk: m for m in session.messages.all()}
    path = []
    while node is not None:
        path.append(by_id.get(node.pk, node))
        node = by_id.get(node.parent_id) if node.parent_id else None
    return list(reversed(path))


def model_messages(session: ChatSession, path: list[ChatMessage]) -> list[dict]:
    system = [{"role": "system", "content": session.system_prompt}] if session.system_prompt else []
    return system + [m.as_message() for m in path]


def add_user_message(
    *, session: ChatSession, content: str, parent: ChatMessage | None
) -> ChatMessage:
    """A new question after ``parent`` (the end of the branch, or an edited question's parent)."""
    with transaction.atomic():
        message = ChatMessage.objects.create(
            session=session, parent=parent, role="user", content=content
        )
        session.leaf = message
        if not session.title:
            session.title = " ".join(content.split())[:TITLE_CHARS]
        session.save(update_fields=["leaf", "title", "updated_at"])
    return message


def save_reply(
    *,
    session: ChatSession,
    parent: ChatMessage,
    turns: list[dict],
    checkpoint: Artifact | None,
    finish_reason: str,
    tokens: int = 0,
) -> ChatMessage:
    """Store the assistant's turns (with tool calls and results) under ``parent``."""
    with transaction.atomic():
        node = parent
        for turn in turns:
            node = ChatMessage.objects.create(
                session=session,
                parent=node,
                role=turn["role"],
                content=turn.get("content") or "",
                tool_calls=turn.get("tool_calls") or [],
                checkpoint=checkpoint,
                finish_reason=finish_reason if turn is turns[-1] else "tool_calls",
                tokens=tokens if turn is turns[-1] else 0,
            )
        session.leaf = node
        session.save(update_fields=["leaf", "updated_at"])
    return node


def reply_parent(message: ChatMessage) -> ChatMessage:
    """The user message an assistant reply answers (through any tool steps)."""
    node = message
    while node.parent is not None and node.role != "user":
        node = node.parent
    return node


def show_branch(*, session: ChatSession, message: ChatMessage) -> None:
    """Put ``message``'s newest descendants on screen."""
    node = message
    while True:
        child = node.children.order_by("-created_at", "-id").first()
        if child is None:
            break
        node = child
    session.leaf = node
    session.save(update_fields=["leaf", "updated_at"])


def siblings(message: ChatMessage) -> list[ChatMessage]:
    return list(
        ChatMessage.objects.filter(session_id=message.session_id, parent_id=message.parent_id)
        .filter(role=message.role)
        .order_by("created_at", "id")
    )


def search(*, user: Any, query: str) -> Any:
    sessions = ChatSession.objects.filter(user=user)
    if query:
        sessions = sessions.filter(
            Q(title__icontains=query) | Q(messages__content__icontains=query)
        ).distinct()
    return sessions.select_related("checkpoint")


def set_feedback(*, message: ChatMessage, value: str, reason: str) -> ChatMessage:
    if value not in (*ChatMessage.Feedback.values, ""):
        raise ValueError("feedback is up, down or empty")
    message.feedback = value
    message.feedback_reason = reason[:500]
    message.save(update_fields=["feedback", "feedback_reason"])
    return message
