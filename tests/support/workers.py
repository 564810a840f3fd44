"""Real Celery worker subprocesses for integration tests, on whatever database and broker the
test process is configured with (SQLite + filesystem by default, PostgreSQL + Redis in the
second pass of ``make test``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

REPO = Path(__file__).resolve().parents[2]

# Short leases so that a killed worker's run is recovered within seconds in tests.
FAST_LEASES = {
    "ORCHARD_RUN_LEASE_SECONDS": "3",
    "ORCHARD_SWEEP_INTERVAL_SECONDS": "1",
    "ORCHARD_REQUEUE_QUEUED_AFTER_SECONDS": "4",
}


def test_database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAST_LEASES)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        ORCHARD_VAR_DIR=str(settings.VAR_DIR),
        DATABASE_URL=test_database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, name: str, log_dir: Path, **env: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", "--name", name, "--loglevel", "INFO"],
            cwd=REPO,
            env=worker_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the pool child too
        )

    def wait_ready(self, timeout: float = 90) -> None:
        from training.models import WorkerHeartbeat

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if WorkerHeartbeat.objects.filter(name__startswith=f"{self.name}@").exists():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"worker {self.name} did not start:\n{self.log()}")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def purge_broker() -> None:
    """Drop messages left by earlier tests so a new worker starts from an empty queue."""
    from webapp.celery import app

    with app.connection_for_write() as conn:
        for queue in ("training", "default"):
            # A queue that does not exist yet has nothing to purge.
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)
