"""Site-wide pages: the dashboard and the health check."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    from training.selectors import dashboard_summary

    return render(request, "home.html", {"summary": dashboard_summary(request.user)})


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, broker and workers, as JSON. 503 when the database or the broker is down;
    no live worker is reported as "degraded" (runs would queue but not start)."""
    database = _check_database()
    broker = _check_broker()
    workers = _check_workers() if database["ok"] else {"ok": False, "count": 0}
    healthy = database["ok"] and broker["ok"]
    status = "ok" if healthy and workers["ok"] else ("degraded" if healthy else "down")
    body = {"status": status, "database": database, "broker": broker, "workers": workers}
    return JsonResponse(body, status=200 if healthy else 503)


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        return {"ok": False, "vendor": connection.vendor, "error": type(exc).__name__}


def _check_broker() -> dict:
    from webapp.celery import app

    transport = app.conf.broker_url.split(":", 1)[0]
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return {"ok": True, "transport": transport}
    except Exception as exc:
        return {"ok": False, "transport": transport, "error": type(exc).__name__}


def _check_workers() -> dict:
    from training.workers import live_workers

    workers = live_workers()
    return {
        "ok": bool(workers),
        "count": len(workers),
        "queues": sorted({q for w in workers for q in w.queues.split(",") if q}),
    }


def rate_limited(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Answer to a request over a rate limit (``RATELIMIT_VIEW``): 429 with a Retry-After and a
    sentence saying what happened, as JSON for scripts and streams, as a page otherwise."""
    text = "Too many requests in a short time: wait a minute and try again."
    wants_json = (
        request.path.startswith(("/api/", "/v1/"))
        or request.path.endswith("/stream/")
        or request.POST.get("stream") == "1"
        or "application/json" in request.headers.get("Accept", "")
    )
    if wants_json:
        response: HttpResponse = JsonResponse({"detail": text}, status=429)
    else:
        response = render(request, "rate_limited.html", {"text": text}, status=429)
    response["Retry-After"] = "60"
    return response
