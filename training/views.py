"""Pages for runs and artifacts. Each view parses input, calls one service or selector, renders.

Every page works as plain HTTP; with htmx the run page polls its live partial every 2 s until
the run ends (the final poll answers 286, which tells htmx to stop).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from training import selectors, services
from training.evaluations import evaluations_of
from training.forms import (
    CheckpointImportForm,
    DataUploadForm,
    field_name_for_error,
    launch_form_class,
    split_cleaned,
)
from training.kinds import ConfigInvalid, RunKind, all_kinds, get_kind
from training.models import Artifact, ArtifactKind, Run, RunStatus
from webapp.roles import Capability, role_required


@role_required(Capability.VIEW_RUNS)
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "")
    status = request.GET.get("status", "")
    if kind and get_kind(kind) is None or status and status not in RunStatus.values:
        return HttpResponseBadRequest("unknown kind or status filter")
    page = Paginator(selectors.run_list(kind=kind, status=status), 50).get_page(
        request.GET.get("page")
    )
    context = {
        "page": page,
        "kinds": all_kinds(),
        "statuses": RunStatus.choices,
        "kind": kind,
        "status": status,
        "workers": _live_workers(),
    }
    return render(request, "training/run_list.html", context)


def _live_workers() -> list:
    from training.workers import live_workers

    return live_workers()


@role_required(Capability.LAUNCH_RUNS)
@require_GET
def run_new(request: HttpRequest) -> HttpResponse:
    return render(request, "training/run_new.html", {"kinds": all_kinds()})


@role_required(Capability.LAUNCH_RUNS)
@require_http_methods(["GET", "POST"])
def run_launch(request: HttpRequest, kind: str) -> HttpResponse:
    run_kind = get_kind(kind)
    if run_kind is None:
        raise Http404("no such run kind")
    form_class = launch_form_class(run_kind)
    # Links like "train a tokenizer on this corpus" preselect inputs with ?input_corpus=<id>.
    initial = {key: request.GET.getlist(key) for key in request.GET if key.startswith("input_")}
    form = form_class(request.POST or None, request.FILES or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        config, inputs = split_cleaned(run_kind, form.cleaned_data)
        try:
            run = services.run_create(
                kind=run_kind.name, config=config, inputs=inputs, user=request.user
            )
        except ConfigInvalid as exc:
            for key, errors in exc.errors.items():
                for error in errors:
                    form.add_error(field_name_for_error(run_kind, key), error)
        else:
            messages.success(request, f"Run #{run.pk} queued.")
            return redirect(run)
    status = 400 if request.method == "POST" else 200
    context = {
        "kind": run_kind,
        "form": form,
        "estimate": _estimate(run_kind, request.POST or request.GET, form),
    }
    return render(request, "training/run_launch.html", context, status=status)


@role_required(Capability.LAUNCH_RUNS)
@require_GET
def run_estimate(request: HttpRequest, kind: str) -> HttpResponse:
    """The launch page's estimate panel, recomputed as the form changes (htmx)."""
    run_kind = get_kind(kind)
    if run_kind is None:
        raise Http404("no such run kind")
    form = launch_form_class(run_kind)()
    context = {"kind": run_kind, "estimate": _estimate(run_kind, request.GET, form)}
    return render(request, "training/run_launch.html#estimate", context)


def _estimate(run_kind: RunKind, data: Any, form: Any) -> list[tuple] | None:
    """Rows of (label, value) from the raw form data, falling back to the form's defaults."""
    estimate = run_kind.estimate()
    if estimate is None:
        return None
    config = {
        name.removeprefix("config_"): data.get(name) or field.initial
        for name, field in form.fields.items()
        if name.startswith("config_")
    }
    inputs = {
        spec.name: [int(v) for v in data.getlist(f"input_{spec.name}") if str(v).isdigit()]
        for spec in run_kind.inputs
    }
    try:
        return estimate(config, inputs)
    except (ValueError, TypeError) as exc:
        return [("Estimate", f"not available: {exc}")]


@role_required(Capability.VIEW_RUNS)
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("created_by"), pk=pk)
    context = {
        "run": run,
        "kind": get_kind(run.kind),
        "series": selectors.metric_series(run),
        "eta": _eta(run),
        "may_act": services.user_may_act_on(request.user, run),
        "outputs": run.outputs.all(),
        "input_artifacts": run.input_artifacts.all(),
        "samples": selectors.samples_table(run),
        "ceiling": selectors.agreement_ceiling(run),
        "result": selectors.result_view(run),
        "rollouts": selectors.latest_rollouts(run),
        **selectors.evaluation_table(run),
        "factuality_history": selectors.factuality_history(run),
        "evaluations": [e for a in run.outputs.all() for e in evaluations_of(a)],
    }
    if request.htmx:
        response = render(request, "training/run_detail.html#run-live", context)
        if run.is_terminal:
            response.status_code = HttpResponseStopPolling.status_code
        return response
    return render(request, "training/run_detail.html", context)


def _eta(run: Run) -> timedelta | None:
    """Remaining time, extrapolated from progress so far (None until there is some)."""
    if run.status != RunStatus.RUNNING or not run.started_at or run.progress <= 0.01:
        return None
    elapsed = timezone.now() - run.started_at
    remaining = elapsed * (1 - run.progress) / run.progress
    return timedelta(seconds=round(remaining.total_seconds()))


def _acted_on(request: HttpRequest, pk: int) -> Run:
    run = get_object_or_404(Run, pk=pk)
    if not services.user_may_act_on(request.user, run):
        raise PermissionDenied("Only the person who launched this run (or an admin) may do that.")
    return run


