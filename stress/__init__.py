"""Stress checks against a real server: the app under gunicorn (several worker processes) on a
throwaway database, driven over HTTP the way clients drive it.

``stress.load`` simulates labelers (RELIABILITY.md L1, L1-lite, L2); ``stress.schema`` fuzzes
the OpenAPI schema as each role (S9). This module is the harness both share: a fresh database
(PostgreSQL: ``orchard_stress_<random>``, dropped afterwards; SQLite: a file in a temporary
folder), ``migrate``, seeding and verification in a Django child process (the caller may
itself be a pytest process configured with other settings), and the server itself.

Nothing here imports Django at module level.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/orchard"
_RESULT_MARK = "@@stress-result@@"
KEEPALIVE_SERVER_S = 5  # gunicorn --keep-alive
KEEPALIVE_CLIENT_S = 2  # the load clients' keep-alive expiry: shorter than the server's
# Runs a ``module:function`` in a Django process: JSON in on stdin, JSON out on one marked line.
_CHILD = f"""
import importlib, json, sys
import django
django.setup()
module, name = sys.argv[1].split(":")
result = getattr(importlib.import_module(module), name)(json.load(sys.stdin))
sys.stdout.write({_RESULT_MARK!r} + json.dumps(result) + "\\n")
"""
# Variables of the caller that must not leak into the server (pytest sets some of them).
_SCRUBBED = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "ORCHARD_VAR_DIR")


class StressSetupError(RuntimeError):
    """The harness could not set up (database, migrate, server start); not a finding."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_base_url() -> str:
    """The PostgreSQL server to make throwaway databases on: ``STRESS_DATABASE_URL``, then
    ``TEST_DATABASE_URL`` (the Makefile's), then a ``postgres://`` ``DATABASE_URL``."""
    for name in ("STRESS_DATABASE_URL", "TEST_DATABASE_URL", "DATABASE_URL"):
        value = os.environ.get(name, "")
        if value.startswith(("postgres://", "postgresql://")):
            return value
    return DEFAULT_POSTGRES_URL


def _admin_connect(url: str) -> Any:
    import psycopg

    parts = urllib.parse.urlsplit(url)
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=urllib.parse.unquote(parts.username or "postgres"),
        password=urllib.parse.unquote(parts.password) if parts.password else None,
        dbname="postgres",
        autocommit=True,
        connect_timeout=5,
    )


def postgres_available(url: str | None = None) -> str | None:
    """None when a throwaway database can be made there, else why not."""
    try:
        with _admin_connect(url or postgres_base_url()) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


