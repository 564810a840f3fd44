"""Worker lifecycle hooks: start the monitor thread when a worker is ready, stop it on shutdown."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

_monitor: Any = None


@worker_ready.connect
def _start_monitor(sender: Any = None, **kwargs: Any) -> None:
    global _monitor
    from training.workers import WorkerMonitor

    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    _monitor = WorkerMonitor(name=sender.hostname, queues=queues)
    _monitor.start()


@worker_shutdown.connect
def _stop_monitor(**kwargs: Any) -> None:
    if _monitor is not None:
        _monitor.stop()
