"""The reporter protocol: how a training stage reports progress and learns it should stop.

A stage never knows whether it runs in a Celery worker (reporter backed by the database) or in a
shell (reporter printing to stderr). It calls these methods as often as it likes; implementations
are responsible for rate-limiting their own writes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, runtime_checkable


class Cancelled(Exception):
    """Raised inside a stage when ``reporter.should_stop()`` turned true mid-step.

    Stages that can stop cleanly between steps simply return; this exception is for code paths
    (such as a tokenizer trainer pulling from our iterator) that can only be left by raising.
    """


@runtime_checkable
class Reporter(Protocol):
    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        """Record that ``step`` of ``total`` units of work are done."""

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Record metric values at a step (loss, throughput, ...)."""

    def log(self, line: str) -> None:
        """Append a human-readable line to the run's log."""

    def record(self, name: str, payload: dict[str, Any], step: int) -> None:
        """Keep a structured observation that is not a number: sample generations at a step,
        a batch of examples, an evaluation table. ``payload`` must be JSON-serialisable."""

    def should_stop(self) -> bool:
        """True once the run was cancelled (or its lease lost): stop at the next safe point."""


class ConsoleReporter:
    """Reporter for the shell: prints progress and metrics to stderr; never asks to stop."""

    def __init__(self, stream=None, min_interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last_progress = 0.0

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        now = time.monotonic()
        if now - self._last_progress < self.min_interval and step != total:
            return
        self._last_progress = now
        of = f"/{total}" if total else ""
        print(f"[progress] {step}{of} {message}".rstrip(), file=self.stream)

    def metrics(self, values: dict[str, float], step: int) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        print(f"[metrics] step={step} {shown}", file=self.stream)

    def log(self, line: str) -> None:
        print(line, file=self.stream)

    def record(self, name: str, payload: dict[str, Any], step: int) -> None:
        print(f"[{name}] step={step} {json.dumps(payload, ensure_ascii=False)}", file=self.stream)

    def should_stop(self) -> bool:
        return False


class RecordingReporter:
    """Reporter that keeps everything in memory; useful in tests and notebooks."""

    def __init__(self, stop_after_progress_calls: int | None = None) -> None:
        self.progress_calls: list[tuple[int, int | None, str]] = []
        self.metric_calls: list[tuple[dict[str, float], int]] = []
        self.lines: list[str] = []
        self.records: list[tuple[str, dict[str, Any], int]] = []
        self.stop_after_progress_calls = stop_after_progress_calls

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        self.progress_calls.append((step, total, message))

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.metric_calls.append((dict(values), step))

    def log(self, line: str) -> None:
        self.lines.append(line)

    def record(self, name: str, payload: dict[str, Any], step: int) -> None:
        self.records.append((name, payload, step))

    def should_stop(self) -> bool:
        limit = self.stop_after_progress_calls
        return limit is not None and len(self.progress_calls) >= limit
