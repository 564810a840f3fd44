"""The chat page: talk to any checkpoint, with streaming, branches, tools and feedback.

Every action is a plain form post that works without JavaScript (a reply is then generated
before the page comes back); ``static/js/chat.js`` streams replies as server-sent events over a
fetch POST instead, and its stop button simply disconnects, which stops the generation.
Model output is untrusted: it is shown as escaped text while streaming and as nh3-sanitised
Markdown afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages as flash
from django.core.paginator import Paginator
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from training import chat, inference, sampling_fields
from training.models import Artifact, ChatMessage, ChatSession, generative_checkpoints
from webapp.limits import generation_limit
from webapp.rendering import render_markdown
from webapp.roles import Capability, role_required

MAX_MESSAGE_CHARS = 20_000
SAMPLING = ("temperature", "top_p", "max_new_tokens")


def chat_checkpoints() -> Any:
    return generative_checkpoints()


class SessionForm(forms.ModelForm):
    class Meta:
        model = ChatSession
        fields = ["checkpoint", "system_prompt", "temperature", "top_p", "max_new_tokens", "tools"]
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 2})}
        labels = {"tools": "Let the model use tools (calculator, Python)"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].queryset = chat_checkpoints()
        self.fields["checkpoint"].required = True
        # Form fields with bounds (the model's fields have none), defaults from the model.
        defaults = {name: ChatSession._meta.get_field(name).default for name in SAMPLING}
        self.fields["temperature"] = sampling_fields.temperature(defaults["temperature"])
        self.fields["top_p"] = sampling_fields.top_p(defaults["top_p"])
        self.fields["max_new_tokens"] = sampling_fields.max_new_tokens(defaults["max_new_tokens"])


def _own_session(request: HttpRequest, pk: int) -> ChatSession:
    return get_object_or_404(
        ChatSession.objects.select_related("checkpoint", "leaf"), pk=pk, user=request.user
    )


@role_required(Capability.CHAT)
@require_http_methods(["GET", "POST"])
def chat_home(request: HttpRequest) -> HttpResponse:
    initial = {"checkpoint": request.GET["checkpoint"]} if request.GET.get("checkpoint") else {}
    form = SessionForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        session = form.save(commit=False)
        session.user = request.user
        session.save()
        return redirect(session)
    query = request.GET.get("q", "").strip()[:200]
    page = Paginator(chat.search(user=request.user, query=query), 30).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "training/chat_home.html",
        {"form": form, "page": page, "query": query, "has_models": chat_checkpoints().exists()},
    )


@role_required(Capability.CHAT)
@require_GET
def chat_session(request: HttpRequest, pk: int) -> HttpResponse:
    session = _own_session(request, pk)
    path = chat.branch(session)
    rows = []
    for message in path:
        sibling_list = chat.siblings(message)
        position = next(i for i, m in enumerate(sibling_list) if m.pk == message.pk)
        rows.append(
            {
                "message": message,
                "html": render_markdown(message.content) if message.role == "assistant" else "",
                "calls": [
                    json.dumps(c.get("function", c), ensure_ascii=False) for c in message.tool_calls
                ],
                "previous": sibling_list[position - 1] if position > 0 else None,
                "next": sibling_list[position + 1] if position + 1 < len(sibling_list) else None,
                "position": position + 1,
                "count": len(sibling_list),
            }
        )
    return render(
        request,
        "training/chat_session.html",
        {
            "session": session,
            "rows": rows,
            "settings_form": SessionForm(instance=session),
            "sessions": chat.search(user=request.user, query="")[:30],
        },
    )


@role_required(Capability.CHAT)
@require_POST
def chat_settings(request: HttpRequest, pk: int) -> HttpResponse:
    session = _own_session(request, pk)
    form = SessionForm(request.POST, instance=session)
    if form.is_valid():
        form.save()
        flash.success(request, "Settings saved; they apply from the next reply.")
    else:
        flash.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    return redirect(session)


@generation_limit
@role_required(Capability.CHAT)
@require_POST
def chat_send(request: HttpRequest, pk: int) -> HttpResponse:
    """A question (new, or an edit of an earlier one), then its reply."""
    session = _own_session(request, pk)
    content = request.POST.get("content", "").strip()
    if not content:
        return _refuse(request, session, "Write a message first.", 400)
    if len(content) > MAX_MESSAGE_CHARS:
        return _refuse(
            request, session, f"A message holds at most {MAX_MESSAGE_CHARS} characters.", 400
        )
    parent = session.leaf
    edited = request.POST.get("edit", "")
    if edited.isdigit():
        original = get_object_or_404(ChatMessage, pk=int(edited), session=session, role="user")
        parent = original.parent
    question = chat.add_user_message(session=session, content=content, parent=parent)
    return _reply(request, session, question)


@generation_limit
@role_required(Capability.CHAT)
@require_POST
def chat_regenerate(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    session = _own_session(request, pk)
    message = get_object_or_404(ChatMessage, pk=message_pk, session=session)
    return _reply(request, session, chat.reply_parent(message))


def _reply(request: HttpRequest, session: ChatSession, question: ChatMessage) -> HttpResponse:
    streaming = request.POST.get("stream") == "1"
    checkpoint = session.checkpoint
    if checkpoint is None:
        return _refuse(request, session, "Choose a checkpoint in the settings first.", 400)
    try:
        messages, dropped = _fitted(session, question, checkpoint)
        slot = inference.user_slot(request.user.pk)
        slot.__enter__()
    except ValueError as exc:
        return _refuse(request, session, str(exc), 400)
    except inference.Busy as busy:
        return _busy(request, session, busy)
    try:
        events = inference.stream_chat(
            artifact=checkpoint, messages=messages, params=_params(session), tools=session.tools
        )
        first = next(events)
    except inference.Busy as busy:
        slot.__exit__(None, None, None)
        return _busy(request, session, busy)
    except Exception:
        slot.__exit__(None, None, None)
        raise
    relay = _Relay(session, question, checkpoint, first, events, slot)
    if streaming:
        response = StreamingHttpResponse(relay.sse(dropped), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    error = relay.drain()
    if error:
        flash.error(request, f"The model failed: {error}")
    if dropped:
        flash.info(
            request, f"The {dropped} oldest turns did not fit the context window and were left out."
        )
    return redirect(session)


def _fitted(session: ChatSession, question: ChatMessage, checkpoint: Artifact) -> tuple[list, int]:
    from training.core.chat import fit_messages

    messages = chat.model_messages(session, chat.branch(session, question))
    return fit_messages(
        inference.tokenizer_for(checkpoint),
        messages,
        inference.context_window(checkpoint),
        min(session.max_new_tokens, settings.ORCHARD_MAX_NEW_TOKENS),
    )


def _params(session: ChatSession) -> Any:
    from training.core.generate import SamplingParams

    return SamplingParams(
        max_new_tokens=min(session.max_new_tokens, settings.ORCHARD_MAX_NEW_TOKENS),
        temperature=session.temperature,
        top_p=session.top_p,
    )


class _Relay:
    """Carries a reply from the generation thread to the client and into the database: what
    was generated is saved even when the client leaves early (marked as stopped)."""

    def __init__(
        self,
        session: ChatSession,
        question: ChatMessage,
        checkpoint: Artifact,
        first: dict,
        events: Iterator[dict],
        slot: Any,
    ) -> None:
        self.session, self.question, self.checkpoint = session, question, checkpoint
        self.first, self.events, self.slot = first, events, slot
        self.partial: list[str] = []
        self.saved: ChatMessage | None = None

    def _all(self) -> Iterator[dict]:
        yield self.first
        yield from self.events

    def _handle(self, event: dict) -> str | None:
        kind = event["event"]
        if kind == "token":
            self.partial.append(event.get("text", ""))
        elif kind == "done":
            self.saved = chat.save_reply(
                session=self.session,
                parent=self.question,
                turns=event["messages"],
                checkpoint=self.checkpoint,
                finish_reason=event.get("finish_reason", ""),
                tokens=event.get("tokens", 0),
            )
        elif kind == "error":
            return event["message"]
        return None

    def _finish(self) -> None:
        self.events.close()  # stops the generation if it is still running
        if self.saved is None and self.partial:
            self.saved = chat.save_reply(
                session=self.session,
                parent=self.question,
                turns=[{"role": "assistant", "content": "".join(self.partial)}],
                checkpoint=self.checkpoint,
                finish_reason="stopped",
            )
        self.slot.__exit__(None, None, None)

    def drain(self) -> str | None:
        try:
            for event in self._all():
                error = self._handle(event)
                if error:
                    return error
            return None
        finally:
            self._finish()

    def sse(self, dropped: int) -> Iterator[str]:
        try:
            yield _event("start", {"question": self.question.pk, "dropped": dropped})
            for event in self._all():
                error = self._handle(event)
                payload = {k: v for k, v in event.items() if k not in ("event", "messages")}
                if event["event"] == "done" and self.saved is not None:
                    payload["message"] = self.saved.pk
                yield _event(event["event"], {"message": error} if error else payload)
                if error:
                    return
        finally:
            self._finish()


def _event(kind: str, payload: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"


def _refuse(request: HttpRequest, session: ChatSession, message: str, status: int) -> HttpResponse:
    if request.POST.get("stream") == "1":
        return JsonResponse({"detail": message}, status=status)
    flash.error(request, message)
    return redirect(session)


def _busy(request: HttpRequest, session: ChatSession, busy: inference.Busy) -> HttpResponse:
    text = f"The models are busy: try again in {busy.retry_after} s."
    if request.POST.get("stream") == "1":
        response = JsonResponse({"detail": text}, status=429)
    else:
        flash.error(request, text)
        response = redirect(session)
        response.status_code = 303
    response["Retry-After"] = str(busy.retry_after)
    return response


@role_required(Capability.CHAT)
@require_POST
def chat_show(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    session = _own_session(request, pk)
    message = get_object_or_404(ChatMessage, pk=message_pk, session=session)
    chat.show_branch(session=session, message=message)
    return redirect(session)


@role_required(Capability.CHAT)
@require_POST
def chat_feedback(request: HttpRequest, pk: int, message_pk: int) -> HttpResponse:
    session = _own_session(request, pk)
    message = get_object_or_404(ChatMessage, pk=message_pk, session=session, role="assistant")
    try:
        chat.set_feedback(
            message=message,
            value=request.POST.get("value", ""),
            reason=request.POST.get("reason", ""),
        )
    except ValueError as exc:
        flash.error(request, str(exc))
    return redirect(session)


@role_required(Capability.CHAT)
@require_POST
def chat_delete(request: HttpRequest, pk: int) -> HttpResponse:
    session = _own_session(request, pk)
    session.delete()
    flash.success(request, "Chat deleted.")
    return redirect("training:chat")
