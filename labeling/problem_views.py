"""The problem bank page: write, import, generate, review and export problems for RL."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages as flash
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from labeling import problem_bank
from labeling.data import uploaded_lines
from labeling.models import Problem, ProblemStatus, Project
from labeling.services import LabelingRefused
from webapp.roles import Capability, role_required, user_can


class ProblemForm(forms.Form):
    question = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=20_000)
    checker = forms.ChoiceField(
        choices=[
            ("number", "A number"),
            ("choice", "Multiple choice"),
            ("python", "Checked by Python code"),
        ]
    )
    answer = forms.CharField(
        max_length=500,
        help_text="The number (1,000 and 5.0 are fine), the right letter, or any note for code.",
    )
    choices = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Multiple choice: one option per line, in order A, B, C...",
    )
    checker_code = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}),
        help_text="def check(answer: str) -> bool: ... (runs in a sandbox)",
    )
    solution = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))

    def record(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "question": data["question"],
            "answer": data["answer"],
            "checker": data["checker"],
            "choices": [c.strip() for c in data["choices"].splitlines() if c.strip()] or None,
            "checker_code": data["checker_code"] or None,
            "solution": data["solution"],
        }


class GenerateForm(forms.Form):
    count = forms.IntegerField(min_value=1, max_value=10_000, initial=200)
    difficulty = forms.IntegerField(min_value=1, max_value=5, initial=2)
    seed = forms.IntegerField(min_value=0, initial=0)


class ImportForm(forms.Form):
    file_format = forms.ChoiceField(
        label="Format",
        choices=[
            ("gsm8k", "GSM8K (question, answer with the final number after ####)"),
            ("choice", "Multiple choice (ARC or MMLU style: question, choices, answer)"),
        ],
        initial="gsm8k",
    )
    file = forms.FileField(help_text="JSONL, one problem per line; gzip fine.")


class ExportForm(forms.Form):
    name = forms.CharField(max_length=200)
    validation_fraction = forms.FloatField(min_value=0.0, max_value=0.5, initial=0.1)


ANY = (Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)


@role_required(*ANY)
@require_http_methods(["GET", "POST"])
def problems(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ProblemForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if not (
            user_can(request.user, Capability.LABEL)
            or user_can(request.user, Capability.MANAGE_PROJECTS)
        ):
            return HttpResponse("Your role may not write problems.", status=403)
        if form.is_valid():
            try:
                problem_bank.problem_create(
                    project=project, user=request.user, record=form.record()
                )
            except ValueError as exc:
                form.add_error(None, str(exc))
                status = 400
            else:
                flash.success(request, "Problem saved.")
                return redirect("labeling:problems", project.pk)
        else:
            status = 400
    wanted = request.GET.get("status", "")
    listed = project.problems.select_related("author").order_by("-id")
    if wanted in ProblemStatus.values:
        listed = listed.filter(status=wanted)
    page = Paginator(listed, 50).get_page(request.GET.get("page"))
    counts = {s: project.problems.filter(status=s).count() for s in ProblemStatus.values}
    context = {
        "project": project,
        "form": form,
        "page": page,
        "counts": counts,
        "status": wanted,
        "statuses": ProblemStatus.choices,
        "generate_form": GenerateForm(),
        "import_form": ImportForm(),
        "export_form": ExportForm(
            initial={"name": f"{project.name} problems {timezone.now():%Y-%m-%d %H:%M}"}
        ),
        "can_manage": user_can(request.user, Capability.MANAGE_PROJECTS),
        "can_review": user_can(request.user, Capability.REVIEW),
    }
    return render(request, "labeling/problems.html", context, status=status)


@role_required(Capability.MANAGE_PROJECTS)
@require_POST
def problems_generate(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = GenerateForm(request.POST)
    if not form.is_valid():
        flash.error(request, "Check the count (1 to 10,000) and difficulty (1 to 5).")
        return redirect("labeling:problems", pk)
    try:
        made = problem_bank.problems_generate(
            project=project, user=request.user, **form.cleaned_data
        )
    except ValueError as exc:
        flash.error(request, str(exc))
    else:
        flash.success(request, f"Generated {made} arithmetic problems.")
    return redirect("labeling:problems", pk)


@role_required(Capability.MANAGE_PROJECTS)
@require_POST
def problems_import(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        flash.error(request, "Choose a format and a JSONL file.")
        return redirect("labeling:problems", pk)
    imported, problems_found = problem_bank.problems_import(
        project=project,
        user=request.user,
        lines=uploaded_lines(form.cleaned_data["file"]),
        file_format=form.cleaned_data["file_format"],
    )
    flash.success(request, f"Imported {imported} problems, skipped {len(problems_found)}.")
    for line in problems_found[:10]:
        flash.warning(request, line)
    return redirect("labeling:problems", pk)


@role_required(Capability.REVIEW)
@require_POST
def problem_review(request: HttpRequest, pk: int, problem_pk: int) -> HttpResponse:
    problem = get_object_or_404(Problem, pk=problem_pk, project_id=pk)
    try:
        problem_bank.problem_review(
            problem=problem, user=request.user, approve=request.POST.get("decision") == "approve"
        )
    except LabelingRefused as exc:
        flash.error(request, str(exc))
    return redirect("labeling:problems", pk)


@role_required(Capability.MANAGE_PROJECTS)
@require_POST
def problems_export(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ExportForm(request.POST)
    if not form.is_valid():
        flash.error(request, "Give the snapshot a name and a validation fraction up to 0.5.")
        return redirect("labeling:problems", pk)
    try:
        snapshot = problem_bank.problem_snapshot_create(
            project=project, user=request.user, **form.cleaned_data
        )
    except ValueError as exc:
        flash.error(request, str(exc))
        return redirect("labeling:problems", pk)
    flash.success(request, "Problems exported.")
    return redirect(snapshot)
