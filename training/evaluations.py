"""The evaluation every training run gets: when a pretraining, SFT, reward, PPO or GRPO run
succeeds, an ``evaluate`` run is launched on its checkpoint with the held-out data its own
inputs provide, so every checkpoint arrives with comparable figures (see
:mod:`training.core.evaluate`):

- pretraining: validation loss and bits per byte on the held-out documents of its corpus;
- SFT: held-out SFT loss, the share of replies that end their turn, and the win rate against its
  base judged by a reward model, when there is one (see :func:`judge_for`);
- reward model: held-out pairwise accuracy on its preference snapshots;
- PPO: the win rate against its starting policy, judged by the independent monitor reward model
  when the run had one (the reward model it was optimised against can be gamed), on its prompts;
- GRPO: pass@1 / pass@k, multiple-choice accuracy and the factuality shares on its problems, and
  the win rate against its starting checkpoint when a reward model exists.

Turned off with ``ORCHARD_AUTO_EVALUATE=0``. The evaluation is an ordinary run: visible,
cancellable, retried like any other; it never changes the training run's outcome.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from training.models import Artifact, ArtifactKind, Run, RunStatus
from training.selectors import lineage

log = logging.getLogger(__name__)

EVALUATED_KINDS = ("pretrain", "sft", "reward", "ppo", "grpo")
# Small on purpose: the figures compare checkpoints on the same data, and the worker should move
# on to the next training run quickly. A full evaluation is one launch away on the runs page.
FOLLOW_UP_CONFIG: dict[str, Any] = {
    "max_problems": 32,
    "k": 2,
    "max_new_tokens": 48,
    "max_text_tokens": 8192,
    "max_conversations": 32,
    "max_prompts": 8,
}


@dataclass(frozen=True)
class Figure:
    """How one evaluation figure is shown: its result key, label, and whether it is a share."""

    key: str
    label: str
    share: bool = True
    higher_is_better: bool = True

    def text(self, value: Any) -> str:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return "—"
        if not math.isfinite(value):
            return str(value)
        return f"{100 * value:.1f}%" if self.share else f"{value:.3f}"


FIGURES = (
    Figure("pass@1", "pass@1 (greedy)"),
    Figure("pass@k", "pass@k"),
    Figure("accuracy", "Sampled accuracy"),
    Figure("mc_accuracy", "Multiple-choice accuracy"),
    Figure("correct_rate", "Correct"),
    Figure("wrong_rate", "Wrong", higher_is_better=False),
    Figure("refusal_rate", "I don't know"),
    Figure("win_rate", "Win rate vs baseline"),
    Figure("rm_accuracy", "Reward-model accuracy"),
    Figure("stop_rate", "Ends its turn"),
    Figure("sft_loss", "Held-out SFT loss", share=False, higher_is_better=False),
    Figure("val_loss", "Validation loss", share=False, higher_is_better=False),
    Figure("val_bpb", "Bits per byte", share=False, higher_is_better=False),
)


def launch_follow_up(run: Run) -> Run | None:
    """The evaluate run for a training run that just succeeded, or None when there is nothing
    to measure (or automatic evaluation is off). Never raises: a problem is logged."""
    if not getattr(settings, "ORCHARD_AUTO_EVALUATE", True) or run.kind not in EVALUATED_KINDS:
        return None
    try:
        return _launch(run)
    except Exception:  # the training run has succeeded whatever happens here
        log.exception("could not launch the evaluation of run #%s", run.pk)
        return None


def _launch(run: Run) -> Run | None:
    from training import services

    output = Artifact.objects.filter(run=run, kind=ArtifactKind.CHECKPOINT).first()
    if output is None:
        return None
    plan = follow_up_inputs(run, output)
    if plan is None:
        return None
    inputs, config = plan
    return services.run_create(
        kind="evaluate",
        config={**FOLLOW_UP_CONFIG, **config},
        inputs=inputs,
        user=run.created_by,
    )


def follow_up_inputs(run: Run, output: Artifact) -> tuple[dict[str, list[int]], dict] | None:
    """``(inputs, config)`` of the evaluation of ``output``, the checkpoint ``run`` made."""
    given: dict[str, list[int]] = run.inputs or {}
    inputs: dict[str, list[int]] = {"checkpoints": [output.pk]}
    config: dict[str, Any] = {}
    if run.kind == "pretrain":
        fraction = float((run.config or {}).get("val_fraction", 0.05) or 0)
        if fraction <= 0:
            return None  # nothing was held out: every document was trained on
        inputs["text"] = list(given.get("corpus", []))
        config["text_hold_out_every"] = max(1, round(1 / fraction))
    elif run.kind == "sft":
        inputs["conversations"] = list(given.get("datasets", []))
        _add_win_rate(inputs, baseline=given.get("base"), judge=judge_for(output))
    elif run.kind == "reward":
        inputs["preferences"] = list(given.get("datasets", []))
    elif run.kind == "ppo":
        inputs["prompts"] = list(given.get("prompts", []))
        judge = (given.get("monitor") or given.get("reward") or [None])[0]
        _add_win_rate(inputs, baseline=given.get("policy"), judge=judge)
    elif run.kind == "grpo":
        inputs["problems"] = list(given.get("problems", []))
        _add_win_rate(inputs, baseline=given.get("base"), judge=judge_for(output))
    measurable = set(inputs) - {"checkpoints"}
    return (inputs, config) if measurable and any(inputs[k] for k in measurable) else None


def _add_win_rate(inputs: dict[str, list[int]], *, baseline: Any, judge: int | None) -> None:
    baseline_ids = list(baseline or [])
    if judge is not None and baseline_ids:
        inputs["judge"] = [judge]
        inputs["baseline"] = baseline_ids[:1]


JUDGE_CANDIDATES = 50  # the newest reward models looked at for one of the same family


def judge_for(output: Artifact) -> int | None:
    """The reward model that judges ``output``'s replies: the newest one of its family (sharing
    a tokenizer or an ancestor checkpoint with it), else the newest there is.

    An installation may hold several teams' models; a reward model trained on the same line of
    checkpoints learned the preferences that line is being taught.
    """
    candidates = list(
        Artifact.objects.filter(
            kind=ArtifactKind.CHECKPOINT, run__kind="reward", run__status=RunStatus.SUCCEEDED
        )
        .exclude(pk=output.pk)
        .order_by("-created_at", "-pk")[:JUDGE_CANDIDATES]
    )
    family = _family([output, *lineage(output)])
    related = (c for c in candidates if family & _family([c, *lineage(c)]))
    chosen = next(related, None) or (candidates[0] if candidates else None)
    return chosen.pk if chosen else None


def _family(artifacts: list[Artifact]) -> set[int]:
    return {a.pk for a in artifacts if a.kind in (ArtifactKind.CHECKPOINT, ArtifactKind.TOKENIZER)}


def evaluations_of(artifact: Artifact) -> list[Run]:
    """The evaluate runs that measured ``artifact``, newest first."""
    runs = (
        Run.objects.filter(kind="evaluate", input_artifacts=artifact)
        .distinct()
        .order_by("-created_at", "-pk")
    )
    # A checkpoint may also be an evaluation's judge or baseline: that is not measuring it.
    return [r for r in runs if artifact.pk in (r.inputs or {}).get("checkpoints", [])]
