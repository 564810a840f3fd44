"""An OpenAI-compatible chat API over the checkpoints: ``/v1/models``, ``/v1/chat/completions``.

Scripts, notebooks and tools written for OpenAI's API (its Python and JavaScript clients,
evaluation harnesses, chat front ends) talk to Orchard's checkpoints by pointing their base URL
at ``<orchard>/v1`` and using an Orchard API token as the key::

    curl http://localhost:8000/v1/chat/completions \\
      -H "Authorization: Bearer $ORCHARD_TOKEN" -H "Content-Type: application/json" \\
      -d '{"model": "orchard-12", "messages": [{"role": "user", "content": "Hi!"}],
           "max_tokens": 64, "temperature": 0.7}'

    from openai import OpenAI

    client = OpenAI(base_url="http://localhost:8000/v1", api_key=ORCHARD_TOKEN)
    print([m.id for m in client.models.list()])
    reply = client.chat.completions.create(
        model="orchard-12", messages=[{"role": "user", "content": "Hi!"}], max_tokens=64
    )
    print(reply.choices[0].message.content, reply.usage)
    for chunk in client.chat.completions.create(
        model="orchard-12", messages=[{"role": "user", "content": "Hi!"}], stream=True
    ):
        print(chunk.choices[0].delta.content or "", end="", flush=True)

Authentication: an Orchard API token (``rest_framework.authtoken``; an admin creates one per
person) sent as ``Authorization: Bearer <key>`` (what OpenAI's clients send) or
``Authorization: Token <key>``; a logged-in browser session works too, with Django's CSRF check
on every POST. The caller's role needs the ``chat`` capability. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 401 without valid credentials, 403 without
the capability, 404 (``model_not_found``) for an unknown model, 400 for an invalid request (the
``param`` names the field; ``context_length_exceeded`` for messages that leave no room for a
reply in the model's context window), 429 (``rate_limit_exceeded``, with ``Retry-After``) when
every generation slot of the process is taken.

Models: every checkpoint except reward models. A model's id is ``orchard-<artifact id>``; the
bare artifact id and the artifact's name (the newest checkpoint of that name) are accepted too.

``POST /v1/chat/completions`` renders ``messages`` (roles ``system``, ``developer`` (treated as
``system``), ``user``, ``assistant`` (its ``tool_calls`` are kept), ``tool``; content a string or
a list of ``{"type": "text", "text": ...}`` parts, joined with newlines) with the checkpoint's own
chat template and samples with Orchard's engine. Parameters: ``max_completion_tokens`` (or
``max_tokens``; default and ceiling ``ORCHARD_MAX_NEW_TOKENS``, larger values are lowered to it,
and the reply also ends where the context window does, with ``finish_reason: "length"``),
``temperature`` (default 1; 0 is greedy), ``top_p``, ``top_k`` (an extension, as in vLLM),
``n``, ``seed``, ``stop`` (a string or a list), ``stream`` and ``stream_options.include_usage``.
The engine's limits apply (``n`` at most 16, up to 16 stop strings, ``temperature`` up to 5).
Features the engine lacks are refused with 400 rather than ignored: ``logprobs``, ``tools`` /
``functions``, ``response_format`` other than text, ``logit_bias`` and non-zero penalties.
``finish_reason`` is ``"stop"`` (end of turn or a stop string, which is not included) or
``"length"``; ``usage`` counts the prompt's tokens and every generated token (the end-of-turn
token included).

Streaming (``"stream": true``) answers ``text/event-stream``: a ``chat.completion.chunk`` per
choice with ``delta: {"role": "assistant", "content": ""}``, then content deltas as tokens come,
then each choice's last chunk with an empty delta and its ``finish_reason``, a usage chunk when
``stream_options.include_usage`` asks for it, and ``data: [DONE]``. The deltas of a choice
concatenate to exactly the text a non-streaming call returns. A client that disconnects stops
its generation within one decoding step (the web server closes the response, which closes
:func:`training.inference.stream_generation`). A failure after streaming began is sent as a
``data: {"error": ...}`` event before ``[DONE]``; a busy server answers 429 before any byte.

Limits: no tool-call parsing of the model's output (tool-call tokens stay in ``content``), no
log-probabilities, and a non-streaming request runs to its end even if its client went away
(it is bounded by ``ORCHARD_MAX_NEW_TOKENS``).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from training import inference
from training.models import Artifact, generative_checkpoints
from webapp.roles import Capability, HasCapability

logger = logging.getLogger(__name__)

MODEL_PREFIX = "orchard-"
ROLES = ("system", "developer", "user", "assistant", "tool")
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "stopped": "stop"}
# Engine parameter → the request parameter it comes from, for naming the culprit in errors.
PARAM_NAMES = {"max_new_tokens": "max_tokens", "stop_strings": "stop"}


class BearerTokenAuthentication(TokenAuthentication):
    """Orchard's API token sent the way OpenAI's clients send keys: ``Authorization: Bearer``."""

    keyword = "Bearer"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict:
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Bearer"
        )


def generation_rate_exceeded(request: Request) -> bool:
    """The same per-person generation limit as the chat page (``ORCHARD_GENERATION_RATE``)."""
    from django_ratelimit.core import is_ratelimited

    return is_ratelimited(
        request._request,
        group="generate",
        key="user_or_ip",
        rate=lambda group, req: settings.ORCHARD_GENERATION_RATE,
        method="POST",
        increment=True,
    )


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 (OpenAI's field name)
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        return Response(self.body(), status=self.status, headers=self.headers)


def _invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param)


# What DRF raises before the view runs, as OpenAI's (type, code).
DRF_ERRORS: dict[type, tuple[str, str | None]] = {
    exceptions.NotAuthenticated: ("invalid_request_error", "invalid_api_key"),
    exceptions.AuthenticationFailed: ("invalid_request_error", "invalid_api_key"),
    exceptions.PermissionDenied: ("permission_error", "insufficient_permissions"),
    exceptions.NotFound: ("invalid_request_error", "not_found"),
    exceptions.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    exceptions.ParseError: ("invalid_request_error", "invalid_json"),
    exceptions.UnsupportedMediaType: ("invalid_request_error", "unsupported_media_type"),
    exceptions.Throttled: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


class _OpenAIView(APIView):
    authentication_classes = [BearerTokenAuthentication, TokenAuthentication, SessionAuthentication]
    permission_classes = [HasCapability(Capability.CHAT)]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, OpenAIError):
            return exc.response()
        if not isinstance(exc, exceptions.APIException):
            logger.exception("OpenAI-compatible API: unexpected error")
            return OpenAIError(
                500, f"internal error: {type(exc).__name__}", type="server_error"
            ).response()
        response = super().handle_exception(exc)  # status, WWW-Authenticate, Retry-After
        kind, code = next(
            (found for cls, found in DRF_ERRORS.items() if isinstance(exc, cls)),
            ("invalid_request_error", None),
        )
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        response.data = OpenAIError(response.status_code, str(detail), type=kind, code=code).body()
        return response


# -- models -------------------------------------------------------------------------------------


def chat_models() -> Any:
    """The checkpoints one can chat with: all but reward models."""
    return generative_checkpoints()


def model_id(artifact: Artifact) -> str:
    return f"{MODEL_PREFIX}{artifact.pk}"


def find_model(name: Any) -> Artifact:
    """``orchard-<pk>``, a bare pk or an artifact name; 404 in OpenAI's shape otherwise."""
    if not isinstance(name, str | int) or isinstance(name, bool) or not str(name).strip():
        raise _invalid("model", "'model' is required: one of the ids from GET /v1/models.")
    name = str(name).strip()
    models = chat_models()
    found = None
    if match := re.fullmatch(rf"(?:{MODEL_PREFIX})?(\d{{1,18}})", name):
        found = models.filter(pk=int(match[1])).first()
    found = found or models.filter(name=name).first()  # newest first (Artifact.Meta.ordering)
    if found is None:
        raise OpenAIError(
            404,
            f"The model '{name}' does not exist: GET /v1/models lists the checkpoints.",
            param="model",
            code="model_not_found",
        )
    return found


