"""``manage.py orchard_demo``: the whole pipeline, data to chat, as ordinary Orchard runs.

``make demo`` runs it with ``--wait-for-workers --keep-alive`` beside the web server and a worker
(``demo/Procfile``), so every run shows up in the UI while it trains. ``--in-process`` needs no
worker (tests, timing); ``--quick`` is the CI size; ``--data DIR`` reads a folder laid out like
``shared/data`` instead of generating data.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from demo.pipeline import DEFAULT, PROFILES, QUICK, DemoFailed, DemoPipeline, format_seconds


class Command(BaseCommand):
    help = (
        "Run the whole chain (corpus, tokenizer, pretraining, SFT, reward model, PPO, GRPO, "
        "evaluation) as Orchard runs and print the chat URL of the final checkpoint."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--data",
            type=Path,
            default=os.environ.get("ORCHARD_DEMO_DATA") or None,
            help="a folder laid out like shared/data (web/warc, pretrain, conversations, "
            "preference); without it the demo generates its own data",
        )
        parser.add_argument(
            "--quick", action="store_true", help="tiny sizes: seconds per stage (CI)"
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--in-process",
            dest="mode",
            action="store_const",
            const="in-process",
            help="execute every run in this process, one after the other (the default)",
        )
        mode.add_argument(
            "--wait-for-workers",
            dest="mode",
            action="store_const",
            const="workers",
            help="only launch the runs and wait while workers execute them (visible in the UI)",
        )
        parser.set_defaults(mode="in-process")
        parser.add_argument(
            "--timeout",
            type=float,
            default=3600.0,
            help="seconds the whole chain may take before the running stage is cancelled",
        )
        parser.add_argument(
            "--base-url",
            default=None,
            help="where the web server answers, for the links printed (default "
            "http://$HOST:$PORT, else http://127.0.0.1:8000; under honcho, whose PORT differs "
            "per process, pass it)",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed for the generated data")
        parser.add_argument(
            "--keep-alive",
            action="store_true",
            help="stay running when done (or failed), so that `make demo`'s web server and "
            "worker keep serving; Ctrl-C stops",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        profile = QUICK if options["quick"] else DEFAULT
        assert profile.name in PROFILES
        base_url = options["base_url"] or "http://{}:{}".format(
            os.environ.get("HOST") or "127.0.0.1", os.environ.get("PORT") or "8000"
        )
        # the filesystem broker's "no hostname" notice and library deprecations are noise here
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning)
        started = time.monotonic()
        failure = None
        try:
            pipeline = DemoPipeline(
                profile=profile,
                data_dir=options["data"],
                mode=options["mode"],
                timeout=options["timeout"],
                base_url=base_url,
                stdout=self.stdout,
                seed=options["seed"],
            )
            pipeline.run()
        except (DemoFailed, ValueError) as exc:
            failure = str(exc)
            self.stderr.write(f"demo stopped after {format_seconds(time.monotonic() - started)}:")
            self.stderr.write(f"  {failure}")
        if options["keep_alive"]:
            self.stdout.write(
                f"The web server and the worker keep running at {base_url}/ (log in as admin, "
                "password printed above). Ctrl-C stops everything."
            )
            self.stdout.flush()
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return
        if failure:
            raise CommandError("the demo did not finish")
