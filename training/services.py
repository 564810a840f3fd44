"""Every write about runs and artifacts: launch, claim, execute, cancel, retry, sweep, upload.

Views and tasks call these; they hold the rules of the run contract (README, "Runs"):
a run is queued only after its config validated; a worker executes it only after claiming it with
one conditional UPDATE; every later write is conditional on still holding that lease.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from training.core.allocator import freed_memory_kept
from training.core.checkpoints import hash_tree, tree_digest
from training.core.reporting import Cancelled
from training.evaluations import launch_follow_up
from training.kinds import ConfigInvalid, RunKind, get_kind
from training.models import Artifact, Run, RunStatus
from training.reporting import DbReporter, LeaseKeeper, lease_seconds, without_nul
from webapp.roles import Capability, user_can

logger = logging.getLogger(__name__)

TRACEBACK_TAIL_CHARS = 8000


class RunActionRefused(Exception):
    """A cancel or retry that does not apply to the run's current state."""


# --- paths ------------------------------------------------------------------------------------


def artifacts_root() -> Path:
    root = Path(settings.ARTIFACTS_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_dir(run: Run) -> Path:
    return artifacts_root() / "runs" / f"{run.pk:06d}-{run.uid.hex[:8]}"


# --- launching --------------------------------------------------------------------------------


def run_create(*, kind: str, config: Any, inputs: Any, user: Any) -> Run:
    """Validate config and inputs, create the run and enqueue it once the transaction commits.

    Raises ConfigInvalid (field -> messages) and queues nothing when anything is wrong.
    """
    run_kind = get_kind(kind) if isinstance(kind, str) else None
    if run_kind is None:
        raise ConfigInvalid({"kind": [f"unknown run kind {kind!r}"]})
    cfg = run_kind.validate_config(config if config is not None else {})
    artifacts = _validate_inputs(run_kind, inputs if inputs is not None else {})
    with transaction.atomic():
        run = Run.objects.create(
            kind=run_kind.name,
            config=cfg.model_dump(mode="json"),
            inputs={name: [a.pk for a in arts] for name, arts in artifacts.items()},
            created_by=user,
            max_attempts=settings.ORCHARD_RUN_MAX_ATTEMPTS,
            enqueued_at=timezone.now(),
        )
        run.input_artifacts.set([a for arts in artifacts.values() for a in arts])
        transaction.on_commit(lambda: run_enqueue(run_id=run.pk))
    return run


def _validate_inputs(kind: RunKind, inputs: Any) -> dict[str, list[Artifact]]:
    if not isinstance(inputs, dict):
        raise ConfigInvalid({"inputs": ["must be an object mapping input names to artifact ids"]})
    errors: dict[str, list[str]] = {}
    known = {spec.name for spec in kind.inputs}
    for name in inputs:
        if name not in known:
            errors[f"inputs.{name}"] = [f"{kind.name} runs take no input named {name!r}"]
    resolved: dict[str, list[Artifact]] = {}
    for spec in kind.inputs:
        ids = _as_id_list(inputs.get(spec.name))
        key = f"inputs.{spec.name}"
        if ids is None:
            errors[key] = ["must be an artifact id or a list of artifact ids"]
            continue
        if not ids and spec.required:
            errors[key] = [f"choose at least one {spec.artifact_kind} artifact"]
            continue
        if len(ids) > 1 and not spec.many:
            errors[key] = ["takes exactly one artifact"]
            continue
        found = {a.pk: a for a in Artifact.objects.filter(pk__in=ids, kind=spec.artifact_kind)}
        missing = [i for i in ids if i not in found]
        if missing:
            errors[key] = [
                f"no {spec.artifact_kind} artifact with id {', '.join(map(str, missing))}"
            ]
            continue
        resolved[spec.name] = [found[i] for i in dict.fromkeys(ids)]
    if errors:
        raise ConfigInvalid(errors)
    return resolved


def _as_id_list(value: Any) -> list[int] | None:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    ids = []
    for item in items:
        if isinstance(item, bool):
            return None
        try:
            ids.append(int(item))
        except (TypeError, ValueError):
            return None
    return ids


def run_enqueue(*, run_id: int) -> bool:
    """Send the run's message. A broker that is down loses nothing: the run stays queued in the
    database and the sweeper sends it again (ORCHARD_REQUEUE_QUEUED_AFTER_SECONDS)."""
    from kombu.exceptions import OperationalError

    from training.tasks import execute_run

    try:
        execute_run.apply_async((run_id,), queue="training", retry=False)
    except OperationalError:
        logger.warning("run %s: broker unreachable; the sweeper will send it later", run_id)
        return False
    return True


# --- claiming and executing -------------------------------------------------------------------


def new_lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_claim(*, run_id: int, owner: str) -> Run | None:
    """Take the run with one conditional UPDATE; None if it is not ours to run.

    Claimable: queued, or running under a lease that has expired (its worker died). A run that
    used up its attempts is failed instead, so a run that kills its worker cannot loop forever.
    """
    now = timezone.now()
    claimable = Q(status=RunStatus.QUEUED) | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    claimed = Run.objects.filter(
        claimable, pk=run_id, cancel_requested=False, attempts__lt=F("max_attempts")
    ).update(
        status=RunStatus.RUNNING,
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_seconds()),
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), Value(now)),
        updated_at=now,
        error="",
    )
    if claimed:
        return Run.objects.get(pk=run_id)
    _settle_unclaimable(run_id, now)
    return None


