"""Redis faults under a working worker: runs are recovered, never lost and never doubled.

Each test starts a Redis server of its own on a free port, and both a real worker and this test
process use it as their broker. FLUSHALL while one run executes and another waits in the queue:
both finish, each executed exactly once. Redis killed (kill -9) and started again empty on the
same port in the middle of a run: that run finishes exactly once, and runs launched while Redis
was down and after it came back run too. "Exactly once" is the countdown kind's ledger: every
step executed by one process, once, and a single attempt.

The fault lands at a random step (and Redis stays down a random time), seeded by the trial
number. They run in the pass whose configured broker is Redis: once in the second pass of
``make test``, ORCHARD_KILL_TRIALS times under ``make stress``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.support.countdown import expected_state
from tests.support.workers import (
    RedisServer,
    broker_for_this_process,
    redis_server_path,
    wait_for,
)
from training import services
from training.models import Run, RunStatus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not settings.CELERY_BROKER_URL.startswith("redis"),
        reason="runs in the pass whose broker is Redis (make test-services, make stress)",
    ),
    pytest.mark.skipif(
        redis_server_path() is None,
        reason="redis-server is not installed: these tests start a Redis of their own",
    ),
]

STEP_SECONDS = 0.1
TRIALS = int(os.environ.get("ORCHARD_KILL_TRIALS", "1"))


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis, and this process's Celery app publishing to it."""
    server = RedisServer(redis_server_path() or "redis-server", tmp_path)
    server.start()
    try:
        with broker_for_this_process(server.url()):
            yield server
    finally:
        server.stop()


def launch(people: dict[str, Any], steps: int) -> Run:
    return services.run_create(
        kind="countdown",
        config={"steps": steps, "checkpoint_every": 5, "step_seconds": STEP_SECONDS},
        inputs={},
        user=people["tom"],
    )


def queue_length(server: RedisServer, queue: str = "training") -> int:
    import redis as redis_client

    return int(redis_client.Redis(port=server.port, socket_timeout=5).llen(queue))


def wait_succeeded(runs: list[Run], timeout: float) -> None:
    def all_done() -> bool:
        states = Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)
        return all(s in (RunStatus.SUCCEEDED, RunStatus.FAILED) for s in states)

    wait_for(all_done, timeout, "the runs to finish")


def assert_ran_exactly_once(run: Run, steps: int) -> None:
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 1, "executed more than once"
    assert run.result["state"] == expected_state(steps)
    ledger = (services.run_dir(run) / "work" / "ledger.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in ledger]
    assert [e["step"] for e in entries] == list(range(1, steps + 1)), "a step ran twice"
    assert len({e["pid"] for e in entries}) == 1


def reach_step(run: Run, step: int) -> None:
    wait_for(lambda: Run.objects.get(pk=run.pk).step >= step, 60, f"step {step}")


@pytest.mark.parametrize("trial", range(TRIALS))
def test_flushall_loses_neither_the_running_nor_the_queued_run(
    redis: RedisServer, start_worker: Any, people: dict[str, Any], trial: int
) -> None:
    rng = random.Random(f"flush-{trial}")
    worker = start_worker(f"flush{trial}", CELERY_BROKER_URL=redis.url())
    running = launch(people, steps=30)
    reach_step(running, rng.randint(1, 15))
    queued = launch(people, steps=10)  # the worker runs one run at a time: this one waits
    wait_for(lambda: queue_length(redis) >= 1, 10, "the second run's message in Redis")

    redis.flushall()  # the waiting message, and the record of the running one's, are gone
    assert queue_length(redis) == 0
    assert Run.objects.get(pk=queued.pk).status == RunStatus.QUEUED

    wait_succeeded([running, queued], 90)
    worker.kill9()  # nothing left for it to do, and a warm shutdown takes seconds
    assert_ran_exactly_once(running, 30)
    assert_ran_exactly_once(queued, 10)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_restarted_redis_loses_no_run(
    redis: RedisServer, start_worker: Any, people: dict[str, Any], trial: int
) -> None:
    rng = random.Random(f"restart-{trial}")
    worker = start_worker(f"restart{trial}", CELERY_BROKER_URL=redis.url())
    running = launch(people, steps=30)
    reach_step(running, rng.randint(1, 15))

    redis.kill9()
    during = launch(people, steps=5)  # its message cannot be sent: it stays queued
    time.sleep(rng.uniform(0.2, 2))
    redis.start()  # same port, empty
    after = launch(people, steps=5)

    wait_succeeded([running, during, after], 120)
    worker.kill9()
    assert_ran_exactly_once(running, 30)
    assert_ran_exactly_once(during, 5)
    assert_ran_exactly_once(after, 5)
