"""Labeling pages: projects, the queue, review, statistics, seeds, import and export.

Views parse input, call one service, and render; every page works as plain HTTP.
"""

from __future__ import annotations

import json

from django.contrib import messages as flash
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, F, Q
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from labeling import data, services
from labeling.forms import (
    ExportForm,
    IdentityForm,
    IdkForm,
    ImportForm,
    ItemsForm,
    ProjectForm,
    ReviewForm,
    split_tags,
)
from labeling.models import (
    RESPONSE_TASKS,
    Assignment,
    AssignmentStatus,
    Conversation,
    ConversationStatus,
    Project,
    Review,
    Snapshot,
)
from labeling.turns import TurnError, messages_to_turns, turns_to_messages
from webapp.rendering import render_markdown
from webapp.roles import Capability, role_required, user_can

ANY_LABELING = (Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)


@role_required(*ANY_LABELING)
@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    projects = Project.objects.annotate(
        open_items=Count("items", filter=Q(items__taken__lt=F("items__overlap")), distinct=True),
        to_review=Count(
            "conversations",
            filter=Q(conversations__status=ConversationStatus.SUBMITTED),
            distinct=True,
        ),
        approved=Count(
            "conversations",
            filter=Q(conversations__status=ConversationStatus.APPROVED),
            distinct=True,
        ),
    )
    mine = (
        Conversation.objects.filter(author=request.user)
        .exclude(status=ConversationStatus.APPROVED)
        .select_related("project")[:20]
    )
    return render(request, "labeling/project_list.html", {"projects": projects, "mine": mine})


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def project_new(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        project = services.project_create(user=request.user, **form.project_fields())
        flash.success(request, "Project created. Add tasks so labelers can start.")
        return redirect(project)
    return render(request, "labeling/project_form.html", {"form": form})


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def project_edit(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ProjectForm(request.POST or None, instance=Project.objects.get(pk=pk))
    if request.method == "POST" and form.is_valid():
        services.project_update(project=project, user=request.user, **form.project_fields())
        flash.success(request, "Saved.")
        return redirect(project)
    return render(request, "labeling/project_form.html", {"form": form, "project": project})


@role_required(*ANY_LABELING)
@require_GET
def project_detail(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project.objects.select_related("draft_checkpoint"), pk=pk)
    counts = dict(project.conversations.values_list("status").annotate(n=Count("id")).order_by())
    items = project.items.aggregate(
        total=Count("id"),
        open=Count("id", filter=Q(taken__lt=F("overlap"))),
    )
    done_by_me = Assignment.objects.filter(
        item__project=project, labeler=request.user, status=AssignmentStatus.DONE
    ).count()
    context = {
        "project": project,
        "guidelines_html": render_markdown(project.guidelines),
        "status_counts": [(v, label, counts.get(v, 0)) for v, label in ConversationStatus.choices],
        "items": items,
        "done_by_me": done_by_me,
        "snapshots": project.snapshots.select_related("artifact")[:10],
        "items_form": ItemsForm(),
        "can_manage": user_can(request.user, Capability.MANAGE_PROJECTS),
        "can_label": user_can(request.user, Capability.LABEL),
        "can_review": user_can(request.user, Capability.REVIEW),
    }
    return render(request, "labeling/project_detail.html", context)


@role_required(*ANY_LABELING)
@require_GET
def conversation_list(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    status = request.GET.get("status", "")
    conversations = project.conversations.select_related("author")
    if not (
        user_can(request.user, Capability.REVIEW)
        or user_can(request.user, Capability.MANAGE_PROJECTS)
    ):
        conversations = conversations.filter(author=request.user)
    if status in ConversationStatus.values:
        conversations = conversations.filter(status=status)
    tag = request.GET.get("tag", "")[:40]
    if tag:
        # tags are a JSON list, and JSON "contains" is not on SQLite: match ids in Python first,
        # so pagination counts only the matching conversations
        ids = [pk for pk, tags in conversations.values_list("id", "tags") if tag in tags]
        conversations = conversations.filter(pk__in=ids)
    page = Paginator(conversations, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "labeling/conversation_list.html",
        {
            "project": project,
            "page": page,
            "status": status,
            "tag": tag,
            "statuses": ConversationStatus.choices,
        },
    )


@role_required(Capability.MANAGE_PROJECTS)
@require_POST
def items_add(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ItemsForm(request.POST, request.FILES)
    if not form.is_valid():
        for field, errors in form.errors.items():
            flash.error(request, f"{field}: {' '.join(errors)}")
        return redirect(project)
    created, problems = data.items_from_form(project=project, cleaned=form.cleaned_data)
    flash.success(request, f"Added {created} task{'s' if created != 1 else ''}.")
    for problem in problems[:10]:
        flash.warning(request, problem)
    return redirect(project)


@role_required(Capability.LABEL)
@require_POST
def task_next(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    return next_task_redirect(request, project)


def next_task_redirect(request: HttpRequest, project: Project) -> HttpResponse:
    """Open the labeler's next task in its own page, or say there is none."""
    from labeling import ranking

    ranking.batches_sync(project=project)
    assignment = services.next_task(user=request.user, project=project)
    if assignment is None:
        flash.info(request, "No tasks are waiting for you in this project. Thank you!")
        return redirect(project)
    if assignment.item.kind in RESPONSE_TASKS:
        return redirect("labeling:task-rank", assignment.pk)
    conversation = services.assignment_conversation(assignment=assignment)
    return redirect("labeling:conversation-edit", conversation.pk)


@role_required(Capability.LABEL)
@require_POST
def task_skip(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_object_or_404(Conversation, pk=pk, author=request.user)
    if conversation.assignment is None:
        raise Http404("not a queued task")
    services.assignment_skip(assignment=conversation.assignment, user=request.user)
    flash.info(request, "Skipped; the task goes to someone else. Your text stays in My work.")
    return redirect(conversation.project)


@role_required(Capability.LABEL)
@require_POST
def conversation_new(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    conversation = services.conversation_create(project=project, user=request.user)
    return redirect("labeling:conversation-edit", conversation.pk)


@role_required(Capability.REVIEW)
@require_POST
def review_next(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    conversation = services.review_next(user=request.user, project=project)
    if conversation is None:
        flash.info(request, "Nothing is waiting for review in this project.")
        return redirect(project)
    return redirect("labeling:conversation-review", conversation.pk)


@role_required(Capability.REVIEW)
@require_http_methods(["GET", "POST"])
def conversation_review(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_object_or_404(
        Conversation.objects.select_related("project", "author"), pk=pk
    )
    form = ReviewForm(request.POST or None, initial={"version": conversation.version})
    problems: list[str] = []
    status = 200
    turns = messages_to_turns(conversation.messages)
    if request.method == "POST" and form.is_valid():
        try:
            edited = None
            if form.cleaned_data["decision"] == Review.Decision.EDIT:
                from labeling.editor_views import posted_turns

                turns = posted_turns(request.POST)
                edited = turns_to_messages(turns)
            services.review_decide(
                conversation=conversation,
                user=request.user,
                expected_version=form.cleaned_data["version"],
                review=services.ReviewInput(
                    form.cleaned_data["decision"], form.cleaned_data["comment"], edited
                ),
            )
            flash.success(request, "Review saved.")
            return redirect(conversation.project)
        except services.StaleEdit as exc:
            problems, status = [str(exc)], 409
        except (services.LabelingRefused, TurnError, ValueError) as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            status = 400
    elif request.method == "POST":
        status = 400
    context = {
        "conversation": conversation,
        "project": conversation.project,
        "rows": [
            {
                "turn": t,
                "html": render_markdown(t["content"]),
                "draft_share": services.draft_edit_share(t),
                "draft_json": json.dumps(t["draft"]) if t.get("draft") else "",
            }
            for t in turns
        ],
        "form": form,
        "problems": problems,
        "guidelines_html": render_markdown(conversation.project.guidelines),
        "reviewable": conversation.status == ConversationStatus.SUBMITTED,
    }
    return render(request, "labeling/review.html", context, status=status)


@role_required(*ANY_LABELING)
@require_GET
def conversation_history(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = get_object_or_404(Conversation.objects.select_related("project"), pk=pk)
    if not (
        conversation.author_id == request.user.pk
        or user_can(request.user, Capability.REVIEW)
        or user_can(request.user, Capability.MANAGE_PROJECTS)
    ):
        raise PermissionDenied("This conversation is someone else's.")
    revisions = list(conversation.revisions.select_related("actor"))
    return render(
        request,
        "labeling/history.html",
        {
            "conversation": conversation,
            "entries": data.revision_diffs(revisions),
            "reviews": conversation.reviews.select_related("reviewer"),
        },
    )


@role_required(*ANY_LABELING)
@require_GET
def project_stats(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    stats = services.labeler_stats(project=project)
    if not (
        user_can(request.user, Capability.REVIEW)
        or user_can(request.user, Capability.MANAGE_PROJECTS)
    ):
        stats = [s for s in stats if s.username == request.user.username]
    return render(request, "labeling/stats.html", {"project": project, "stats": stats})


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def seed_identity(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = IdentityForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        created = data.seed_identity(project=project, user=request.user, **form.cleaned_data)
        flash.success(request, f"Added {len(created)} identity conversations (tag “identity”).")
        return redirect(project)
    return render(
        request,
        "labeling/seed_form.html",
        {"form": form, "project": project, "title": "Identity conversations",
         "intro": "Who the assistant is, who made it and what it cannot do, as ordinary "
         "conversations tagged “identity”. A model learns its identity from data like this."},
    )  # fmt: skip


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def seed_idk(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = IdkForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        created = data.seed_idk(project=project, user=request.user, **form.cleaned_data)
        flash.success(request, f"Added {len(created)} “I don't know” conversations (tag “idk”).")
        return redirect(project)
    return render(
        request,
        "labeling/seed_form.html",
        {"form": form, "project": project, "title": "“I don't know” examples",
         "intro": "Questions the assistant cannot answer, answered honestly. Training on them "
         "teaches a model to say so instead of inventing an answer."},
    )  # fmt: skip


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def conversation_import(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    form = ImportForm(request.POST or None, request.FILES or None)
    report = None
    if request.method == "POST" and form.is_valid():
        report = data.import_conversations(
            project=project,
            user=request.user,
            uploaded=form.cleaned_data["file"],
            fmt=form.cleaned_data["format"],
            status=form.cleaned_data["status"],
            tags=split_tags(form.cleaned_data["tags"]),
            oasst_all_paths=form.cleaned_data["oasst_all_paths"],
        )
        if report.imported:
            flash.success(request, f"Imported {report.imported} conversations.")
    return render(
        request, "labeling/import.html", {"form": form, "project": project, "report": report}
    )


@role_required(Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def snapshot_new(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=pk)
    stamp = f" {timezone.now():%Y-%m-%d %H:%M}"
    # a project name may use all 200 characters a snapshot name has: shorten it, keep the date
    limit = ExportForm.base_fields["name"].max_length - len(stamp)
    initial = {"name": f"{project.name[:limit]}{stamp}"}
    form = ExportForm(request.POST or None, initial=initial)
    tags = split_tags(request.POST.get("tags", "") or request.GET.get("tags", ""))
    approved = data.approved_conversations(project=project, tags=tags)
    if request.method == "POST" and form.is_valid():
        try:
            snapshot = data.snapshot_create(
                project=project,
                user=request.user,
                name=form.cleaned_data["name"],
                validation_fraction=form.cleaned_data["validation_fraction"],
                tags=tags,
            )
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            flash.success(request, "Snapshot exported.")
            return redirect(snapshot)
    preview = [{"conversation": c, "turns": messages_to_turns(c.messages)} for c in approved[:5]]
    return render(
        request,
        "labeling/snapshot_new.html",
        {"form": form, "project": project, "count": approved.count(), "preview": preview},
    )


@role_required(Capability.MANAGE_PROJECTS, Capability.VIEW_RUNS)
@require_GET
def snapshot_detail(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = get_object_or_404(Snapshot.objects.select_related("artifact", "project"), pk=pk)
    rows = data.snapshot_preview(snapshot, limit=5)
    folder = snapshot.artifact.abspath()
    return render(
        request,
        "labeling/snapshot_detail.html",
        {
            "snapshot": snapshot,
            "card": snapshot.card,
            "rows": rows,
            "files": [n for n in data.SNAPSHOT_FILES if (folder / n).is_file()],
        },
    )


@role_required(Capability.MANAGE_PROJECTS, Capability.VIEW_RUNS)
@require_GET
def snapshot_file(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    snapshot = get_object_or_404(Snapshot.objects.select_related("artifact"), pk=pk)
    if name not in data.SNAPSHOT_FILES:
        raise Http404("no such file in a snapshot")
    path = snapshot.artifact.abspath() / name
    if not path.is_file():
        raise Http404("file missing")
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"snapshot-{pk}-{name}")


@role_required(Capability.LABEL)
@require_GET
def my_work(request: HttpRequest) -> HttpResponse:
    conversations = Conversation.objects.filter(author=request.user).select_related("project")
    page = Paginator(conversations, 50).get_page(request.GET.get("page"))
    latest = {}
    for review in Review.objects.filter(conversation__in=page.object_list).order_by("created_at"):
        latest[review.conversation_id] = review
    for conversation in page.object_list:
        conversation.latest_review = latest.get(conversation.pk)
    return render(request, "labeling/my_work.html", {"page": page})
