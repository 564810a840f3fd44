"""The run contract, exercised in-process: launch, claim, execute, cancel, retry, sweep."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.support.countdown import expected_state
from training import services
from training.kinds import ConfigInvalid
from training.models import Artifact, ArtifactKind, Run, RunMetric, RunRecord, RunStatus

pytestmark = pytest.mark.django_db


def launch(user, **config) -> Run:
    return services.run_create(kind="countdown", config=config, inputs={}, user=user)


def test_it_queues_a_valid_run_on_commit(people, django_capture_on_commit_callbacks, mocker=None):
    with django_capture_on_commit_callbacks() as callbacks:
        run = launch(people["tom"], steps=3)
    assert run.status == RunStatus.QUEUED
    assert run.config == {
        "steps": 3,
        "checkpoint_every": 5,
        "step_seconds": 0.02,
        "fail_at_step": 0,
    }
    assert len(callbacks) == 1  # exactly one enqueue, after commit


@pytest.mark.parametrize(
    ("kind", "config", "inputs", "field"),
    [
        ("countdown", {"steps": 0}, {}, "steps"),
        ("countdown", {"steps": "many"}, {}, "steps"),
        ("countdown", {"no_such_field": 1}, {}, "no_such_field"),
        ("countdown", [], {}, "config"),
        ("countdown", {}, {"corpus": [1]}, "inputs.corpus"),
        ("nope", {}, {}, "kind"),
        ("tokenizer", {}, {}, "inputs.corpus"),
        ("tokenizer", {}, {"corpus": [999999]}, "inputs.corpus"),
        ("tokenizer", {}, {"corpus": ["x"]}, "inputs.corpus"),
        ("tokenizer", {"vocab_size": 10}, {"corpus": []}, "vocab_size"),
    ],
)
def test_it_refuses_a_bad_launch_and_queues_nothing(
    people, django_capture_on_commit_callbacks, kind, config, inputs, field
):
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ConfigInvalid) as exc:
        services.run_create(kind=kind, config=config, inputs=inputs, user=people["tom"])
    assert field in exc.value.errors
    assert Run.objects.count() == 0
    assert callbacks == []


def test_it_lets_only_one_worker_claim_a_run(people):
    run = launch(people["tom"])
    assert services.run_claim(run_id=run.pk, owner="a") is not None
    assert services.run_claim(run_id=run.pk, owner="b") is None
    run.refresh_from_db()
    assert (run.status, run.lease_owner, run.attempts) == (RunStatus.RUNNING, "a", 1)


def test_it_lets_many_threads_race_and_exactly_one_wins(people, transactional_db):
    run = launch(people["tom"])
    winners = []

    def claim(owner: str) -> None:
        from django.db import connection

        if services.run_claim(run_id=run.pk, owner=owner) is not None:
            winners.append(owner)
        connection.close()

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_it_lets_another_worker_take_over_an_expired_lease(people):
    run = launch(people["tom"])
    services.run_claim(run_id=run.pk, owner="dead")
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.run_claim(run_id=run.pk, owner="alive") is not None
    run.refresh_from_db()
    assert (run.lease_owner, run.attempts) == ("alive", 2)


def test_it_fails_a_run_whose_worker_died_on_every_attempt(people):
    run = launch(people["tom"])
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        attempts=3,
        max_attempts=3,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert services.run_claim(run_id=run.pk, owner="x") is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "worker was lost" in run.error


def test_it_executes_a_run_to_success_with_metrics_and_an_output_artifact(people):
    run = launch(people["tom"], steps=12, checkpoint_every=4, step_seconds=0)
    assert services.run_execute(run_id=run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.result["state"] == expected_state(12)
    assert (run.progress, run.step, run.total_steps) == (1.0, 12, 12)
    assert RunMetric.objects.filter(run=run, name="state_mod_97").count() == 12
    records = RunRecord.objects.filter(run=run, name="checkpoint").order_by("step")
    assert [(r.step, r.payload["state"]) for r in records][-1] == (12, expected_state(12))
    output = Artifact.objects.get(run=run)
    assert output.kind == ArtifactKind.OUTPUT
    assert (output.abspath() / "result.json").is_file()
    assert output.path.startswith(f"output/{output.pk:06d}-{output.sha256[:12]}")
    assert (output.abspath() / "result.json").is_file()
    assert "attempt 1 of 3" in run.log_tail
    assert run.lease_expires_at is None


def test_it_records_a_failure_with_its_traceback(people):
    run = launch(people["tom"], steps=5, fail_at_step=3, step_seconds=0)
    assert services.run_execute(run_id=run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == "RuntimeError: injected failure at step 3"
    assert "Traceback" in run.traceback and "injected failure" in run.traceback
    assert not Artifact.objects.filter(run=run).exists()


def test_it_resumes_from_the_last_complete_checkpoint_on_retry(people):
    run = launch(people["tom"], steps=10, checkpoint_every=3, step_seconds=0, fail_at_step=8)
    services.run_execute(run_id=run.pk)
    Run.objects.filter(pk=run.pk).update(config={**run.config, "fail_at_step": 0})
    run.refresh_from_db()
    services.run_retry(run=run, user=people["tom"])
    assert services.run_execute(run_id=run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.result == {"state": expected_state(10), "resumed_from": 6}
    assert "resumed from step 6" in run.log_tail


def test_it_cancels_a_queued_run_at_once(people):
    run = launch(people["tom"])
    services.run_cancel(run=run, user=people["tom"])
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert services.run_execute(run_id=run.pk) == "not claimed"


def test_it_stops_a_running_run_when_cancel_is_requested(people, transactional_db):
    run = launch(people["tom"], steps=100_000, step_seconds=0.01)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(services.run_execute(run_id=run.pk)))
    worker.start()
    deadline = timezone.now() + timedelta(seconds=20)
    while Run.objects.get(pk=run.pk).step < 3 and timezone.now() < deadline:
        threading.Event().wait(0.05)
    services.run_cancel(run=Run.objects.get(pk=run.pk), user=people["tom"])
    worker.join(timeout=10)
    run.refresh_from_db()
    assert outcome == ["cancelled"]
    assert run.status == RunStatus.CANCELLED
    assert run.step < 100_000


def test_it_refuses_to_cancel_a_finished_run_and_to_retry_a_running_one(people):
    run = launch(people["tom"], steps=1, step_seconds=0)
    services.run_execute(run_id=run.pk)
    run.refresh_from_db()
    with pytest.raises(services.RunActionRefused):
        services.run_cancel(run=run, user=people["tom"])
    with pytest.raises(services.RunActionRefused):
        services.run_retry(run=run, user=people["tom"])


def test_a_worker_that_lost_its_lease_never_finishes_the_run(people):
    """The presumed-dead worker comes back: its writes are refused, the new owner's stand."""
    run = launch(people["tom"], steps=3, step_seconds=0)
    services.run_claim(run_id=run.pk, owner="old")
    Run.objects.filter(pk=run.pk).update(lease_owner="new")  # the sweeper gave it to another
    reporter = services.DbReporter(run.pk, "old", log_path=services.run_dir(run) / "x.log")
    reporter.progress(1, 3)
    reporter.flush()
    assert reporter.should_stop()
    run.refresh_from_db()
    assert (run.lease_owner, run.status, run.step) == ("new", RunStatus.RUNNING, 0)