@contextlib.contextmanager
def throwaway_database(kind: str, workdir: Path) -> Iterator[str]:
    """A DATABASE_URL for a database that exists only inside the ``with`` block."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'stress.sqlite3'}"
        return
    if kind != "postgres":
        raise ValueError(f"unknown database kind {kind!r}")
    base = postgres_base_url()
    name = f"orchard_stress_{secrets.token_hex(6)}"
    try:
        with _admin_connect(base) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        raise StressSetupError(f"cannot create {name} on {base}: {exc}") from exc
    parts = urllib.parse.urlsplit(base)
    try:
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}", query=""))
    finally:
        with _admin_connect(base) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentiles(values: list[float], wanted: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds (values in seconds), plus max and count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    out: dict[str, float] = {"count": len(ordered)}
    for p in wanted:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * n)
        out[f"p{p}"] = round(ordered[rank - 1] * 1000, 1)
    out["max"] = round(ordered[-1] * 1000, 1)
    return out


@dataclass
class ServerError:
    """One traceback from the server log: the request line Django logged and the trace."""

    request: str
    exception: str
    traceback: str

    @property
    def refused(self) -> bool:
        """Logged by ``django.security`` (RequestDataTooBig, SuspiciousOperation...): Django
        answered 400 for it, so it is not a server error."""
        return "django.security" in self.request


_LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d[ T]|\[\d{4}-\d\d-\d\d )")
_CHAIN = ("The above exception", "During handling")


def server_errors(log_text: str) -> list[ServerError]:
    """Tracebacks in a server log (Django's ``django.request`` errors and gunicorn's own), a
    chained traceback counted once, with the log line that named the request. ``exception``
    is the first line of the last exception in the chain."""
    errors: list[ServerError] = []
    lines = log_text.splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith("Traceback (most recent call last):"):
            index += 1
            continue
        request = next(
            (
                lines[back]
                for back in range(index - 1, max(index - 4, -1), -1)
                if re.search(r"Internal Server Error|Error handling request|ERROR", lines[back])
            ),
            "",
        )
        start, exception = index, ""
        index += 1
        while index < len(lines):
            line = lines[index]
            if (
                not line.strip()
                or line.startswith((" ", "\t", "Traceback (most recent"))
                or line.startswith(_CHAIN)
            ):
                index += 1
                continue
            if _LOG_RECORD.match(line):
                break  # the next log record: the trace ended without an exception line
            exception = line
            index += 1
            while (  # the message's own further lines (PostgreSQL's LINE, DETAIL, CONTEXT)
                index < len(lines)
                and lines[index].strip()
                and not lines[index].startswith("Traceback")
                and not _LOG_RECORD.match(lines[index])
            ):
                index += 1
            following = index
            while following < len(lines) and not lines[following].strip():
                following += 1
            if following < len(lines) and lines[following].startswith(_CHAIN):
                index = following
                continue
            break
        trace = "\n".join(lines[start:index]).rstrip()
        errors.append(ServerError(request.strip(), exception.strip(), trace))
    return errors


@dataclass
class LiveServer:
    """The app under gunicorn on a throwaway database. Use as a context manager."""

    db: str = "sqlite"  # or "postgres"
    workers: int = 3
    threads: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    keep_dir: Path | None = None  # keep logs here (the temporary folder is removed otherwise)
    workdir: Path = field(init=False)
    database_url: str = field(init=False, default="")
    base_url: str = field(init=False, default="")
    log_path: Path = field(init=False)
    _stack: contextlib.ExitStack = field(init=False)
    _proc: subprocess.Popen | None = field(init=False, default=None)
    _log: Any = field(init=False, default=None)

    def __enter__(self) -> LiveServer:
        self._stack = contextlib.ExitStack()
        try:
            if self.keep_dir is not None:
                self.keep_dir.mkdir(parents=True, exist_ok=True)
                self.workdir = Path(tempfile.mkdtemp(prefix="stress-", dir=self.keep_dir))
            else:
                self.workdir = Path(tempfile.mkdtemp(prefix="orchard-stress-"))
                self._stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
            self.log_path = self.workdir / "server.log"
            self.database_url = self._stack.enter_context(throwaway_database(self.db, self.workdir))
            self._env = self._make_env()
            (self.workdir / "var" / "static").mkdir(parents=True)  # whitenoise warns otherwise
            self.manage("migrate", "--noinput")
            self._stack.callback(self.stop)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _make_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update(
            DJANGO_SETTINGS_MODULE="webapp.settings",
            DATABASE_URL=self.database_url,
            ORCHARD_VAR_DIR=str(self.workdir / "var"),
            # Production-like: DEBUG off, a strong random key, plain HTTP on loopback.
            DEBUG="0",
            SECRET_KEY=secrets.token_urlsafe(64),
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SECURE_SSL_REDIRECT="0",
            SESSION_COOKIE_SECURE="0",
            CSRF_COOKIE_SECURE="0",
            LOG_LEVEL="WARNING",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    def manage(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise StressSetupError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        return done.stdout

    def django(self, target: str, payload: dict[str, Any], timeout: float = 600) -> Any:
        """Call ``module:function(payload)`` in a Django process on this server's database."""
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, target],
            cwd=REPO,
            env=self._env,
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        for line in reversed(done.stdout.splitlines()):
            if line.startswith(_RESULT_MARK):
                return json.loads(line[len(_RESULT_MARK) :])
        raise StressSetupError(f"{target} failed (exit {done.returncode}):\n{done.stderr[-6000:]}")

    def start(self, timeout: float = 90) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = open(self.log_path, "a")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "webapp.wsgi",
                "--workers",
                str(self.workers),
                "--threads",
                str(self.threads),
                "--bind",
                f"127.0.0.1:{port}",
                "--timeout",
                "120",
                "--graceful-timeout",
                "20",
                # Longer than any client's keep-alive here (httpx: 2 s, see KEEPALIVE_CLIENT_S):
                # otherwise the server may close a connection just as the client reuses it.
                "--keep-alive",
                str(KEEPALIVE_SERVER_S),
                "--no-control-socket",  # gunicorn 27 would share ~/.gunicorn/gunicorn.ctl
                "--access-logfile",
                str(self.workdir / "access.log"),
                "--access-logformat",
                "%(m)s %(U)s%(q)s %(s)s %(M)sms",
            ],
            cwd=REPO,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StressSetupError(f"gunicorn exited at start:\n{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # 503 "degraded/down" still means the server answers
            except OSError:
                time.sleep(0.3)
        raise StressSetupError(f"gunicorn did not answer in {timeout:.0f}s:\n{self.log_text()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_log(self) -> list[str]:
        try:
            return (self.workdir / "access.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def server_errors(self) -> list[ServerError]:
        """Tracebacks of requests that failed (not those Django refused with a 400)."""
        return [e for e in server_errors(self.log_text()) if not e.refused]

    def refused_requests(self) -> list[ServerError]:
        return [e for e in server_errors(self.log_text()) if e.refused]
