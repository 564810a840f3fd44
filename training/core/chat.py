"""Chat helpers shared by the chat page and the OpenAI-compatible API (pure: no Django).

A long conversation must still fit the model's context window with room for the reply. The
oldest turns go first (the system prompt stays), whole exchanges at a time, so the model never
sees half of one; when even the newest question alone does not fit, the caller gets a clear
ValueError rather than a silently cut question.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> int:
    from training.core.generate import chat_prompt

    text = chat_prompt(tokenizer, messages)
    return len(tokenizer.encode(text, add_special_tokens=False))


def fit_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    window: int,
    reserve: int,
) -> tuple[list[dict[str, Any]], int]:
    """``messages`` without their oldest turns until the prompt leaves ``reserve`` tokens of
    ``window`` for the reply; returns the kept messages and how many were dropped."""
    budget = window - reserve
    if budget <= 0:
        raise ValueError(
            f"the reply may be {reserve} tokens but the model's context window is {window}: "
            "ask for fewer new tokens"
        )
    system = [m for m in messages[:1] if m.get("role") == "system"]
    turns = messages[len(system) :]
    dropped = 0
    while turns and prompt_tokens(tokenizer, system + turns) > budget:
        cut = _next_exchange(turns)
        turns = turns[cut:]
        dropped += cut
    if not turns:
        raise ValueError(
            f"the last message alone is longer than the {budget} tokens the context window "
            f"({window}) leaves after the reply: shorten it or ask for fewer new tokens"
        )
    return system + turns, dropped


def _next_exchange(turns: list[dict[str, Any]]) -> int:
    """How many turns make up the oldest exchange: up to (not including) the next user turn,
    and never the last turn (the question being answered)."""
    for index in range(1, len(turns)):
        if turns[index].get("role") == "user":
            return index
    return len(turns)