def test_the_sweeper_requeues_runs_whose_worker_died(people, django_capture_on_commit_callbacks):
    run = launch(people["tom"])
    services.run_claim(run_id=run.pk, owner="dead")
    Run.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    report = services.runs_sweep()
    assert report.requeued == [run.pk]
    run.refresh_from_db()
    assert (run.status, run.lease_owner) == (RunStatus.QUEUED, "")
    assert services.run_execute(run_id=run.pk) == "succeeded"


def test_the_sweeper_cancels_a_flagged_run_whose_worker_died(people):
    run = launch(people["tom"])
    services.run_claim(run_id=run.pk, owner="dead")
    Run.objects.filter(pk=run.pk).update(
        cancel_requested=True, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.runs_sweep().cancelled == 1
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_the_sweeper_resends_queued_runs_whose_message_was_lost(people):
    run = launch(people["tom"])
    Run.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timedelta(hours=1))
    assert services.runs_sweep().reenqueued == [run.pk]
    assert services.runs_sweep().reenqueued == []  # not again until the interval passes


def test_the_sweeper_leaves_live_runs_alone(people):
    run = launch(people["tom"])
    services.run_claim(run_id=run.pk, owner="alive")
    report = services.runs_sweep()
    assert report.requeued == [] and report.failed == 0


def test_a_launch_while_the_broker_is_down_keeps_the_run_for_the_sweeper(people, monkeypatch):
    from kombu.exceptions import OperationalError

    from training.tasks import execute_run

    def broker_down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(execute_run, "apply_async", broker_down)
    run = launch(people["tom"])
    assert services.run_enqueue(run_id=run.pk) is False
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def test_nul_characters_from_a_stage_never_reach_the_database(people):
    """PostgreSQL refuses NUL in text and JSON; a model sampling raw bytes produces them."""
    run = launch(people["tom"])
    services.run_claim(run_id=run.pk, owner="w")
    reporter = services.DbReporter(run.pk, "w", log_path=services.run_dir(run) / "x.log")
    reporter.log("bad\x00line")
    reporter.record("samples", {"samples": [{"prompt": "p\x00", "text": "t\x00"}]}, 1)
    reporter.progress(1, 2, "phase\x00")
    reporter.flush()
    run.refresh_from_db()
    record = RunRecord.objects.get(run=run)
    assert "\x00" not in run.log_tail and "\x00" not in run.message
    assert record.payload == {"samples": [{"prompt": "p\ufffd", "text": "t\ufffd"}]}
