"""Model-assisted drafting: the project's checkpoint proposes the next assistant turn.

The proposal is stored with the turn (``draft``: checkpoint, sampling settings and the original
text), so the dataset can say which turns a model drafted and how much the person changed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labeling.models import Project
from labeling.turns import public_messages
from training.inference import Busy, chat_prompts, complete

__all__ = ["Busy", "DraftUnavailable", "Draft", "draft_reply"]

DRAFT_MAX_NEW_TOKENS = 256
DRAFT_TEMPERATURE = 0.7


class DraftUnavailable(ValueError):
    pass


@dataclass(frozen=True)
class Draft:
    text: str
    provenance: dict[str, Any]


def draft_reply(*, project: Project, messages: list[dict]) -> Draft:
    from training.core.generate import SamplingParams

    checkpoint = project.draft_checkpoint
    if checkpoint is None:
        raise DraftUnavailable("This project has no drafting checkpoint; a trainer can choose one.")
    if not messages or messages[-1].get("role") not in ("user", "tool"):
        raise DraftUnavailable("A draft answers the last user (or tool) turn: write that first.")
    params = SamplingParams(max_new_tokens=DRAFT_MAX_NEW_TOKENS, temperature=DRAFT_TEMPERATURE)
    (prompt,) = chat_prompts(checkpoint, [public_messages(messages)])
    try:
        (completion,) = complete(artifact=checkpoint, prompts=[prompt], params=params)
    except ValueError as exc:
        raise DraftUnavailable(f"The model could not draft: {exc}") from None
    text = completion["text"]
    return Draft(
        text=text.strip(),
        provenance={
            "checkpoint": checkpoint.pk,
            "checkpoint_sha256": checkpoint.sha256[:12],
            "temperature": DRAFT_TEMPERATURE,
            "text": text.strip(),
        },
    )
