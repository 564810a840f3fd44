"""``Idempotency-Key`` for unsafe API calls, as payment APIs do it.

The first successful answer for a (user, key) is stored in the same transaction as the action
itself; a retry with that key returns the stored answer without acting again. Two retries
racing: the loser's unique-key insert fails, its whole transaction (the action included) rolls
back, and it answers with the winner's stored response. A key reused for another endpoint is
refused with 422. Failed requests (4xx/5xx) store nothing, so they can be retried.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import IntegrityError, transaction
from rest_framework.response import Response

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200


def idempotent(method: Callable[..., Response]) -> Callable[..., Response]:
    """Decorate a DRF view method (post/put) so an ``Idempotency-Key`` makes retries safe."""

    @wraps(method)
    def wrapped(view: Any, request: Any, *args: Any, **kwargs: Any) -> Response:
        from webapp.models import IdempotencyRecord

        key = request.headers.get(HEADER, "").strip()
        if not key or not request.user.is_authenticated:
            return method(view, request, *args, **kwargs)
        if len(key) > MAX_KEY_LENGTH:
            return Response({"detail": f"{HEADER} is longer than {MAX_KEY_LENGTH} characters"}, 400)
        scope = f"{request.method} {request.path}"[:300]
        stored = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
        if stored is not None:
            return _replay(stored, scope)
        try:
            with transaction.atomic():
                response = method(view, request, *args, **kwargs)
                if 200 <= response.status_code < 300:
                    IdempotencyRecord.objects.create(
                        user=request.user,
                        key=key,
                        scope=scope,
                        status_code=response.status_code,
                        body=response.data,
                    )
        except IntegrityError:
            stored = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
            if stored is None:
                raise
            return _replay(stored, scope)
        if response.status_code >= 400:
            # A copy that waited behind the first one (row lock, version check) and failed only
            # because the first one succeeded: answer what the first one answered.
            stored = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
            if stored is not None:
                return _replay(stored, scope)
        return response

    return wrapped


def _replay(stored: Any, scope: str) -> Response:
    if stored.scope != scope:
        return Response(
            {"detail": f"this {HEADER} was already used for {stored.scope}"}, status=422
        )
    response = Response(stored.body, status=stored.status_code)
    response["Idempotent-Replayed"] = "true"
    return response
