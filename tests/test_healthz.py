"""/healthz: database, broker and workers as JSON."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from training.models import WorkerHeartbeat

pytestmark = pytest.mark.django_db


def test_it_reports_degraded_without_a_live_worker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"]["ok"] and body["broker"]["ok"]
    assert body["workers"] == {"ok": False, "count": 0, "queues": []}


def test_it_reports_ok_with_a_live_worker_and_ignores_stale_ones(client):
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        name="w1@h", hostname="h", pid=1, queues="default,training", started_at=now, last_seen=now
    )
    WorkerHeartbeat.objects.create(
        name="old@h",
        hostname="h",
        pid=2,
        queues="gpu",
        started_at=now,
        last_seen=now - timedelta(hours=1),
    )
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["workers"] == {"ok": True, "count": 1, "queues": ["default", "training"]}


def test_it_answers_503_when_the_broker_is_unreachable(client, monkeypatch):
    from webapp.celery import app

    unreachable = app.connection_for_write("redis://127.0.0.1:1/0")
    monkeypatch.setattr(app, "connection_for_write", lambda: unreachable)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"]["ok"] is False
    assert response.json()["status"] == "down"
