"""kill -9 of the worker mid-run: a new worker resumes from the last complete checkpoint, finishes
with the state an uninterrupted run reaches, and the two never execute the run at once.

CI runs one trial per database/broker pair; ``make stress`` runs ORCHARD_KILL_TRIALS of them.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from tests.support.countdown import expected_state
from tests.support.workers import wait_for
from training import services
from training.models import Run, RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TRIALS = int(os.environ.get("ORCHARD_KILL_TRIALS", "1"))
STEPS, EVERY = 40, 5


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_killed_worker_run_is_resumed_by_another(start_worker, people, trial):
    rng = random.Random(trial)
    kill_after = rng.randint(EVERY + 1, STEPS - 5)
    first = start_worker(f"victim{trial}")
    run = services.run_create(
        kind="countdown",
        config={"steps": STEPS, "checkpoint_every": EVERY, "step_seconds": 0.08},
        inputs={},
        user=people["tom"],
    )
    wait_for(lambda: Run.objects.get(pk=run.pk).step >= kill_after, 60, f"step {kill_after}")
    first.kill9()
    rescuer = start_worker(f"rescuer{trial}")
    wait_for(
        lambda: Run.objects.get(pk=run.pk).status in (RunStatus.SUCCEEDED, RunStatus.FAILED),
        90,
        "the resumed run to finish",
    )
    rescuer.kill9()  # nothing left for it to do, and a warm shutdown takes seconds
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2
    assert run.result["state"] == expected_state(STEPS)

    entries = [
        json.loads(line)
        for line in (services.run_dir(run) / "work" / "ledger.jsonl").read_text().splitlines()
    ]
    pids = list(dict.fromkeys(e["pid"] for e in entries))
    assert len(pids) == 2, "exactly one process before the kill and one after"
    before = [e for e in entries if e["pid"] == pids[0]]
    after = [e for e in entries if e["pid"] == pids[1]]
    resumed_at = after[0]["step"]
    assert resumed_at == run.result["resumed_from"] + 1
    assert max(e["step"] for e in before) - run.result["resumed_from"] <= EVERY
    assert after[-1]["step"] == STEPS
    assert max(e["t1"] for e in before) < min(e["t0"] for e in after), "never two at once"
