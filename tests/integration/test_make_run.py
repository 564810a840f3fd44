"""`make run` on the embedded defaults: migrates, prints demo credentials that work, serves the
app with a live worker, and Ctrl-C (SIGINT to the foreground process group) stops everything."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.workers import wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def log_in(base: str, username: str, password: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token}
    ).encode()
    request = urllib.request.Request(f"{base}/login/", data=form, headers={"Referer": base})
    opener.open(request)
    return opener


def test_make_run_serves_the_app_with_a_worker_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(ORCHARD_VAR_DIR=str(tmp_path / "var"), PORT=str(port))
    log = open(tmp_path / "make-run.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_for(
            lambda: (h := fetch_json(f"{base}/healthz")) and h["workers"]["count"] and h,
            180,
            "the web server and its worker",
            interval=0.5,
        )
        assert health["status"] == "ok"
        assert health["database"]["vendor"] == "sqlite"
        assert health["broker"]["transport"] == "filesystem"
        output = (tmp_path / "make-run.log").read_text()
        password = re.search(r"user trainer\s+password (\S+)", output).group(1)
        opener = log_in(base, "trainer", password)
        runs_page = opener.open(f"{base}/runs/").read().decode()
        assert "1 worker online" in runs_page
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of `make run` were still alive after Ctrl-C")
    log.close()


def test_make_setup_is_idempotent():
    """Once installed, `make setup` has nothing to do (make -q exits 0 when up to date)."""
    subprocess.run(
        ["make", "--no-print-directory", "setup"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=900,
    )
    assert subprocess.run(["make", "-q", "setup"], cwd=REPO).returncode == 0
