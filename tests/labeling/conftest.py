"""Labeling fixtures: a project owned by tom (trainer) and ready-made conversations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

GOOD = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
]


@pytest.fixture
def project(people: dict[str, Any]) -> Any:
    from labeling import services

    return services.project_create(
        user=people["tom"],
        name="Arithmetic helper",
        guidelines="# Be exact\n\nShow the **steps**.",
        system_prompts=["You are a helpful assistant."],
        required_turns=1,
        overlap=2,
    )


@pytest.fixture
def submitted(project: Any, people: dict[str, Any]) -> Callable[..., Any]:
    """A conversation by ``author`` (default lena), already submitted for review."""
    from labeling import services

    def make(author: str = "lena", messages: list[dict] | None = None) -> Any:
        conversation = services.conversation_create(
            project=project, user=people[author], messages=list(messages or GOOD)
        )
        return services.conversation_submit(
            conversation=conversation, user=people[author], expected_version=conversation.version
        )

    return make
