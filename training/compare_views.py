"""Before and after: the same prompts sent to two checkpoints, side by side.

The usual pair is a fine-tuned checkpoint and the base it came from, so a person sees the base
model ramble on where the assistant answers and stops. Both sides get each prompt as a chat turn
rendered by their own chat template, with the same seed and settings.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from training import inference, sampling_fields
from training.models import Artifact, ArtifactKind
from webapp.limits import generation_limit
from webapp.roles import Capability, role_required

DEFAULT_PROMPTS = "Hello! Who are you?\nWhat is 12 + 30?\nWrite a haiku about apples."
MAX_PROMPTS = 8


class CompareForm(forms.Form):
    a = forms.ModelChoiceField(queryset=Artifact.objects.none(), label="Checkpoint")
    b = forms.ModelChoiceField(queryset=Artifact.objects.none(), label="Compared with")
    system = forms.CharField(required=False, max_length=2000, label="System prompt")
    prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        initial=DEFAULT_PROMPTS,
        help_text=f"One user message per line, at most {MAX_PROMPTS}.",
    )
    temperature = sampling_fields.temperature(0)
    seed = forms.IntegerField(min_value=0, initial=0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        checkpoints = Artifact.objects.filter(kind=ArtifactKind.CHECKPOINT)
        self.fields["a"].queryset = self.fields["b"].queryset = checkpoints
        self.fields["max_new_tokens"] = sampling_fields.max_new_tokens(96)

    def clean_prompts(self) -> list[str]:
        prompts = [p.strip() for p in self.cleaned_data["prompts"].splitlines() if p.strip()]
        if not prompts:
            raise forms.ValidationError("Write at least one prompt.")
        if len(prompts) > MAX_PROMPTS:
            raise forms.ValidationError(f"At most {MAX_PROMPTS} prompts at a time.")
        return prompts


def _initial(request: HttpRequest) -> dict[str, Any]:
    """``?a=<id>`` preselects a checkpoint and, as the other side, the checkpoint it came from."""
    initial: dict[str, Any] = {}
    a = request.GET.get("a", "")
    if a.isdigit():
        initial["a"] = int(a)
        parent = (
            Artifact.objects.filter(children__pk=int(a), kind=ArtifactKind.CHECKPOINT)
            .order_by("pk")
            .first()
        )
        if parent is not None:
            initial["b"] = parent.pk
    return initial


@generation_limit
@role_required(Capability.CHAT)
@require_http_methods(["GET", "POST"])
def compare(request: HttpRequest) -> HttpResponse:
    form = CompareForm(request.POST or None, initial=_initial(request))
    context: dict[str, Any] = {"form": form, "rows": None, "error": ""}
    status = 200
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "training/compare.html", context, status=400)
        try:
            context.update(_compare(form.cleaned_data))
        except inference.Busy as busy:
            context["error"] = str(busy)
            response = render(request, "training/compare.html", context, status=503)
            response["Retry-After"] = str(busy.retry_after)
            return response
        except ValueError as exc:
            context["error"] = str(exc)
            status = 400
    return render(request, "training/compare.html", context, status=status)


def _compare(data: dict[str, Any]) -> dict[str, Any]:
    from training.core.generate import SamplingParams

    params = SamplingParams(
        max_new_tokens=data["max_new_tokens"], temperature=data["temperature"], seed=data["seed"]
    )
    system = [{"role": "system", "content": data["system"]}] if data["system"] else []
    conversations = [[*system, {"role": "user", "content": p}] for p in data["prompts"]]
    sides = []
    for checkpoint in (data["a"], data["b"]):
        prompts = inference.chat_prompts(checkpoint, conversations)
        sides.append(inference.complete(artifact=checkpoint, prompts=prompts, params=params))
    rows = [
        {"prompt": prompt, "a": _reply(sides[0][i]), "b": _reply(sides[1][i])}
        for i, prompt in enumerate(data["prompts"])
    ]
    return {
        "rows": rows,
        "ended": [sum(row[side]["ended"] for row in rows) for side in ("a", "b")],
        "a": data["a"],
        "b": data["b"],
    }


def _reply(completion: dict[str, Any]) -> dict[str, Any]:
    # "eos": the model produced an end-of-turn token by itself (<|im_end|> for Orchard models)
    return {"text": completion["text"], "ended": completion["finish_reason"] == "eos"}
