"""The database side of the reporter protocol, and the lease a worker holds on its run.

``DbReporter`` is what a stage in ``training.core`` talks to inside a worker: progress, metrics and
log lines are buffered and written at most every ``min_interval`` seconds, and ``should_stop()``
turns true when someone asked to cancel or when this worker lost its lease (another worker took
the run over after this one was presumed dead). Every write is conditional on still holding the
lease, so a worker that lost it can never overwrite the run's new owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from training.models import Run, RunMetric, RunRecord, RunStatus

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 200


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters replaced: PostgreSQL refuses them in text and JSON, and a
    model sampling raw bytes (or a scraped page) produces them."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nul(v) for v in value]
    return value


def lease_seconds() -> int:
    return settings.ORCHARD_RUN_LEASE_SECONDS


class DbReporter:
    def __init__(
        self,
        run_id: int,
        owner: str,
        log_path: Path,
        min_interval: float = 0.5,
        stop_check_interval: float = 1.0,
        initial_log: str = "",
    ) -> None:
        self.run_id = run_id
        self.owner = owner
        self.log_path = log_path
        self.min_interval = min_interval
        self.stop_check_interval = stop_check_interval
        self.cancel_seen = False
        self.lease_lost = threading.Event()
        self._tail: deque[str] = deque(initial_log.splitlines()[-LOG_TAIL_LINES:], LOG_TAIL_LINES)
        self._pending_metrics: list[RunMetric] = []
        self._pending_records: list[RunRecord] = []
        self._pending_fields: dict[str, object] = {}
        self._last_flush = 0.0
        self._last_stop_check = 0.0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    # --- the Reporter protocol ------------------------------------------------------------

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        fields: dict[str, object] = {"step": step, "total_steps": total}
        if total:
            fields["progress"] = max(0.0, min(1.0, step / total))
        if message:
            fields["message"] = without_nul(message[:200])
        self._pending_fields.update(fields)
        self._maybe_flush()

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._pending_metrics.extend(
            RunMetric(run_id=self.run_id, step=step, name=name[:64], value=float(value))
            for name, value in values.items()
        )
        self._maybe_flush()

    def log(self, line: str) -> None:
        stamped = without_nul(f"{timezone.now():%H:%M:%S} {line}")
        self._log_file.write(stamped + "\n")
        self._log_file.flush()
        self._tail.append(stamped)
        self._pending_fields["log_tail"] = "\n".join(self._tail)
        self._maybe_flush()

    def record(self, name: str, payload: dict, step: int) -> None:
        self._pending_records.append(
            RunRecord(run_id=self.run_id, step=step, name=name[:64], payload=without_nul(payload))
        )
        self._maybe_flush()

    def should_stop(self) -> bool:
        if self.lease_lost.is_set() or self.cancel_seen:
            return True
        now = time.monotonic()
        if now - self._last_stop_check >= self.stop_check_interval:
            self._last_stop_check = now
            self.cancel_seen = Run.objects.filter(pk=self.run_id, cancel_requested=True).exists()
        return self.cancel_seen or self.lease_lost.is_set()

    # --- writing ----------------------------------------------------------------------------

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        fields, self._pending_fields = self._pending_fields, {}
        metrics, self._pending_metrics = self._pending_metrics, []
        records, self._pending_records = self._pending_records, []
        if self.lease_lost.is_set():
            return
        updated = Run.objects.filter(
            pk=self.run_id, lease_owner=self.owner, status=RunStatus.RUNNING
        ).update(updated_at=timezone.now(), **fields)
        if not updated:
            self.lease_lost.set()
            return
        if metrics:
            RunMetric.objects.bulk_create(metrics)
        if records:
            RunRecord.objects.bulk_create(records)

    def close(self) -> None:
        self.flush()
        self._log_file.close()


class LeaseKeeper(threading.Thread):
    """Renews the run's lease every third of its length, from its own thread, so a long step
    (a big optimizer step, a slow tokenizer merge) never lets the lease lapse while alive."""

    def __init__(self, run_id: int, owner: str, lost: threading.Event) -> None:
        super().__init__(name=f"lease-{run_id}", daemon=True)
        self.run_id = run_id
        self.owner = owner
        self.lost = lost
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = max(0.2, lease_seconds() / 3)
        try:
            while not self._stop_event.wait(interval):
                if not renew_lease(self.run_id, self.owner):
                    if self._stop_event.is_set():  # the run just finished: nothing was lost
                        return
                    logger.warning("run %s: lease lost by %s", self.run_id, self.owner)
                    self.lost.set()
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def renew_lease(run_id: int, owner: str) -> bool:
    close_old_connections()
    now = timezone.now()
    return bool(
        Run.objects.filter(pk=run_id, lease_owner=owner, status=RunStatus.RUNNING).update(
            lease_expires_at=now + timedelta(seconds=lease_seconds()), heartbeat_at=now
        )
    )
