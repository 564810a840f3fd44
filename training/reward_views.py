"""The score explorer: what a reward model thinks of replies a person writes or picks.

Scores come from the same rendering the model was trained on (``training.core.reward.score``).
Reward models stay loaded in a small per-process cache; scoring shares the generation slots, so
a burst of requests waits its turn or gets "busy" instead of exhausting memory.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from django import forms
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from training import inference
from training.models import Artifact, ArtifactKind, RunRecord
from webapp.roles import Capability, role_required

REPLY_SEPARATOR = "\n---\n"
MAX_REPLIES = 16
_load_lock = threading.Lock()


def reward_models() -> Any:
    return Artifact.objects.filter(kind=ArtifactKind.CHECKPOINT, meta__stage="reward")


class ScoreForm(forms.Form):
    model = forms.ModelChoiceField(queryset=Artifact.objects.none(), label="Reward model")
    system = forms.CharField(required=False, max_length=4000, label="System prompt")
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=20_000)
    replies = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        max_length=100_000,
        help_text="Two or more replies, separated by a line holding only ---.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].queryset = reward_models()

    def clean_replies(self) -> list[str]:
        text = self.cleaned_data["replies"].replace("\r\n", "\n")
        replies = [r.strip() for r in text.split(REPLY_SEPARATOR) if r.strip()]
        if not replies:
            raise forms.ValidationError("Write at least one reply.")
        if len(replies) > MAX_REPLIES:
            raise forms.ValidationError(f"At most {MAX_REPLIES} replies at a time.")
        return replies


@lru_cache(maxsize=2)
def _loaded(pk: int, sha256: str, path: str) -> Any:
    from training.core.reward import load_reward_model
    from training.models import resolve_under_root

    return load_reward_model(resolve_under_root(path))


def score_replies(model: Artifact, prompt: list[dict], replies: list[str]) -> list[float]:
    from training.core.reward import score

    slots = inference.generation_slots()
    if not slots.acquire(blocking=False):
        raise inference.Busy(retry_after=settings.ORCHARD_GENERATION_RETRY_AFTER_SECONDS)
    try:
        with _load_lock:
            loaded_model, tokenizer = _loaded(model.pk, model.sha256, model.path)
        conversations = [[*prompt, {"role": "assistant", "content": r}] for r in replies]
        return score(loaded_model, tokenizer, conversations)
    finally:
        slots.release()


@role_required(Capability.VIEW_RUNS)
@require_http_methods(["GET", "POST"])
def score_explorer(request: HttpRequest) -> HttpResponse:
    initial = {"model": request.GET["model"]} if request.GET.get("model", "").isdigit() else {}
    form = ScoreForm(request.POST or None, initial=initial)
    context: dict[str, Any] = {"form": form, "scored": None, "error": "", "worst": None}
    status = 200
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        prompt = [{"role": "system", "content": data["system"]}] if data["system"] else []
        prompt.append({"role": "user", "content": data["prompt"]})
        try:
            scores = score_replies(data["model"], prompt, data["replies"])
        except inference.Busy as busy:
            context["error"] = str(busy)
            response = render(request, "training/score_explorer.html", context, status=503)
            response["Retry-After"] = str(busy.retry_after)
            return response
        except (ValueError, OSError) as exc:
            context["error"] = str(exc)
            status = 400
        else:
            context["scored"] = sorted(
                zip(scores, data["replies"], strict=True), key=lambda pair: -pair[0]
            )
    elif request.method == "POST":
        status = 400
    chosen = form.cleaned_data.get("model") if form.is_bound and form.is_valid() else None
    model_id = chosen.pk if chosen else initial.get("model")
    context["worst"] = _worst_pairs(model_id)
    return render(request, "training/score_explorer.html", context, status=status)


def _worst_pairs(model_id: Any) -> list[dict] | None:
    """The held-out pairs the model got most wrong, as its training run recorded them."""
    if not model_id:
        return None
    model = Artifact.objects.filter(pk=model_id).first()
    if model is None or model.run_id is None:
        return None
    record = RunRecord.objects.filter(run_id=model.run_id, name="worst_pairs").order_by("-step")
    first = record.first()
    return first.payload.get("pairs", []) if first else None
