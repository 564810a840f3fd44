"""The corpus inspector: why each page was kept or dropped, and reviewers' spot checks."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from training import inspector
from training.models import Artifact, ArtifactKind, SpotCheck
from webapp.roles import Capability, role_required

PAGE_SIZE = 25


class InspectorQueryForm(forms.Form):
    view = forms.ChoiceField(choices=[("dropped", "dropped"), ("kept", "kept")], required=False)
    stage = forms.CharField(max_length=64, required=False)
    reason = forms.CharField(max_length=200, required=False)
    q = forms.CharField(max_length=200, required=False, label="Search")
    page = forms.IntegerField(min_value=1, max_value=10_000, required=False)


class SpotCheckForm(forms.Form):
    correct = forms.TypedChoiceField(
        choices=[("1", "Right decision"), ("0", "Wrong decision")],
        coerce=lambda v: v == "1",
        widget=forms.RadioSelect,
    )
    note = forms.CharField(max_length=500, required=False)


def _corpus_version(pk: int) -> Artifact:
    artifact = get_object_or_404(Artifact, pk=pk, kind=ArtifactKind.CORPUS)
    if not inspector.is_corpus_version(artifact):
        raise Http404("this corpus was uploaded as text: there is no pipeline run to inspect")
    return artifact


@role_required(Capability.VIEW_RUNS, Capability.REVIEW)
@require_http_methods(["GET"])
def corpus_inspector(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = _corpus_version(pk)
    if request.GET.get("random"):
        document_id = inspector.random_unchecked(artifact, request.user)
        if document_id is None:
            messages.info(request, "You have checked every document of this corpus.")
            return redirect(reverse("training:corpus-inspector", args=[pk]))
        return redirect(_document_url(pk, document_id))
    form = InspectorQueryForm(request.GET)
    if not form.is_valid():
        return render(
            request,
            "training/corpus_inspector.html",
            {"artifact": artifact, "form": form},
            status=400,
        )
    data = form.cleaned_data
    query = inspector.Query(
        view=data["view"] or "dropped", stage=data["stage"], reason=data["reason"], text=data["q"]
    )
    page = data["page"] or 1
    found, more = inspector.search(artifact, query, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    stats = inspector.corpus_stats(artifact)
    context = {
        "artifact": artifact,
        "form": form,
        "stats": stats,
        "funnel": _funnel_bars(stats),
        "query": query,
        "rows": found,
        "page": page,
        "more": more,
        "precision": inspector.precision_by_stage(artifact),
        "token_counts": inspector.token_counts(artifact),
        "tokenizers": Artifact.objects.filter(kind=ArtifactKind.TOKENIZER),
    }
    return render(request, "training/corpus_inspector.html", context)


def _funnel_bars(stats: dict[str, Any]) -> list[tuple[str, int]]:
    bars = [(row["stage"], row["in"]) for row in stats.get("funnel", [])]
    return [*bars, ("kept", stats.get("documents_kept", 0))]


def _document_url(pk: int, document_id: str) -> str:
    from urllib.parse import urlencode

    base = reverse("training:corpus-document", args=[pk])
    return f"{base}?{urlencode({'id': document_id})}"


@role_required(Capability.VIEW_RUNS, Capability.REVIEW)
@require_http_methods(["GET", "POST"])
def corpus_document(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = _corpus_version(pk)
    document_id = request.GET.get("id", "")[:500]
    found = inspector.find(artifact, document_id) if document_id else None
    if found is None:
        raise Http404("no such document in this corpus")
    view, row = found
    decision = "keep" if view == "kept" else "drop"
    existing = SpotCheck.objects.filter(
        corpus=artifact, document_id=document_id, reviewer=request.user
    ).first()
    form = SpotCheckForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        SpotCheck.objects.update_or_create(
            corpus=artifact,
            document_id=document_id,
            reviewer=request.user,
            defaults={
                "stage": row.get("stage") or "kept",
                "decision": decision,
                "correct": form.cleaned_data["correct"],
                "note": form.cleaned_data["note"],
            },
        )
        messages.success(request, "Spot check saved. Here is another document.")
        return redirect(f"{reverse('training:corpus-inspector', args=[pk])}?random=1")
    context = {
        "artifact": artifact,
        "row": row,
        "view": view,
        "decision": decision,
        "html": inspector.raw_html(artifact, document_id),
        "form": form,
        "existing": existing,
    }
    return render(
        request,
        "training/corpus_document.html",
        context,
        status=400 if request.method == "POST" else 200,
    )


@role_required(Capability.VIEW_RUNS, Capability.REVIEW)
@require_POST
def corpus_count_tokens(request: HttpRequest, pk: int) -> HttpResponse:
    """Count the corpus version's tokens with a chosen tokenizer; kept with the corpus."""
    artifact = _corpus_version(pk)
    tokenizer = get_object_or_404(
        Artifact, pk=request.POST.get("tokenizer") or 0, kind=ArtifactKind.TOKENIZER
    )
    try:
        count = inspector.count_tokens(artifact, tokenizer)
    except inspector.TooLargeToCount as exc:
        messages.warning(request, str(exc))
    else:
        messages.success(request, f"{count:,} tokens with {tokenizer.name}.")
    return redirect(reverse("training:corpus-inspector", args=[pk]))
