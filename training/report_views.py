"""A checkpoint's report card: the page, and the same card as Markdown and JSON downloads.

Only checkpoints have a report card (any other artifact answers 404): the URLs live under
/checkpoints/, and a corpus or tokenizer's own page already shows where it came from. The card
itself (``training.report.report_card``) works for any artifact.
"""

from __future__ import annotations

import re

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from training import report
from training.models import Artifact, ArtifactKind
from webapp.roles import Capability, role_required


def _checkpoint(pk: int) -> Artifact:
    return get_object_or_404(
        Artifact.objects.select_related("run", "created_by"), pk=pk, kind=ArtifactKind.CHECKPOINT
    )


def _filename(artifact: Artifact, suffix: str) -> str:
    """An ASCII file name that needs no quoting in Content-Disposition."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", artifact.name).strip("-")[:60] or "checkpoint"
    return f"report-{artifact.pk}-{slug}.{suffix}"


@role_required(Capability.VIEW_RUNS)
@require_GET
def report_card(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = _checkpoint(pk)
    card = report.report_card(artifact)
    context = {
        "artifact": artifact,
        "card": card,
        "graph": report.lineage_graph(artifact),
        "runs": [
            {
                **n["run"],
                "started": parse_datetime(n["run"]["started_at"] or ""),
                "finished": parse_datetime(n["run"]["finished_at"] or ""),
            }
            for n in card["nodes"]
            if n["run"]
        ],
        "datasets": [
            {**n, "contents": [f for f in n["figures"] if f["key"] != "labelers"]}
            for n in card["nodes"]
            if n["data"]
        ],
        "compute_by_device": [
            (device, report.duration_text(seconds))
            for device, seconds in card["totals"]["compute_by_device"].items()
        ],
    }
    return render(request, "training/report_card.html", context)


@role_required(Capability.VIEW_RUNS)
@require_GET
def report_card_markdown(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = _checkpoint(pk)
    text = report.report_markdown(report.report_card(artifact))
    response = HttpResponse(text, content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename(artifact, "md")}"'
    return response


@role_required(Capability.VIEW_RUNS)
@require_GET
def report_card_json(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = _checkpoint(pk)
    text = report.report_json(report.report_card(artifact))
    response = HttpResponse(text, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(artifact, "json")}"'
    return response