def _model_object(artifact: Artifact) -> dict[str, Any]:
    return {
        "id": model_id(artifact),
        "object": "model",
        "created": int(artifact.created_at.timestamp()),
        "owned_by": "orchard",
        "name": artifact.name,
    }


class ModelListApi(_OpenAIView):
    @extend_schema(
        operation_id="openai_models_list",
        summary="OpenAI-compatible list of the checkpoints one can chat with",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        data = [_model_object(a) for a in chat_models()]
        return Response({"object": "list", "data": data})


class ModelDetailApi(_OpenAIView):
    @extend_schema(
        operation_id="openai_models_retrieve",
        summary="OpenAI-compatible model object",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, model: str) -> Response:
        return Response(_model_object(find_model(model)))


# -- parsing a chat completion request ------------------------------------------------------------


@dataclass
class ChatRequest:
    artifact: Artifact
    messages: list[dict[str, Any]]
    params: Any  # training.core.generate.SamplingParams
    stream: bool
    include_usage: bool


def _text(content: Any, param: str, *, optional: bool) -> str:
    """A message's content: a string or a list of text parts."""
    if content is None and optional:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(param, f"'{param}' must be a string or a list of text parts.")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _invalid(
                f"{param}[{j}].type",
                f'\'{param}[{j}]\' must be {{"type": "text", "text": ...}}: these models '
                "read text only.",
            )
        if not isinstance(part.get("text"), str):
            raise _invalid(f"{param}[{j}].text", f"'{param}[{j}].text' must be a string.")
        texts.append(part["text"])
    return "\n".join(texts)


def _tool_calls(calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _invalid(param, f"'{param}' must be a list.")
    kept = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), str)
        ):
            raise _invalid(
                f"{param}[{j}]",
                f'\'{param}[{j}]\' must be {{"function": {{"name": ..., "arguments": ...}}}}.',
            )
        kept.append({"function": {"name": function["name"], "arguments": function["arguments"]}})
    return kept


