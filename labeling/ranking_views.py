"""Pages for ranking and arena tasks, generating their replies, agreement and preference export.

The ranking form works as plain HTTP (a rank number per reply; equal numbers tie);
``static/js/rank.js`` adds drag-and-drop and keyboard ordering on top of the same inputs.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages as flash
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from labeling import ranking
from labeling.models import Assignment, AssignmentStatus, Project, ResponseBatch, TaskKind
from labeling.services import LabelingRefused
from labeling.turns import messages_to_turns
from training.models import Artifact, generative_checkpoints
from webapp.rendering import render_markdown
from webapp.roles import Capability, role_required, user_can

MAX_PROMPTS = 500


class ResponsesForm(forms.Form):
    kind = forms.ChoiceField(
        choices=[(TaskKind.RANK, "Rank K replies"), (TaskKind.ARENA, "Arena: two checkpoints")]
    )
    checkpoints = forms.ModelMultipleChoiceField(
        queryset=Artifact.objects.none(),
        help_text="Ranking: one or more. Arena: exactly two.",
    )
    prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text=f"One user prompt per line (at most {MAX_PROMPTS}).",
    )
    samples_per_checkpoint = forms.IntegerField(min_value=1, max_value=16, initial=2, label="K")
    temperature = forms.FloatField(min_value=0, max_value=2, initial=0.8)
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=128)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["checkpoints"].queryset = generative_checkpoints()

    def clean_prompts(self) -> list[str]:
        prompts = [p.strip() for p in self.cleaned_data["prompts"].splitlines() if p.strip()]
        if not prompts:
            raise forms.ValidationError("Write at least one prompt.")
        if len(prompts) > MAX_PROMPTS:
            raise forms.ValidationError(f"At most {MAX_PROMPTS} prompts at a time.")
        return prompts


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def responses_new(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ResponsesForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        system = [{"role": "system", "content": p} for p in project.system_prompts[:1]]
        try:
            batch = ranking.responses_launch(
                project=project,
                user=request.user,
                kind=data["kind"],
                checkpoints=list(data["checkpoints"]),
                prompts=[[*system, {"role": "user", "content": p}] for p in data["prompts"]],
                config={
                    "samples_per_checkpoint": data["samples_per_checkpoint"],
                    "temperature": data["temperature"],
                    "max_new_tokens": data["max_new_tokens"],
                },
            )
        except LabelingRefused as exc:
            form.add_error(None, str(exc))
        else:
            flash.success(
                request,
                f"Generating replies (run #{batch.run_id}); the tasks appear in the queue when "
                "it finishes.",
            )
            return redirect(project)
    batches = ResponseBatch.objects.filter(project=project).select_related("run")[:10]
    return render(
        request,
        "labeling/responses_new.html",
        {"form": form, "project": project, "batches": batches},
    )


def _own_assignment(request: HttpRequest, pk: int) -> Assignment:
    return get_object_or_404(
        Assignment.objects.select_related("item", "item__project"), pk=pk, labeler=request.user
    )


@role_required(Capability.LABEL)
@require_http_methods(["GET", "POST"])
def task_rank(request: HttpRequest, pk: int) -> HttpResponse:
    assignment = _own_assignment(request, pk)
    item = assignment.item
    problems: list[str] = []
    status = 200
    if request.method == "POST":
        try:
            ranking.ranking_submit(
                assignment=assignment, user=request.user, ranking=_posted_ranking(request, item)
            )
        except (LabelingRefused, ValueError) as exc:
            problems, status = [str(exc)], 400
        else:
            from labeling.views import next_task_redirect

            flash.success(request, "Thank you!")
            return next_task_redirect(request, item.project)
    context = {
        "assignment": assignment,
        "item": item,
        "project": item.project,
        "prompt_turns": messages_to_turns(item.seed_messages),
        "replies": [
            {"index": i, "html": render_markdown(r["text"]), "label": "AB"[i] if i < 2 else i + 1}
            for i, r in enumerate(item.responses)
        ],
        "rank_choices": range(1, len(item.responses) + 1),
        "guidelines_html": render_markdown(item.project.guidelines),
        "problems": problems,
        "open": assignment.status == AssignmentStatus.ACTIVE
        and assignment.lease_expires_at >= timezone.now(),
        "started": int(timezone.now().timestamp()),
    }
    template = "labeling/arena.html" if item.kind == TaskKind.ARENA else "labeling/rank.html"
    return render(request, template, context, status=status)


def _posted_ranking(request: HttpRequest, item: Any) -> ranking.RankingInput:
    started = request.POST.get("started", "")
    spent = int(timezone.now().timestamp()) - int(started) if started.isdigit() else None
    if item.kind == TaskKind.ARENA:
        vote = request.POST.get("vote", "")
        if vote not in ranking.VOTES:
            raise ValueError("Choose A, B, a tie, or both bad.")
        order, all_bad = ranking.VOTES[vote]
        return ranking.RankingInput(
            order=order,
            all_bad=all_bad,
            better_answer=request.POST.get("better_answer", ""),
            seconds_spent=spent,
        )
    ranks = []
    for index in range(len(item.responses)):
        value = request.POST.get(f"rank_{index}", "")
        if not value.isdigit():
            raise ValueError(f"Give reply {index + 1} a rank.")
        ranks.append(int(value))
    return ranking.RankingInput(
        order=ranking.ranks_to_order(ranks),
        all_bad=request.POST.get("all_bad") == "on",
        better_answer=request.POST.get("better_answer", ""),
        seconds_spent=spent,
    )


@role_required(Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)
@require_GET
def project_agreement(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    report = ranking.agreement_report(project=project)
    if not (
        user_can(request.user, Capability.REVIEW)
        or user_can(request.user, Capability.MANAGE_PROJECTS)
    ):
        report["per_labeler"] = [r for r in report["per_labeler"] if r[0] == request.user.username]
    return render(request, "labeling/agreement.html", {"project": project, "report": report})


class PreferenceExportForm(forms.Form):
    name = forms.CharField(max_length=200)
    validation_fraction = forms.FloatField(min_value=0.0, max_value=0.5, initial=0.1)


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def preference_export(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = PreferenceExportForm(
        request.POST or None,
        initial={"name": f"{project.name} preferences {timezone.now():%Y-%m-%d %H:%M}"},
    )
    if request.method == "POST" and form.is_valid():
        try:
            snapshot = ranking.preference_snapshot_create(
                project=project, user=request.user, **form.cleaned_data
            )
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            flash.success(request, "Preference pairs exported.")
            return redirect(snapshot)
    report = ranking.agreement_report(project=project)
    return render(
        request,
        "labeling/preference_export.html",
        {"form": form, "project": project, "report": report},
    )


class PreferenceImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, optionally gzip-compressed.")
    format = forms.ChoiceField(
        choices=[("hh", "HH-RLHF chosen/rejected pairs"), ("oasst", "Ranked OpenAssistant trees")]
    )


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def preference_import(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = PreferenceImportForm(request.POST or None, request.FILES or None)
    result = None
    if request.method == "POST" and form.is_valid():
        imported, problems = ranking.import_preferences(
            project=project, uploaded=form.cleaned_data["file"], fmt=form.cleaned_data["format"]
        )
        result = {"imported": imported, "problems": problems}
    return render(
        request,
        "labeling/preference_import.html",
        {"form": form, "project": project, "result": result},
    )
