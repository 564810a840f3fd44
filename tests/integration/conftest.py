from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.workers import WorkerProcess, purge_broker


@pytest.fixture
def start_worker(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
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
