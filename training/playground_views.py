"""The base-model playground: sample from any checkpoint and see every token's probability.

``GET /playground/`` shows the form. With JavaScript the form posts to ``/playground/stream/``,
which answers server-sent events as tokens are generated; without it the form posts to
``/playground/`` and the page comes back with the finished samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods, require_POST

from training import inference, sampling_fields
from training.models import Artifact, ArtifactKind
from webapp.limits import generation_limit
from webapp.roles import Capability, role_required

MAX_PROMPT_CHARS = 8000
TOP_ALTERNATIVES = 5


class PlaygroundForm(forms.Form):
    checkpoint = forms.ModelChoiceField(queryset=Artifact.objects.none())
    prompt = forms.CharField(
        max_length=MAX_PROMPT_CHARS,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        initial="Once upon a time",
    )
    temperature = sampling_fields.temperature(0.8, most=sampling_fields.ENGINE_TEMPERATURE_MAX)
    top_k = forms.IntegerField(min_value=0, max_value=100_000, initial=0, help_text="0 = off")
    top_p = sampling_fields.top_p()
    seed = forms.IntegerField(min_value=0, required=False, help_text="blank = random")
    n = forms.IntegerField(min_value=1, max_value=8, initial=3, label="Samples")
    chat = forms.BooleanField(
        required=False,
        label="Send as a chat message",
        help_text="Wrap the prompt in the checkpoint's chat template as a user turn, so a "
        "fine-tuned model answers it as an assistant.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].queryset = Artifact.objects.filter(kind=ArtifactKind.CHECKPOINT)
        self.fields["max_new_tokens"] = sampling_fields.max_new_tokens(64)

    def prompt_text(self) -> str:
        """The text the model continues: the prompt itself, or a chat turn awaiting a reply."""
        prompt = self.cleaned_data["prompt"]
        if not self.cleaned_data.get("chat"):
            return prompt
        checkpoint = self.cleaned_data["checkpoint"]
        return inference.chat_prompts(checkpoint, [[{"role": "user", "content": prompt}]])[0]

    def sampling_params(self) -> Any:
        from training.core.generate import SamplingParams

        data = self.cleaned_data
        return SamplingParams(
            max_new_tokens=data["max_new_tokens"],
            temperature=data["temperature"],
            top_k=data["top_k"],
            top_p=data["top_p"],
            seed=data["seed"],
            n=data["n"],
            return_top_logprobs=TOP_ALTERNATIVES,
        )


def _wire_token(event: dict[str, Any]) -> dict[str, Any]:
    """An engine TokenEvent as the browser receives it."""
    return {
        "seq": event["index"],
        "id": event["token_id"],
        "text": event["text"],
        "p": round(math.exp(event["logprob"]), 4),
        "top": [[text, round(p, 4)] for text, p in (event.get("alternatives") or [])],
    }


def _samples(completions: list[dict[str, Any]], engine_tokens: dict[int, list]) -> list[dict]:
    return [
        {
            "index": i,
            "text": c["text"],
            "finish_reason": c["finish_reason"],
            "tokens": engine_tokens.get(i, []),
            "tokens_per_second": round(c["tokens_per_second"], 1),
        }
        for i, c in enumerate(completions)
    ]


def _initial(request: HttpRequest) -> dict[str, Any]:
    checkpoint = request.GET.get("checkpoint", "")
    initial: dict[str, Any] = {"checkpoint": checkpoint} if checkpoint.isdigit() else {}
    if request.GET.get("chat") == "1":
        initial.update(chat=True, prompt="Hello! Who are you?")
    return initial


@generation_limit
@role_required(Capability.CHAT)
@require_http_methods(["GET", "POST"])
def playground(request: HttpRequest) -> HttpResponse:
    form = PlaygroundForm(request.POST or None, initial=_initial(request))
    context: dict[str, Any] = {"form": form, "samples": None, "error": ""}
    status = 200
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "training/playground.html", context, status=400)
        try:
            context["samples"], context["error"] = _generate_all(form)
        except inference.Busy as busy:
            context["error"] = str(busy)
            response = render(request, "training/playground.html", context, status=503)
            response["Retry-After"] = str(busy.retry_after)
            return response
        status = 200 if not context["error"] else 400
    return render(request, "training/playground.html", context, status=status)


def _generate_all(form: PlaygroundForm) -> tuple[list[dict], str]:
    tokens: dict[int, list] = {}
    for event in inference.stream_generation(
        artifact=form.cleaned_data["checkpoint"],
        prompts=[form.prompt_text()],
        params=form.sampling_params(),
    ):
        if event["event"] == "token":
            wire = _wire_token(event)
            tokens.setdefault(wire["seq"], []).append(wire)
        elif event["event"] == "done":
            return _samples(event["completions"], tokens), ""
        else:
            return [], event["message"]
    return [], "the generation ended without a result"


@generation_limit
@role_required(Capability.CHAT)
@require_POST
def playground_stream(request: HttpRequest) -> HttpResponse:
    form = PlaygroundForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    try:
        events = inference.stream_generation(
            artifact=form.cleaned_data["checkpoint"],
            prompts=[form.prompt_text()],
            params=form.sampling_params(),
        )
        first = next(events)  # raises Busy before any bytes are sent
    except inference.Busy as busy:
        response = JsonResponse({"detail": str(busy)}, status=429)
        response["Retry-After"] = str(busy.retry_after)
        return response
    response = StreamingHttpResponse(_sse(first, events), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let proxies pass each event through at once
    return response


def _sse(first: dict[str, Any], events: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Server-sent events; closing this generator (client gone) stops the generation."""
    try:
        for event in _chain(first, events):
            kind = event["event"]
            if kind == "token":
                payload: dict[str, Any] = _wire_token(event)
            elif kind == "done":
                payload = {"samples": _samples(event["completions"], {})}
            else:
                payload = {"message": event["message"]}
            yield f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
    finally:
        events.close()


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