def parse_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "'messages' must be a non-empty list of messages.")
    parsed = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(param, f"'{param}' must be an object with 'role' and 'content'.")
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(
                f"{param}.role", f"'{param}.role' must be one of {', '.join(ROLES)}; got {role!r}."
            )
        has_calls = role == "assistant" and bool(message.get("tool_calls"))
        content = _text(message.get("content"), f"{param}.content", optional=has_calls)
        turn: dict[str, Any] = {"role": "system" if role == "developer" else role}
        turn["content"] = content
        if has_calls:
            turn["tool_calls"] = _tool_calls(message["tool_calls"], f"{param}.tool_calls")
        parsed.append(turn)
    return parsed


def _refuse_unsupported(body: dict[str, Any]) -> None:
    def given(name: str, neutral: tuple = (None, False, 0, 0.0, [], {})) -> bool:
        return name in body and body[name] not in neutral

    for name in ("logprobs", "top_logprobs", "tools", "functions", "logit_bias"):
        if given(name):
            raise _invalid(name, f"'{name}' is not supported by Orchard's engine.")
    for name in ("frequency_penalty", "presence_penalty"):
        if given(name):
            raise _invalid(name, f"'{name}' is not supported by Orchard's engine (only 0).")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise _invalid("response_format", "Only the 'text' response format is supported.")


def _field_bound(name: str, bound: str) -> Any:
    from training.core.generate import SamplingParams

    for item in SamplingParams.model_fields[name].metadata:
        if hasattr(item, bound):
            return getattr(item, bound)
    return None