@role_required(Capability.LAUNCH_RUNS)
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = _acted_on(request, pk)
    try:
        services.run_cancel(run=run, user=request.user)
        messages.info(request, f"Cancel requested for run #{run.pk}.")
    except services.RunActionRefused as exc:
        messages.warning(request, str(exc))
    return redirect(run)


@role_required(Capability.LAUNCH_RUNS)
@require_POST
def run_retry(request: HttpRequest, pk: int) -> HttpResponse:
    run = _acted_on(request, pk)
    try:
        services.run_retry(run=run, user=request.user)
        messages.info(request, f"Run #{run.pk} queued again.")
    except services.RunActionRefused as exc:
        messages.warning(request, str(exc))
    return redirect(run)


@role_required(Capability.VIEW_RUNS)
@require_GET
def artifact_list(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "")
    if kind and kind not in ArtifactKind.values:
        return HttpResponseBadRequest("unknown artifact kind")
    page = Paginator(selectors.artifact_list(kind=kind), 50).get_page(request.GET.get("page"))
    context = {"page": page, "kinds": ArtifactKind.choices, "kind": kind}
    return render(request, "training/artifact_list.html", context)


@role_required(Capability.VIEW_RUNS)
@require_GET
def artifact_detail(request: HttpRequest, pk: int) -> HttpResponse:
    artifact = get_object_or_404(Artifact.objects.select_related("run", "created_by"), pk=pk)
    context = {
        "artifact": artifact,
        "parents": artifact.parents.all(),
        "children": artifact.children.all(),
        "consumers": artifact.consumed_by.all()[:20],
    }
    return render(request, "training/artifact_detail.html", context)


DATA_FORMATS = {"corpus": "CORPUS", "webdata": "WEBDATA", "blocklist": "BLOCKLIST"}


@role_required(Capability.LAUNCH_RUNS)
@require_http_methods(["GET", "POST"])
def data_upload(request: HttpRequest, fmt: str) -> HttpResponse:
    """Upload a text corpus or raw web data, or take a file from the server's import folder."""
    from training import uploads

    data_format = getattr(uploads, DATA_FORMATS[fmt])
    importable = uploads.importable_files(data_format)
    downloadable = _downloadable(fmt)
    form = DataUploadForm(importable=importable, downloadable=downloadable)
    status = 200
    if request.method == "POST":
        files = request.FILES  # parses the body; the upload handler flags an oversized file
        if getattr(request, "upload_too_large", False):
            return _upload_too_large(request, fmt, data_format, importable, downloadable)
        form = DataUploadForm(request.POST, files, importable=importable, downloadable=downloadable)
        if form.is_valid():
            try:
                artifact = _store(uploads, data_format, form.cleaned_data, request.user)
            except uploads.UploadRefused as exc:
                form.add_error("url" if form.cleaned_data.get("url") else "file", str(exc))
            else:
                messages.success(request, f"{artifact.get_kind_display()} #{artifact.pk} stored.")
                return redirect(artifact)
        status = 400
    context = {"form": form, "fmt": fmt, "format": data_format}
    return render(request, "training/data_upload.html", context, status=status)


def _downloadable(fmt: str) -> bool:
    """A URL field on the corpus and web-data pages, where downloads are enabled."""
    from training.downloads import enabled

    return fmt in ("corpus", "webdata") and enabled()


def _store(uploads: Any, data_format: Any, cleaned: dict[str, Any], user: Any) -> Artifact:
    if cleaned.get("url"):  # fetched by training.downloads, then stored like an upload
        return uploads.download_file(
            fmt=data_format, url=cleaned["url"], name=cleaned["name"], user=user
        )
    if cleaned.get("file"):
        return uploads.upload(
            fmt=data_format, uploaded=cleaned["file"], name=cleaned["name"], user=user
        )
    return uploads.import_file(
        fmt=data_format, relative=cleaned["server_file"], name=cleaned["name"], user=user
    )


def _upload_too_large(
    request: HttpRequest, fmt: str, data_format: Any, importable: list[str], downloadable: bool
) -> HttpResponse:
    from webapp.uploads import upload_cap_bytes

    cap_mb = upload_cap_bytes() // (1024 * 1024)
    form = DataUploadForm(
        data={"name": request.POST.get("name", "")},
        importable=importable,
        downloadable=downloadable,
    )
    form.full_clean()
    form.errors["file"] = form.error_class(
        [f"The file is larger than the {cap_mb} MB upload limit."]
    )
    context = {"form": form, "fmt": fmt, "format": data_format}
    return render(request, "training/data_upload.html", context, status=413)


@role_required(Capability.VIEW_RUNS)
@require_GET
def checkpoint_list(request: HttpRequest) -> HttpResponse:
    from training.model_import import import_root

    context = {"checkpoints": selectors.checkpoint_list(), "import_root": import_root()}
    return render(request, "training/checkpoint_list.html", context)


@role_required(Capability.LAUNCH_RUNS)
@require_http_methods(["GET", "POST"])
def checkpoint_import(request: HttpRequest) -> HttpResponse:
    from training import model_import

    folders = model_import.importable_folders()
    form = CheckpointImportForm(request.POST or None, folders=folders)
    if request.method == "POST" and form.is_valid():
        try:
            artifact = model_import.checkpoint_import(
                relative=form.cleaned_data["folder"],
                name=form.cleaned_data["name"],
                user=request.user,
            )
        except model_import.ImportRefused as exc:
            form.add_error("folder", str(exc))
        else:
            messages.success(request, f"Checkpoint #{artifact.pk} registered.")
            return redirect(artifact)
    context = {"form": form, "folders": folders, "import_root": model_import.import_root()}
    status = 400 if request.method == "POST" else 200
    return render(request, "training/checkpoint_import.html", context, status=status)
