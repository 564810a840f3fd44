"""Worker lifecycle hooks: start the monitor thread when a worker is ready, stop it on shutdown;
set up each worker process that executes runs."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

_monitor: Any = None


@worker_ready.connect
def _start_monitor(sender: Any = None, **kwargs: Any) -> None:
    global _monitor
    from training.workers import WorkerMonitor

    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    _monitor = WorkerMonitor(name=sender.hostname, queues=queues)
    _monitor.start()


@worker_process_init.connect
def _set_up_run_process(**kwargs: Any) -> None:
    """A pool process runs one run and exits (``--max-tasks-per-child=1``): it can keep the
    memory a training step frees for the next step (see training.core.allocator)."""
    from training.core.allocator import keep_freed_memory

    keep_freed_memory()


@worker_shutdown.connect
def _stop_monitor(**kwargs: Any) -> None:
    if _monitor is not None:
        _monitor.stop()