def sampling_params(body: dict[str, Any]) -> Any:
    """The engine's parameters; max tokens lowered to the server's ceiling."""
    from pydantic import ValidationError

    from training.core.generate import SamplingParams

    newer = body.get("max_completion_tokens") is not None
    param = "max_completion_tokens" if newer else "max_tokens"
    cap = min(settings.ORCHARD_MAX_NEW_TOKENS, _field_bound("max_new_tokens", "le") or 4096)
    max_tokens = body.get(param)
    if max_tokens is None:
        max_tokens = cap
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _invalid(param, f"'{param}' must be a positive integer; got {max_tokens!r}.")
    stop = body.get("stop")
    values = {
        "max_new_tokens": min(max_tokens, cap),
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
        "top_k": 0 if body.get("top_k") is None else body["top_k"],
        "n": 1 if body.get("n") is None else body["n"],
        "seed": body.get("seed"),
        "stop_strings": [] if stop is None else [stop] if isinstance(stop, str) else stop,
    }
    try:
        return SamplingParams.model_validate(values, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        name = PARAM_NAMES.get(field, field)
        if field == "max_new_tokens":
            name = param
        raise _invalid(name, f"Invalid value for '{name}': {error['msg']}.") from None


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise _invalid("body", "The request body must be a JSON object.")
    _refuse_unsupported(body)
    messages = parse_messages(body.get("messages"))
    params = sampling_params(body)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid("stream", "'stream' must be a boolean.")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("stream_options", "'stream_options' must be an object.")
    artifact = find_model(body.get("model"))  # last: a malformed request never touches the DB
    return ChatRequest(
        artifact=artifact,
        messages=messages,
        params=params,
        stream=stream,
        include_usage=stream and bool(options.get("include_usage")),
    )


def render_prompt(artifact: Artifact, messages: list[dict[str, Any]]) -> str:
    """The messages in the checkpoint's chat template; 400 when they do not fit its window."""
    from jinja2 import TemplateError

    try:
        base_path = inference.adapter_base_path(artifact)
        engine = inference.engine_cache().get(artifact, base_path)  # loads it on first use
    except (OSError, ValueError) as exc:
        logger.exception("OpenAI-compatible API: checkpoint %s could not be loaded", artifact.pk)
        raise OpenAIError(
            500, f"{model_id(artifact)} could not be loaded: {exc}", type="server_error"
        ) from None
    try:
        (prompt,) = inference.chat_prompts(artifact, [messages])
    except (TemplateError, ValueError) as exc:
        raise _invalid(
            "messages", f"The messages do not fit {model_id(artifact)}'s chat template: {exc}"
        ) from None
    length = len(engine.tokenizer.encode(prompt, add_special_tokens=False, verbose=False))
    if length >= engine.context_window:
        raise _context_exceeded(engine.context_window, length)
    return prompt


def _context_exceeded(window: int, length: int) -> OpenAIError:
    return OpenAIError(
        400,
        f"This model's maximum context length is {window} tokens. However, your messages "
        f"resulted in {length} tokens, which leaves no room for a reply. Please shorten them.",
        param="messages",
        code="context_length_exceeded",
    )


def _engine_error(message: str) -> OpenAIError:
    if "context window" in message:
        return OpenAIError(400, message, param="messages", code="context_length_exceeded")
    return OpenAIError(500, f"The generation failed: {message}", type="server_error")


# -- the completion -------------------------------------------------------------------------------


class ChatCompletionApi(_OpenAIView):
    @extend_schema(
        operation_id="openai_chat_completions_create",
        summary="OpenAI-compatible chat completion (JSON, or server-sent events with stream)",
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Any:
        if generation_rate_exceeded(request):
            raise OpenAIError(
                429,
                "Too many requests in a short time: wait a minute and try again.",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": "60"},
            )
        chat = parse_chat_request(request.data)
        prompt = render_prompt(chat.artifact, chat.messages)
        events = inference.stream_generation(
            artifact=chat.artifact, prompts=[prompt], params=chat.params
        )
        try:
            first = next(events)  # Busy is raised here, before any byte is sent
        except inference.Busy as busy:
            raise OpenAIError(
                429,
                f"Every generation slot is busy; retry in {busy.retry_after} s.",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(busy.retry_after)},
            ) from None
        if first["event"] == "error":
            events.close()
            raise _engine_error(first["message"])
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id(chat.artifact),
            "system_fingerprint": f"orchard-{chat.artifact.sha256[:12]}",
        }
        if chat.stream:
            chunks = _sse(first, events, meta, chat.params.n, chat.include_usage)
            response = StreamingHttpResponse(chunks, content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # let proxies pass each chunk through at once
            return response
        for event in _chain(first, events):
            if event["event"] == "done":
                return Response(_completion(meta, event["completions"]))
            if event["event"] == "error":
                raise _engine_error(event["message"])
        raise OpenAIError(500, "The generation ended without a result.", type="server_error")


def _usage(completions: list[dict[str, Any]]) -> dict[str, int]:
    prompt_tokens = completions[0]["prompt_tokens"] if completions else 0
    generated = sum(len(c["token_ids"]) for c in completions)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": prompt_tokens + generated,
    }


def _completion(meta: dict[str, Any], completions: list[dict[str, Any]]) -> dict[str, Any]:
    choices = [
        {
            "index": c["sample_index"],
            "message": {"role": "assistant", "content": c["text"]},
            "logprobs": None,
            "finish_reason": FINISH_REASONS[c["finish_reason"]],
        }
        for c in completions
    ]
    return {
        "id": meta["id"],
        "object": "chat.completion",
        "created": meta["created"],
        "model": meta["model"],
        "system_fingerprint": meta["system_fingerprint"],
        "choices": choices,
        "usage": _usage(completions),
    }


def _sse(
    first: dict[str, Any],
    events: Iterator[dict[str, Any]],
    meta: dict[str, Any],
    n: int,
    include_usage: bool,
) -> Iterator[str]:
    """``data:`` lines of chunks; closing this generator (client gone) stops the generation."""

    def data(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return data(
            {**meta, "object": "chat.completion.chunk", "choices": [choice]}
            | ({"usage": None} if include_usage else {})
        )

    try:
        for index in range(n):
            yield chunk(index, {"role": "assistant", "content": ""})
        for event in _chain(first, events):
            if event["event"] == "token":
                if event["text"]:
                    yield chunk(event["sample_index"], {"content": event["text"]})
            elif event["event"] == "done":
                for c in event["completions"]:
                    yield chunk(c["sample_index"], {}, FINISH_REASONS[c["finish_reason"]])
                if include_usage:
                    usage = _usage(event["completions"])
                    yield data(
                        {**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    )
            else:
                yield data(_engine_error(event["message"]).body())
        yield "data: [DONE]\n\n"
    finally:
        events.close()  # type: ignore[attr-defined]


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
