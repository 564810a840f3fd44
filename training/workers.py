"""What a worker does besides executing runs: say it is alive, and sweep for lost runs.

One ``WorkerMonitor`` thread lives in each worker's main process. Every sweep interval it writes
the worker's heartbeat row (read by /healthz and the runs page) and calls ``runs_sweep()``, so a
run whose worker was killed is picked up again by any surviving or newly started worker, without
Celery beat and without relying on the broker redelivering the message.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from training.models import WorkerHeartbeat

logger = logging.getLogger(__name__)


class WorkerMonitor(threading.Thread):
    def __init__(self, name: str, queues: str) -> None:
        super().__init__(name="orchard-worker-monitor", daemon=True)
        self.worker_name = name
        self.queues = queues
        self.started = timezone.now()
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(0.5, float(settings.ORCHARD_SWEEP_INTERVAL_SECONDS))
        try:
            while True:
                self.tick()
                if self._stop_event.wait(interval):
                    break
        finally:
            connection.close()

    def tick(self) -> None:
        from training.services import runs_sweep

        close_old_connections()
        try:
            heartbeat(self.worker_name, self.queues, self.started)
            runs_sweep()
        except Exception:  # a database hiccup must not kill the monitor; retry next tick
            logger.exception("worker monitor tick failed")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        WorkerHeartbeat.objects.filter(name=self.worker_name).delete()


def heartbeat(name: str, queues: str, started: object) -> None:
    WorkerHeartbeat.objects.update_or_create(
        name=name,
        defaults={
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues,
            "started_at": started,
            "last_seen": timezone.now(),
        },
    )


def live_workers() -> list[WorkerHeartbeat]:
    horizon = timezone.now() - timedelta(
        seconds=max(10, 3 * settings.ORCHARD_SWEEP_INTERVAL_SECONDS)
    )
    return list(WorkerHeartbeat.objects.filter(last_seen__gte=horizon).order_by("name"))
