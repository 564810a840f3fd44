"""The arena: two anonymous checkpoints answer one prompt, people vote, and a leaderboard of
Orchard's own checkpoints (Bradley-Terry ratings with bootstrap intervals) comes out of it."""

from __future__ import annotations

import random
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from training import inference
from training.chat_views import chat_checkpoints
from training.models import ArenaBattle
from webapp.limits import generation_limit
from webapp.rendering import render_markdown
from webapp.roles import Capability, role_required

ARENA_MAX_NEW_TOKENS = 128


class BattleForm(forms.Form):
    prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=4000)


@generation_limit
@role_required(Capability.CHAT)
@require_http_methods(["GET", "POST"])
def arena(request: HttpRequest) -> HttpResponse:
    form = BattleForm(request.POST or None)
    checkpoints = list(chat_checkpoints())
    status = 200
    if request.method == "POST" and form.is_valid():
        if len(checkpoints) < 2:
            form.add_error(None, "The arena needs at least two checkpoints.")
            status = 400
        else:
            try:
                battle = _battle(request.user, form.cleaned_data["prompt"], checkpoints)
            except inference.Busy as busy:
                form.add_error(None, f"The models are busy: try again in {busy.retry_after} s.")
                response = render(request, "training/arena.html", {"form": form}, status=503)
                response["Retry-After"] = str(busy.retry_after)
                return response
            except ValueError as exc:
                form.add_error(None, str(exc))
                status = 400
            else:
                return redirect(battle)
    recent = ArenaBattle.objects.filter(user=request.user).exclude(vote="")[:10]
    context = {"form": form, "enough": len(checkpoints) >= 2, "recent": recent}
    return render(request, "training/arena.html", context, status=status)


def _battle(user: Any, prompt: str, checkpoints: list) -> ArenaBattle:
    from training.core.generate import SamplingParams

    a, b = random.sample(checkpoints, 2)
    params = SamplingParams(
        max_new_tokens=min(ARENA_MAX_NEW_TOKENS, settings.ORCHARD_MAX_NEW_TOKENS), temperature=0.7
    )
    replies = []
    for checkpoint in (a, b):
        (text,) = inference.chat_prompts(checkpoint, [[{"role": "user", "content": prompt}]])
        (completion,) = inference.complete(artifact=checkpoint, prompts=[text], params=params)
        replies.append(completion["text"].strip())
    return ArenaBattle.objects.create(
        user=user, prompt=prompt, checkpoint_a=a, checkpoint_b=b, reply_a=replies[0],
        reply_b=replies[1],
    )  # fmt: skip


@role_required(Capability.CHAT)
@require_GET
def battle(request: HttpRequest, pk: int) -> HttpResponse:
    fight = get_object_or_404(ArenaBattle, pk=pk, user=request.user)
    return render(
        request,
        "training/arena_battle.html",
        {
            "battle": fight,
            "a_html": render_markdown(fight.reply_a),
            "b_html": render_markdown(fight.reply_b),
            "votes": ArenaBattle.Vote.choices,
        },
    )


@role_required(Capability.CHAT)
@require_POST
def vote(request: HttpRequest, pk: int) -> HttpResponse:
    fight = get_object_or_404(ArenaBattle, pk=pk, user=request.user)
    choice = request.POST.get("vote", "")
    if choice not in ArenaBattle.Vote.values:
        flash.error(request, "Choose A, B, a tie or both bad.")
        return redirect(fight)
    # a vote is final: the first one counts (a double click cannot change it)
    ArenaBattle.objects.filter(pk=fight.pk, vote="").update(vote=choice, voted_at=timezone.now())
    return redirect(fight)


def arena_votes() -> list[tuple[str, str, str]]:
    return [
        (f"#{a} {na}", f"#{b} {nb}", v)
        for a, na, b, nb, v in ArenaBattle.objects.exclude(vote="").values_list(
            "checkpoint_a_id", "checkpoint_a__name", "checkpoint_b_id", "checkpoint_b__name", "vote"
        )
    ]


@role_required(Capability.CHAT)
@require_GET
def leaderboard(request: HttpRequest) -> HttpResponse:
    from training.core.leaderboard import leaderboard as rank

    votes = arena_votes()
    rows = rank(votes) if votes else []
    return render(request, "training/arena_leaderboard.html", {"rows": rows, "battles": len(votes)})
