"""What people see in the chat becomes training data: a corrected answer becomes a conversation
for review, and several regenerated answers become a ranking task.

Both start on a ``training`` page (the chat) and post here, so imports keep flowing one way.
Each new record names the chat message and checkpoint it came from.
"""

from __future__ import annotations

import random
from typing import Any

from django.contrib import messages as flash
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.functional import SimpleLazyObject
from django.views.decorators.http import require_POST

from labeling import services
from labeling.models import ConversationStatus, Item, Project, TaskKind
from training import chat
from training.models import ChatMessage
from webapp.roles import Capability, role_required, user_can

FEEDBACK_PROJECT = "Chat feedback"


def projects_context(request: HttpRequest) -> dict[str, Any]:
    """Template context: the labeling projects chat feedback can go to (queried only if used)."""
    return {"labeling_projects": SimpleLazyObject(lambda: list(Project.objects.only("id", "name")))}


def _target_project(request: HttpRequest) -> Project:
    chosen = request.POST.get("project", "")
    if chosen.isdigit():
        return get_object_or_404(Project, pk=int(chosen))
    project = Project.objects.filter(name=FEEDBACK_PROJECT).order_by("pk").first()
    return project or services.project_create(
        user=request.user,
        name=FEEDBACK_PROJECT,
        description="Corrections and rankings sent from the chat page.",
    )


def _own_message(request: HttpRequest, pk: int) -> ChatMessage:
    return get_object_or_404(
        ChatMessage.objects.select_related("session", "checkpoint"),
        pk=pk,
        session__user=request.user,
        role="assistant",
    )


@role_required(Capability.CHAT)
@require_POST
def chat_correction(request: HttpRequest, message_pk: int) -> HttpResponse:
    message = _own_message(request, message_pk)
    better = request.POST.get("content", "").strip()
    if not better:
        flash.error(request, "Write the better answer first.")
        return redirect(message.session)
    session = message.session
    question = chat.reply_parent(message)
    history = chat.model_messages(session, chat.branch(session, question))
    conversation = services.conversation_create(
        project=_target_project(request),
        user=request.user,
        messages=[*history, {"role": "assistant", "content": better}],
        tags=["chat-correction"],
        source="chat",
        status=ConversationStatus.SUBMITTED,
    )
    conversation.source_id = f"chat message {message.pk}, checkpoint {message.checkpoint_id}"
    conversation.save(update_fields=["source_id"])
    flash.success(request, f"Sent for review as conversation #{conversation.pk}. Thank you!")
    return redirect(session)


@role_required(Capability.CHAT)
@require_POST
def chat_rank(request: HttpRequest, message_pk: int) -> HttpResponse:
    message = _own_message(request, message_pk)
    session = message.session
    answers = chat.siblings(message)
    if len(answers) < 2:
        flash.error(request, "Regenerate at least once: a ranking needs two answers or more.")
        return redirect(session)
    if not (user_can(request.user, Capability.LABEL) or user_can(request.user, Capability.CHAT)):
        flash.error(request, "Your role may not create ranking tasks.")
        return redirect(session)
    question = chat.reply_parent(message)
    project = _target_project(request)
    responses = [
        {"text": a.content, "checkpoint": a.checkpoint_id, "chat_message": a.pk} for a in answers
    ]
    random.Random(f"chat:{question.pk}").shuffle(responses)
    Item.objects.create(
        project=project,
        kind=TaskKind.RANK,
        seed_messages=chat.model_messages(session, chat.branch(session, question)),
        responses=responses,
        overlap=project.overlap,
        instructions=f"From chat message {question.pk}",
    )
    flash.success(request, f"A ranking task with {len(responses)} answers is in “{project.name}”.")
    return redirect(session)


@role_required(Capability.MANAGE_PROJECTS)
@require_POST
def arena_import(request: HttpRequest) -> HttpResponse:
    """Every arena vote not yet imported becomes a ranked item (two replies, the voter's
    verdict), ready for a preference snapshot."""
    from django.db import transaction

    from labeling.models import Ranking
    from labeling.ranking import VOTES
    from training.models import ArenaBattle

    project = _target_project(request)
    done = set(
        Item.objects.filter(project=project, instructions__startswith="arena battle ").values_list(
            "instructions", flat=True
        )
    )
    added = 0
    with transaction.atomic():
        for battle in ArenaBattle.objects.exclude(vote="").select_related("user"):
            marker = f"arena battle {battle.pk}"
            if marker in done:
                continue
            order, all_bad = VOTES[battle.vote]
            item = Item.objects.create(
                project=project,
                kind=TaskKind.ARENA,
                seed_messages=[{"role": "user", "content": battle.prompt}],
                responses=[
                    {"text": battle.reply_a, "checkpoint": battle.checkpoint_a_id},
                    {"text": battle.reply_b, "checkpoint": battle.checkpoint_b_id},
                ],
                overlap=project.overlap,
                taken=project.overlap,  # already judged: not handed out again
                instructions=marker,
            )
            Ranking.objects.create(
                item=item, labeler=None, source=f"arena:{battle.user.username}"[:40],
                order=order, all_bad=all_bad,
            )  # fmt: skip
            added += 1
    flash.success(request, f"{added} arena votes added to “{project.name}”.")
    return redirect(project)


@role_required(Capability.MANAGE_PROJECTS)
@require_POST
def factuality_drafts(request: HttpRequest, run_pk: int) -> HttpResponse:
    """The probe's "I don't know" drafts become conversations for review (tag ``idk``),
    each naming the run and question it came from; a second click adds nothing twice."""
    import json

    from labeling.models import Conversation
    from training.models import Artifact, Run

    run = get_object_or_404(Run, pk=run_pk, kind="factuality", status="succeeded")
    output = get_object_or_404(Artifact, run=run)
    project = _target_project(request)
    made = 0
    with open(output.abspath() / "idk_drafts.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            draft = json.loads(line)
            source_id = f"factuality run {run.pk}, question {draft.get('question_id', '')}"
            if Conversation.objects.filter(project=project, source_id=source_id).exists():
                continue
            conversation = services.conversation_create(
                project=project,
                user=request.user,
                messages=draft["messages"],
                tags=["idk", "factuality"],
                source="factuality",
                status=ConversationStatus.SUBMITTED,
            )
            conversation.source_id = source_id
            conversation.save(update_fields=["source_id"])
            made += 1
    flash.success(
        request, f"{made} “I don't know” drafts are waiting for review in “{project.name}”."
    )
    return redirect(project)