def _settle_unclaimable(run_id: int, now: Any) -> None:
    """Close out a queued or abandoned run that can never be claimed (cancelled, exhausted)."""
    open_run = Q(status=RunStatus.QUEUED) | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    _close_out(Run.objects.filter(open_run, pk=run_id), now)


def _close_out(runs: Any, now: Any) -> tuple[int, int]:
    """Cancel the flagged and fail the exhausted among ``runs``; returns (cancelled, failed)."""
    cancelled = runs.filter(cancel_requested=True).update(
        status=RunStatus.CANCELLED, finished_at=now, lease_owner="", message="cancelled"
    )
    failed = runs.filter(attempts__gte=F("max_attempts")).update(
        status=RunStatus.FAILED,
        finished_at=now,
        lease_owner="",
        error="gave up: its worker was lost on every attempt",
    )
    return cancelled, failed


def run_execute(*, run_id: int, owner: str | None = None) -> str:
    """Claim the run and execute it to the end. Returns what happened, for the worker log."""
    owner = owner or new_lease_owner()
    run = run_claim(run_id=run_id, owner=owner)
    if run is None:
        return "not claimed"
    directory = run_dir(run)
    reporter = DbReporter(run.pk, owner, log_path=directory / "run.log", initial_log=run.log_tail)
    keeper = LeaseKeeper(run.pk, owner, reporter.lease_lost)
    keeper.start()
    reporter.log(f"attempt {run.attempts} of {run.max_attempts} on {owner}")
    if freed_memory_kept():
        reporter.log("this process keeps freed memory for reuse (glibc malloc without mmap)")
    try:
        outcome = _execute_claimed(run, directory, reporter)
    finally:
        keeper.stop()
        reporter.close()
    return outcome


def _execute_claimed(run: Run, directory: Path, reporter: DbReporter) -> str:
    try:
        kind = get_kind(run.kind)
        if kind is None:
            raise ConfigInvalid({"kind": [f"unknown run kind {run.kind!r}"]})
        cfg = kind.validate_config(run.config)
        inputs = _input_paths(run, kind)
        out_dir = directory / "output"
        shutil.rmtree(out_dir, ignore_errors=True)  # outputs are rebuilt; work/ holds resume state
        out_dir.mkdir(parents=True)
        result = kind.entry()(cfg, inputs, out_dir, reporter, work_dir=directory / "work")
    except Cancelled:
        return _finish_stopped(run, reporter)
    except Exception as exc:  # the run fails loudly; the worker lives on
        if reporter.lease_lost.is_set():
            return "lease lost"
        reporter.log(f"failed: {exc!r}")
        reporter.flush()
        _finish(run, reporter, RunStatus.FAILED, error=_describe(exc), tb=traceback.format_exc())
        return "failed"
    if reporter.should_stop():
        return _finish_stopped(run, reporter)
    reporter.flush()
    with transaction.atomic():
        if kind.output_kind:
            artifact_register_dir(
                source=out_dir,
                kind=kind.output_kind,
                name=f"{kind.label} from run #{run.pk}",
                run=run,
                parents=list(run.input_artifacts.all()),
                user=run.created_by,
                meta={"stage": kind.name, "config": run.config, **_scalars(result or {})},
            )
        _finish(run, reporter, RunStatus.SUCCEEDED, result=result or {})
    launch_follow_up(run)
    return "succeeded"


