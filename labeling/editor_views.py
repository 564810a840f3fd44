"""The conversation editor and its helpers: autosave, Markdown preview, the ChatML view, drafts.

The page is one plain HTML form: the turns post in page order as repeated ``role``/``content``
fields, and buttons named ``action`` add, delete, move, save and submit, so it works without
JavaScript. ``static/js/editor.js`` adds the rest in place: reordering, shortcuts, counts, the live
preview, autosave every few seconds and on leaving, and a copy in the browser's storage that
survives a crash or an expired session.
"""

from __future__ import annotations

import contextlib
import json
from functools import lru_cache
from typing import Any

from django.contrib import messages as flash
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from labeling import drafting, services
from labeling.models import Conversation, ConversationStatus, Review
from labeling.turns import (
    EDITOR_ROLES,
    ROLE_LABELS,
    TurnError,
    messages_to_turns,
    turns_to_messages,
)
from webapp.limits import generation_limit
from webapp.rendering import render_markdown
from webapp.roles import Capability, role_required, user_can

MAX_PREVIEW_CHARS = 100_000
MAX_UNANSWERED = 6  # the editor keeps the turns of at most this many unanswered autosaves


def _may_view(user: Any, conversation: Conversation) -> bool:
    return (
        conversation.author_id == user.pk
        or user_can(user, Capability.REVIEW)
        or user_can(user, Capability.MANAGE_PROJECTS)
    )


def _conversation(request: HttpRequest, pk: int) -> Conversation:
    conversation = get_object_or_404(
        Conversation.objects.select_related("project", "author", "project__draft_checkpoint"), pk=pk
    )
    if not _may_view(request.user, conversation):
        raise PermissionDenied("This conversation is someone else's.")
    return conversation


def posted_turns(data: Any) -> list[dict[str, Any]]:
    """Turns from the form, in page order; a hidden ``draft`` field keeps a model's proposal."""
    roles, contents = data.getlist("role"), data.getlist("content")
    drafts = data.getlist("draft") or [""] * len(roles)
    if not (len(roles) == len(contents) == len(drafts)):
        raise TurnError(0, "the form arrived incomplete; reload the page")
    turns = []
    for role, content, draft in zip(roles, contents, drafts, strict=True):
        turn: dict[str, Any] = {"role": role, "content": content.replace("\r\n", "\n")}
        if draft:
            # a mangled hidden field loses only the draft's provenance, never text
            with contextlib.suppress(json.JSONDecodeError):
                turn["draft"] = json.loads(draft)
        turns.append(turn)
    return turns


def _apply_layout_action(action: str, turns: list[dict[str, Any]]) -> bool:
    """Add / delete / move for the no-JavaScript form; True when ``action`` was one of them."""
    verb, _, arg = action.partition(":")
    if verb == "add" and arg in EDITOR_ROLES:
        turns.append({"role": arg, "content": ""})
        return True
    if verb in ("delete", "up", "down") and arg.isdigit() and int(arg) < len(turns):
        index = int(arg)
        if verb == "delete":
            turns.pop(index)
        else:
            other = index - 1 if verb == "up" else index + 1
            if 0 <= other < len(turns):
                turns[index], turns[other] = turns[other], turns[index]
        return True
    return False


