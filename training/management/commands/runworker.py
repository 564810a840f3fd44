"""``manage.py runworker``: a Celery worker with the options every Orchard worker needs."""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand


def worker_argv(name: str, queues: str, pool: str, loglevel: str) -> list[str]:
    return [
        "worker",
        f"--queues={queues}",
        f"--hostname={name}@{socket.gethostname()}",
        f"--pool={pool}",
        # One run at a time per worker: two trainings on one machine fight over its cores/GPU.
        "--concurrency=1",
        # A fresh process per run returns all its memory (and never forks a CUDA context).
        "--max-tasks-per-child=1",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={loglevel}",
    ]


class Command(BaseCommand):
    help = "Start a worker for Orchard runs (training queue by default)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", default="worker", help="unique name of this worker")
        parser.add_argument("--queues", default="training,default", help="queues to consume")
        parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, *args: Any, **options: Any) -> None:
        from webapp.celery import app

        app.worker_main(
            worker_argv(options["name"], options["queues"], options["pool"], options["loglevel"])
        )
