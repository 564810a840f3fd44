"""Fitting a long conversation into the context window: oldest exchanges go first."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.core.chat import fit_messages, prompt_tokens


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def exchange(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"question number {i} about apples"},
        {"role": "assistant", "content": f"answer number {i} about apples"},
    ]


def test_short_conversations_are_kept_whole(tok) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *exchange(1), exchange(2)[0]]
    kept, dropped = fit_messages(tok, messages, window=512, reserve=16)
    assert kept == messages and dropped == 0


def test_oldest_exchanges_go_first_and_the_system_prompt_stays(tok) -> None:
    system = {"role": "system", "content": "Be brief."}
    messages = [system, *exchange(1), *exchange(2), *exchange(3), exchange(4)[0]]
    full = prompt_tokens(tok, messages)
    kept, dropped = fit_messages(tok, messages, window=full - 5 + 16, reserve=16)
    assert kept[0] == system and kept[-1] == exchange(4)[0]
    assert dropped % 2 == 0 and dropped >= 2  # whole exchanges only
    assert kept[1]["role"] == "user"
    assert prompt_tokens(tok, kept) <= full - 5


def test_a_question_too_long_alone_is_refused_clearly(tok) -> None:
    messages = [{"role": "user", "content": "apples " * 200}]
    with pytest.raises(ValueError, match="last message alone is longer"):
        fit_messages(tok, messages, window=64, reserve=16)
    with pytest.raises(ValueError, match="ask for fewer new tokens"):
        fit_messages(tok, messages, window=64, reserve=64)
