"""Real Celery worker subprocesses for integration tests, on whatever database and broker the
test process is configured with (SQLite + filesystem by default, PostgreSQL + Redis in the
second pass of ``make test``), and the faults the fault tests inflict on them: kill -9, a
process group frozen mid-write, a private Redis server flushed or killed under them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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

# Workers that train pass this: tiny models train fastest on one thread when processes share
# the cores, and a run matches its in-process reference only at the same thread count.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


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

    def freeze(self) -> None:
        """SIGSTOP the whole group: whatever it was writing stays exactly as far as it got."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def owns_pid(self, pid: int) -> bool:
        """Whether ``pid`` (a pool child) belongs to this worker's process group."""
        try:
            return os.getpgid(pid) == self.proc.pid
        except ProcessLookupError:
            return False

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


def lease_holder(workers: list[WorkerProcess], run_id: int, timeout: float = 60) -> WorkerProcess:
    """The worker whose pool child holds the run's lease (``host:pid:token``)."""
    from training.models import Run

    def holder() -> WorkerProcess | None:
        owner = Run.objects.get(pk=run_id).lease_owner
        if not owner:
            return None
        pid = int(owner.split(":")[1])
        return next((w for w in workers if w.owns_pid(pid)), None)

    return wait_for(holder, timeout, f"a worker to claim run {run_id}")


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """In-process reference runs use one thread, like workers started with ONE_THREAD."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- a private Redis ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_path() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


class RedisServer:
    """A redis-server of the test's own on a free port, without persistence: killed and started
    again, it comes back empty, as a broker host that lost its memory would."""

    def __init__(self, executable: str, log_dir: Path) -> None:
        self.executable = executable
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = self.log_dir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.log_dir), "--logfile", str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self.ping, 20, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def flushall(self) -> None:
        import redis

        redis.Redis(port=self.port, socket_timeout=5).flushall()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


@contextlib.contextmanager
def broker_for_this_process(url: str) -> Iterator[None]:
    """Point this process's Celery app (what run_create and run_enqueue publish with) at
    ``url``; the pools are dropped on the way in and out so no connection to the other broker
    is reused."""
    from webapp.celery import app

    def drop_pools() -> None:
        from kombu import pools

        if app._pool is not None:
            app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
        # kombu's global producer pools may still hold the closed connection pool: forget them,
        # so later publishing builds fresh ones instead of failing with "closed pool".
        pools.reset()

    # The write and read URLs, since CELERY_BROKER_URL in the environment (the PostgreSQL +
    # Redis pass) overrides broker_url itself.
    keys = ("broker_write_url", "broker_read_url", "broker_transport_options")
    saved = {key: app.conf.get(key) for key in keys}
    drop_pools()
    app.conf.update(broker_write_url=url, broker_read_url=url, broker_transport_options={})
    try:
        yield
    finally:
        drop_pools()
        app.conf.update(saved)