@role_required(Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)
@require_http_methods(["GET", "POST"])
def conversation_edit(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = _conversation(request, pk)
    editable = services.may_edit(request.user, conversation)
    problems: list[str] = []
    status = 200
    turns = messages_to_turns(conversation.messages)
    if request.method == "POST":
        if not editable:
            raise PermissionDenied("Only the author may edit this conversation.")
        action = request.POST.get("action", "save")
        try:
            turns = posted_turns(request.POST)
            if _apply_layout_action(action, turns):
                action = "save"
            messages = turns_to_messages(turns)
            if action == "draft":
                messages = _with_draft(conversation, messages)
            version = int(request.POST.get("version", "0"))
            conversation = services.conversation_save(
                conversation=conversation,
                user=request.user,
                messages=messages,
                expected_version=version,
            )
            if action == "submit":
                conversation = services.conversation_submit(
                    conversation=conversation,
                    user=request.user,
                    expected_version=conversation.version,
                )
                flash.success(request, "Submitted for review. Thank you!")
                if conversation.assignment_id:
                    return redirect("labeling:project-detail", conversation.project_id)
            return redirect("labeling:conversation-edit", conversation.pk)
        except (TurnError, ValueError, drafting.DraftUnavailable) as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            status = 400
        except services.StaleEdit as exc:
            problems = [str(exc)]
            status = 409
        except services.LabelingRefused as exc:
            problems = [str(exc)]
            status = 403
    context = _editor_context(conversation, turns, problems, editable)
    try:
        context.update(_chatml_context(conversation, turns_to_messages(turns)))
    except TurnError as exc:
        context["error"] = str(exc)
    return render(request, "labeling/editor.html", context, status=status)


def _with_draft(conversation: Conversation, messages: list[dict]) -> list[dict]:
    reply = drafting.draft_reply(project=conversation.project, messages=messages)
    return [*messages, {"role": "assistant", "content": reply.text, "draft": reply.provenance}]


def _editor_context(
    conversation: Conversation, turns: list[dict[str, Any]], problems: list[str], editable: bool
) -> dict[str, Any]:
    project = conversation.project
    feedback = Review.objects.filter(conversation=conversation).select_related("reviewer").first()
    return {
        "conversation": conversation,
        "project": project,
        "turns": [
            {**t, "draft_json": json.dumps(t["draft"]) if t.get("draft") else ""} for t in turns
        ],
        "roles": [(r, ROLE_LABELS[r]) for r in EDITOR_ROLES],
        "editable": editable,
        "problems": problems,
        "guidelines_html": render_markdown(project.guidelines),
        "feedback": feedback,
        "can_draft": project.draft_checkpoint_id is not None,
        "submitted": conversation.status != ConversationStatus.DRAFT,
    }


@role_required(Capability.LABEL, Capability.MANAGE_PROJECTS)
@require_POST
def conversation_autosave(request: HttpRequest, pk: int) -> HttpResponse:
    """JSON in, JSON out: ``{"version": n}``; 409 with the server's copy when someone else saved.

    The editor also sends the turns of its autosaves that got no answer (``unanswered``): when
    the stored copy holds one of them, the 409 says ``own_save`` (the server saved it and went
    down before replying), so the editor carries on instead of showing a conflict. The server
    compares them as it stores them: the editor cannot, as saving reformats tool-call JSON.
    """
    conversation = _conversation(request, pk)
    if not services.may_edit(request.user, conversation):
        return JsonResponse({"error": "Only the author may edit this conversation."}, status=403)
    try:
        body = _autosave_body(request)
        messages = turns_to_messages(body["turns"])
        saved = services.conversation_save(
            conversation=conversation,
            user=request.user,
            messages=messages,
            expected_version=int(body["version"]),
        )
    except services.StaleEdit as exc:
        return JsonResponse(
            {
                "error": str(exc),
                "version": exc.current.version,
                "turns": messages_to_turns(exc.current.messages),
                "own_save": _holds_one_of(exc.current.messages, body.get("unanswered")),
            },
            status=409,
        )
    except services.LabelingRefused as exc:
        return JsonResponse({"error": str(exc)}, status=403)
    except (KeyError, TypeError, ValueError) as exc:
        return JsonResponse({"error": f"not saved: {exc}"}, status=400)
    return JsonResponse({"version": saved.version, "saved_at": saved.updated_at.isoformat()})


def _holds_one_of(messages: list[dict[str, Any]], candidates: Any) -> bool:
    """Whether ``messages`` is what one of the ``candidates`` (lists of editor turns) stores as."""
    if not isinstance(candidates, list):
        return False
    for turns in candidates[:MAX_UNANSWERED]:
        try:
            if isinstance(turns, list) and turns_to_messages(turns) == messages:
                return True
        except (KeyError, TypeError, ValueError):
            continue  # a malformed candidate is simply not a match
    return False


def _autosave_body(request: HttpRequest) -> dict[str, Any]:
    # sendBeacon on page leave posts form data (it cannot set headers); fetch posts JSON.
    if request.content_type == "application/json":
        body = json.loads(request.body or b"{}")
    else:
        body = json.loads(request.POST.get("payload", "{}"))
    if not isinstance(body, dict) or not isinstance(body.get("turns"), list):
        raise ValueError("expected {'version': n, 'turns': [...]}")
    return body


@role_required(Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)
@require_POST
def markdown_preview(request: HttpRequest) -> HttpResponse:
    text = request.POST.get("text", "")[:MAX_PREVIEW_CHARS]
    return HttpResponse(render_markdown(text))


@role_required(Capability.LABEL, Capability.REVIEW, Capability.MANAGE_PROJECTS)
@require_POST
def chatml_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The conversation as the model will see it: ChatML tokens, trained ones highlighted."""
    conversation = _conversation(request, pk)
    try:
        messages = turns_to_messages(posted_turns(request.POST))
    except TurnError as exc:
        return render(request, "labeling/_chatml.html", {"error": str(exc)})
    return render(request, "labeling/_chatml.html", _chatml_context(conversation, messages))


def _chatml_context(conversation: Conversation, messages: list[dict]) -> dict[str, Any]:
    from labeling.turns import public_messages
    from training.core.token_view import chat_pieces, chat_segments

    plain = public_messages(messages)
    checkpoint = conversation.project.draft_checkpoint
    tokenizer = _tokenizer_for(checkpoint.pk, checkpoint.path) if checkpoint else None
    if tokenizer is None:
        return {"segments": chat_segments(plain), "tokenizer": None}
    pieces = chat_pieces(tokenizer, plain)
    return {
        "pieces": pieces,
        "tokenizer": checkpoint,
        "total": len(pieces),
        "trained": sum(1 for p in pieces if p.trained),
    }


@lru_cache(maxsize=4)
def _tokenizer_for(pk: int, path: str) -> Any:
    from training.core.token_view import load_tokenizer
    from training.models import resolve_under_root

    folder = resolve_under_root(path)
    return load_tokenizer(folder) if (folder / "tokenizer.json").is_file() else None


@generation_limit
@role_required(Capability.LABEL, Capability.MANAGE_PROJECTS)
@require_POST
def draft_reply(request: HttpRequest, pk: int) -> HttpResponse:
    """A model's proposal for the next assistant turn, for the labeler to edit (JSON)."""
    conversation = _conversation(request, pk)
    if not services.may_edit(request.user, conversation):
        raise PermissionDenied("Only the author may draft replies here.")
    try:
        messages = turns_to_messages(posted_turns(request.POST))
        reply = drafting.draft_reply(project=conversation.project, messages=messages)
    except drafting.Busy as exc:
        response = JsonResponse({"error": str(exc)}, status=429)
        response["Retry-After"] = str(exc.retry_after)
        return response
    except (TurnError, ValueError, drafting.DraftUnavailable) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"text": reply.text, "draft": reply.provenance})
