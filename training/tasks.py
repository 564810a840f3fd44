"""Celery tasks: thin. They take a run id and call a service; the Run row holds the truth."""

from __future__ import annotations

from celery import shared_task


@shared_task(
    name="training.tasks.execute_run",
    acks_late=True,  # a message is acknowledged only after the run ends...
    reject_on_worker_lost=True,  # ...and handed back if the worker process dies under it
    ignore_result=True,
)
def execute_run(run_id: int) -> str:
    from training.services import run_execute

    return run_execute(run_id=run_id)
