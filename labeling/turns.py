"""Editor turns ↔ Hugging Face chat messages.

The editor shows one box per turn, and a tool call is a turn of its own (``tool_call``: the JSON
``{"name": ..., "arguments": {...}}``) so a labeler can write, move and delete it like any other.
Stored conversations and exports use the HF format, where a tool call is an assistant message
with ``tool_calls``. These two functions convert between the two without losing anything.
"""

from __future__ import annotations

import json
from typing import Any

EDITOR_ROLES = ("system", "user", "assistant", "tool_call", "tool")
ROLE_LABELS = {
    "system": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool_call": "Tool call",
    "tool": "Tool result",
}
# Orchard-only per-turn keys: kept in the database, stripped from exports.
PRIVATE_KEYS = ("draft",)


class TurnError(ValueError):
    def __init__(self, index: int, message: str) -> None:
        self.index = index
        super().__init__(f"turn {index + 1}: {message}")


def messages_to_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls") or []
        if message.get("role") == "assistant" and calls:
            if message.get("content"):
                turns.append(_turn("assistant", message["content"], message))
            for call in calls:
                fn = call.get("function", call)
                body = {"name": fn.get("name", ""), "arguments": fn.get("arguments", {})}
                turns.append({"role": "tool_call", "content": json.dumps(body, ensure_ascii=False)})
        else:
            turns.append(_turn(message.get("role", ""), message.get("content") or "", message))
    return turns


def _turn(role: str, content: str, message: dict[str, Any]) -> dict[str, Any]:
    turn = {"role": role, "content": content}
    for key in PRIVATE_KEYS:
        if key in message:
            turn[key] = message[key]
    return turn


def turns_to_messages(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HF messages; a tool call joins the assistant turn just before it (or starts one).

    Raises TurnError naming the turn when a role is unknown or a tool call is not valid JSON.
    """
    messages: list[dict[str, Any]] = []
    for index, turn in enumerate(turns):
        role = turn.get("role")
        content = turn.get("content")
        if role not in EDITOR_ROLES:
            raise TurnError(index, f"unknown role {role!r}")
        if not isinstance(content, str):
            raise TurnError(index, "the text must be a string")
        if role == "tool_call":
            call = {"type": "function", "function": _parse_call(index, content)}
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            continue
        message: dict[str, Any] = {"role": role, "content": content}
        for key in PRIVATE_KEYS:
            if turn.get(key):
                message[key] = turn[key]
        messages.append(message)
    return messages


def _parse_call(index: int, text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TurnError(
            index, f'a tool call is JSON like {{"name": "calculator", "arguments": {{}}}} ({exc})'
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not body["name"]:
        raise TurnError(index, 'a tool call needs a "name"')
    arguments = body.get("arguments", {})
    if not isinstance(arguments, dict | str):
        raise TurnError(index, '"arguments" must be an object or a string')
    return {"name": body["name"], "arguments": arguments}


def public_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as they are exported and trained on: Orchard-only keys removed."""
    return [{k: v for k, v in m.items() if k not in PRIVATE_KEYS} for m in messages]


def assistant_turns(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("role") == "assistant")


def as_text(messages: list[dict[str, Any]]) -> str:
    """A plain rendering for edit distances: one ``role: content`` block per turn."""
    parts = []
    for message in public_messages(messages):
        calls = message.get("tool_calls")
        suffix = f" {json.dumps(calls, sort_keys=True)}" if calls else ""
        parts.append(f"{message.get('role')}: {message.get('content') or ''}{suffix}")
    return "\n".join(parts)