def _scalars(result: dict) -> dict:
    """The plain numbers and strings of a result (parameters, val_loss...), kept on the artifact
    so lists of checkpoints can show them without opening files."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool))}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _finish_stopped(run: Run, reporter: DbReporter) -> str:
    if reporter.lease_lost.is_set():
        return "lease lost"  # another worker owns the run now: leave it alone
    reporter.log("cancelled")
    reporter.flush()
    _finish(run, reporter, RunStatus.CANCELLED)
    return "cancelled"


def _finish(
    run: Run,
    reporter: DbReporter,
    status: str,
    *,
    error: str = "",
    tb: str = "",
    result: dict | None = None,
) -> None:
    fields: dict[str, Any] = {
        "status": status,
        "finished_at": timezone.now(),
        "lease_expires_at": None,
        "error": without_nul(error),
        "traceback": without_nul(tb[-TRACEBACK_TAIL_CHARS:]),
        "message": status,
    }
    if result is not None:
        fields["result"] = without_nul(result)
    if status == RunStatus.SUCCEEDED:
        fields["progress"] = 1.0
    updated = Run.objects.filter(
        pk=run.pk, lease_owner=reporter.owner, status=RunStatus.RUNNING
    ).update(**fields)
    if not updated:
        reporter.lease_lost.set()
        raise RuntimeError("lease lost before the run could be finished")


def _input_paths(run: Run, kind: RunKind) -> dict[str, list[Path]]:
    paths: dict[str, list[Path]] = {}
    for spec in kind.inputs:
        ids = run.inputs.get(spec.name, [])
        by_id = {a.pk: a for a in Artifact.objects.filter(pk__in=ids)}
        paths[spec.name] = [artifact_input_path(by_id[i]) for i in ids]
    return paths


def artifact_input_path(artifact: Artifact) -> Path:
    """A stored data file (an upload) is addressed by the file itself; anything else (a corpus
    version, a tokenizer, a checkpoint) by its folder."""
    path = artifact.abspath()
    entries = list(path.iterdir()) if path.is_dir() else []
    if len(entries) == 1 and entries[0].is_file():
        return entries[0]
    return path


# --- cancel, retry ----------------------------------------------------------------------------


def user_may_act_on(user: Any, run: Run) -> bool:
    return run.created_by_id == user.pk or user_can(user, Capability.MANAGE_ALL)


def run_cancel(*, run: Run, user: Any) -> Run:
    """Queued: cancelled at once. Running: flagged; the worker stops at its next check."""
    now = timezone.now()
    if Run.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, cancel_requested=True, finished_at=now, message="cancelled"
    ):
        run.refresh_from_db()
        return run
    if not Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(cancel_requested=True):
        run.refresh_from_db()
        raise RunActionRefused(f"run #{run.pk} is already {run.status}")
    run.refresh_from_db()
    return run


def run_retry(*, run: Run, user: Any) -> Run:
    """Queue a failed or cancelled run again; it resumes from its last complete checkpoint."""
    now = timezone.now()
    with transaction.atomic():
        updated = Run.objects.filter(
            pk=run.pk, status__in=[RunStatus.FAILED, RunStatus.CANCELLED]
        ).update(
            status=RunStatus.QUEUED,
            cancel_requested=False,
            attempts=0,
            error="",
            traceback="",
            finished_at=None,
            lease_owner="",
            lease_expires_at=None,
            enqueued_at=now,
            message=f"retry requested by {user.get_username()}",
        )
        if not updated:
            run.refresh_from_db()
            raise RunActionRefused(f"only failed or cancelled runs can be retried ({run.status})")
        transaction.on_commit(lambda: run_enqueue(run_id=run.pk))
    run.refresh_from_db()
    return run


# --- the sweeper ------------------------------------------------------------------------------


@dataclass
class SweepReport:
    requeued: list[int]
    reenqueued: list[int]
    failed: int
    cancelled: int


def runs_sweep(*, requeue_queued_after: float | None = None) -> SweepReport:
    """Recover runs whose worker died (lease expired) and queued runs whose message was lost.

    Safe to run from every worker at once: each change is a conditional UPDATE, and a duplicate
    message only ever makes a second worker find the run already claimed.
    """
    now = timezone.now()
    expired = Run.objects.filter(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    cancelled, failed = _close_out(expired, now)
    requeued = []
    for run_id in expired.values_list("pk", flat=True):
        if expired.filter(pk=run_id).update(
            status=RunStatus.QUEUED,
            lease_owner="",
            lease_expires_at=None,
            enqueued_at=now,
            message="re-queued: its worker stopped answering",
        ):
            requeued.append(run_id)
    after = settings.ORCHARD_REQUEUE_QUEUED_AFTER_SECONDS
    if requeue_queued_after is not None:
        after = requeue_queued_after
    stale = Run.objects.filter(
        status=RunStatus.QUEUED, enqueued_at__lt=now - timedelta(seconds=after)
    )
    reenqueued = []
    for run_id in stale.values_list("pk", flat=True):
        if stale.filter(pk=run_id).update(enqueued_at=now):
            reenqueued.append(run_id)
    for run_id in requeued + reenqueued:
        run_enqueue(run_id=run_id)
    if requeued or reenqueued or failed or cancelled:
        logger.info(
            "sweep: requeued %s, re-enqueued %s, failed %d, cancelled %d",
            requeued,
            reenqueued,
            failed,
            cancelled,
        )
    return SweepReport(requeued=requeued, reenqueued=reenqueued, failed=failed, cancelled=cancelled)


# --- artifacts --------------------------------------------------------------------------------


def artifact_register_dir(
    *,
    source: Path,
    kind: str,
    name: str,
    run: Run | None,
    parents: list[Artifact],
    user: Any,
    meta: dict | None = None,
) -> Artifact:
    """Move a finished folder into ``<root>/<kind>/<id>-<hash>/`` and record it."""
    digest = tree_digest(source)
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    with transaction.atomic():
        artifact = Artifact.objects.create(
            kind=kind,
            name=name[:200],
            path="",
            sha256=digest,
            size_bytes=size,
            meta={**(meta or {}), "files": hash_tree(source)},
            run=run,
            created_by=user,
        )
        artifact.parents.set(parents)
        relative = f"{kind}/{artifact.pk:06d}-{digest[:12]}"
        if (artifacts_root() / relative).exists():  # left by an earlier database: never adopt it
            relative += f"-{uuid.uuid4().hex[:6]}"
        target = artifacts_root() / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)
        artifact.path = relative
        artifact.save(update_fields=["path"])
    return artifact
