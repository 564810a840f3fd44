"""Settings come from the environment; production refuses weak secrets and passes --deploy."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp import settings as orchard_settings

REPO = Path(__file__).resolve().parents[1]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG"}
    }
    clean.update(DJANGO_SETTINGS_MODULE="webapp.settings", **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def python_output(code: str, env: dict[str, str]) -> list[str]:
    """What a fresh interpreter with these settings prints, split into words."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()


def test_production_settings_pass_the_deploy_check(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="orchard.example.org",
        ORCHARD_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("key", ["", "short", "django-insecure-" + "x" * 60, "ab" * 40])
def test_production_refuses_a_missing_or_weak_secret(tmp_path, key):
    result = manage("check", DEBUG="0", SECRET_KEY=key, ORCHARD_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_a_secret_can_come_from_a_file(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(secrets.token_urlsafe(64) + "\n")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("SECRET_KEY_FILE", str(key_file))
    assert (
        orchard_settings.env_secret("SECRET_KEY", debug=False, fallback_file=tmp_path / "x")
        == key_file.read_text().strip()
    )


def test_development_generates_a_private_key_once(tmp_path, monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("SECRET_KEY_FILE", raising=False)
    path = tmp_path / "secret_key"
    first = orchard_settings.env_secret("SECRET_KEY", debug=True, fallback_file=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert orchard_settings.env_secret("SECRET_KEY", debug=True, fallback_file=path) == first
    assert len(first) >= 50


def test_env_helpers_refuse_bad_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured):
        orchard_settings.env_bool("X_BOOL", True)
    with pytest.raises(ImproperlyConfigured):
        orchard_settings.env_int("X_INT", 1)
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert orchard_settings.env_list("X_LIST", []) == ["a", "b", "c"]


def test_defaults_are_sqlite_in_wal_mode_and_the_filesystem_broker(tmp_path):
    code = (
        "import django; django.setup();"
        "from django.conf import settings; from django.db import connection;"
        "c = connection.cursor(); c.execute('PRAGMA journal_mode'); "
        "print(settings.DATABASES['default']['ENGINE'], c.fetchone()[0], "
        "settings.CELERY_BROKER_URL, settings.ARTIFACTS_ROOT);"
        "from webapp.celery import app; app.conf.broker_url  # configuring makes the folders"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", ORCHARD_VAR_DIR=str(tmp_path))
    out = python_output(code, env)
    assert out == [
        "django.db.backends.sqlite3",
        "wal",
        "filesystem://",
        str(tmp_path / "artifacts"),
    ]
    assert (tmp_path / "broker" / "queue").is_dir()


def test_database_and_broker_urls_select_postgres_and_redis():
    code = (
        "from django.conf import settings;"
        "print(settings.DATABASES['default']['ENGINE'], settings.DATABASES['default']['NAME'],"
        " settings.CELERY_BROKER_URL)"
    )
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DATABASE_URL="postgres://u:p@db.internal:5432/orchard",
        CELERY_BROKER_URL="redis://cache.internal:6379/0",
    )
    out = python_output(code, env)
    assert out == ["django.db.backends.postgresql", "orchard", "redis://cache.internal:6379/0"]


def test_demo_accounts_are_refused_in_production(tmp_path):
    result = manage(
        "orchard_demo_users",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
        ORCHARD_VAR_DIR=str(tmp_path),
    )
    assert result.returncode != 0
    assert "development only" in result.stderr
