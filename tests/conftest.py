"""Shared fixtures: one named person per role, logged-in clients, corpora from ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django.test import Client

SHARED_DATA = Path(
    os.environ.get("ORCHARD_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)

# Two people for every role that owns objects, so "another user's object" can be tested.
# (Django is imported inside fixtures so that tests/core runs without it.)
PERSONAS = {
    "lena": "labeler",
    "leo": "labeler",
    "rita": "reviewer",
    "tom": "trainer",
    "tess": "trainer",
    "ada": "admin",
}


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    from webapp.models import User

    made = {}
    for name, role in PERSONAS.items():
        user = User.objects.create_user(name, f"{name}@example.org", "pw-" + name, role=role)
        if role == "admin":
            user.is_staff = user.is_superuser = True
            user.save()
        made[name] = user
    return made


@pytest.fixture
def client_for(people: dict[str, Any]) -> Callable[[str | None], Client]:
    from django.test import Client

    def make(name: str | None) -> Client:
        client = Client()
        if name is not None:
            client.force_login(people[name])
        return client

    return make


@pytest.fixture
def shakespeare_slice(tmp_path: Path) -> Callable[[int], Path]:
    """The first ``n`` bytes of tinyshakespeare (read from ../shared/data, never copied in)."""

    def make(n: int = 200_000, name: str = "shakespeare.txt") -> Path:
        source = SHARED_DATA / "pretrain" / "tinyshakespeare.txt"
        text = source.read_bytes()[:n].decode("utf-8", errors="ignore")
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.fixture
def start_worker(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start real worker subprocesses on the test database; all are stopped afterwards."""
    from tests.support.workers import WorkerProcess, purge_broker

    started: list[WorkerProcess] = []
    purge_broker()

    def start(name: str = "w1", wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(name, tmp_path, **env)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
