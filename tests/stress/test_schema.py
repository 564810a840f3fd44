"""Schemathesis over /api/schema/ as each role (labeler, reviewer, trainer, admin, anonymous)
against gunicorn, in the small CI form: a few examples per operation (RELIABILITY.md S9). The
full form (100 examples, coverage and stateful phases) runs in ``make stress``.

No request may answer 5xx; a failure lists each one with its request and the server traceback.
"""

from __future__ import annotations

import json

import pytest

from stress.schema import PERSONAS, Config, run_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_no_server_errors_for_any_role(tmp_path):
    summary = run_schema(Config(db="sqlite", max_examples=3, keep_logs=tmp_path))
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    detail = json.dumps(
        {k: summary[k] for k in ("problems", "server_5xx_groups", "unmatched_tracebacks")},
        indent=1,
        default=str,
    )
    assert summary["ok"], detail
    assert summary["status_5xx"] == 0, detail
    assert set(summary["personas"]) == set(PERSONAS)
    for persona, result in summary["personas"].items():
        tested = result["operations"]["tested"]
        assert tested >= summary["schema_operations"] - 1, (persona, result)
        assert result["test_cases"]["generated"] >= tested, (persona, result)
    # The anonymous caller is refused everywhere (401), never let in.
    anonymous = summary["personas"]["anonymous"]["responses"]
    assert not {code for code in anonymous if code.startswith("2")}, anonymous


def test_server_log_tracebacks_are_counted_once_per_request():
    """A chained PostgreSQL error (message over several lines) is one error, paired with the
    request Django logged; a ``django.security`` 400 is not a server error."""
    from stress import server_errors

    log = "\n".join(
        [
            "2026-01-01 00:00:00,000 ERROR django.request: Internal Server Error: /api/x/",
            "Traceback (most recent call last):",
            '  File "psycopg/cursor.py", line 117, in execute',
            "psycopg.errors.UntranslatableCharacter: unsupported Unicode escape sequence",
            "LINE 1: ...",
            "        ^",
            "DETAIL:  \\u0000 cannot be converted to text.",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "Traceback (most recent call last):",
            '  File "django/db/backends/utils.py", line 105, in _execute',
            "django.db.utils.DataError: unsupported Unicode escape sequence",
            "2026-01-01 00:00:01,000 ERROR django.security.RequestDataTooBig: too big",
            "Traceback (most recent call last):",
            '  File "django/http/request.py", line 1, in body',
            "django.core.exceptions.RequestDataTooBig: too big",
            "[2026-01-01 00:00:02 +0000] [1] [INFO] Shutting down: Master",
        ]
    )
    errors = server_errors(log)
    assert [e.exception for e in errors] == [
        "django.db.utils.DataError: unsupported Unicode escape sequence",
        "django.core.exceptions.RequestDataTooBig: too big",
    ]
    assert errors[0].request.endswith("Internal Server Error: /api/x/")
    assert "DETAIL" in errors[0].traceback
    assert [e.refused for e in errors] == [False, True]
