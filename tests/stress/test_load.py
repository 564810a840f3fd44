"""Simulated labelers against gunicorn (several processes) on SQLite and on PostgreSQL, in the
small CI form: 8 labelers for 15 s each (RELIABILITY.md L1/L1-lite, L2). The full forms (50
labelers x 5 min on PostgreSQL, 10 x 2 min on SQLite) run in ``make stress``.

Each run must end with 0 5xx, 0 transport errors, 0 tracebacks in the server log, nothing
acknowledged and missing, nothing twice (assignments, submissions, rankings, records per
Idempotency-Key), no item beyond its overlap, stale saves answered 409 and invalid rankings 400.
"""

from __future__ import annotations

import json
import os

import pytest

from stress import postgres_available
from stress.load import Config, idempotency_in_api, run_load

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LABELERS = 8
SECONDS = 15


def _run(db: str, tmp_path) -> dict:
    summary = run_load(Config(db=db, labelers=LABELERS, seconds=SECONDS, keep_logs=tmp_path))
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _assert_clean(summary: dict) -> None:
    detail = json.dumps(
        {k: summary[k] for k in ("problems", "server_5xx", "server_log", "by_operation")},
        indent=1,
        default=str,
    )
    assert summary["ok"], detail
    assert summary["status_5xx"] == 0, detail
    assert summary["transport_errors"] == 0, detail
    assert summary["lost"] == 0 and summary["duplicates"] == 0, detail
    assert summary["server_log"]["database_is_locked"] == 0, detail
    # The crowd really worked: tasks of every kind were submitted, and the traps were sprung.
    ops = summary["by_operation"]
    assert summary["acked"]["conversations"] >= LABELERS, detail
    assert summary["acked"]["rankings"] >= 1, detail
    assert ops.get("stale_save", {}).get("409", 0) >= 1, detail
    assert summary["idempotency"]["bulk_keys"] >= 1, detail
    if idempotency_in_api():
        assert summary["idempotency"]["required"]
        assert summary["idempotency"]["bulk_keys_with_duplicates"] == 0, detail


def test_labelers_on_sqlite(tmp_path):
    _assert_clean(_run("sqlite", tmp_path))


def test_labelers_on_postgres(tmp_path):
    why = postgres_available()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable in CI: {why}")
        pytest.skip(f"PostgreSQL is not reachable: {why}")
    _assert_clean(_run("postgres", tmp_path))
