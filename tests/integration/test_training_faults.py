"""kill -9 of the worker in the middle of real tokenizer, pretraining and SFT runs.

Killed at a random point (seeded by the trial number: a random time after a random number of
checkpoints, or after the claim for the tokenizer, which has nothing to resume from), a run is
finished by another worker: it succeeds on its second attempt, resumes from the newest complete
checkpoint that was on disk when the worker died (so at most one checkpoint interval of steps is
redone) and ends with exactly the weights, or the tokenizer.json, of an uninterrupted run of the
same config in this process. Killed while a checkpoint is being written, the half-written
checkpoint is never resumed from: the run goes back to the one before it, the partial folder is
cleared away, and it still ends with the uninterrupted run's weights.

CI runs one trial each of the tokenizer and pretraining kills and of the SFT checkpoint-write
kill, on the embedded defaults only: resuming is the kinds' own business, and test_worker_faults
covers the run system on both database/broker pairs. ``make stress`` runs ORCHARD_KILL_TRIALS
trials of every kind in both tests, on both pairs.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.support.workers import (
    ONE_THREAD,
    WorkerProcess,
    lease_holder,
    one_torch_thread,
    wait_for,
)
from training import services
from training.models import Artifact, ArtifactKind, Run, RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FULL_SIZE = "ORCHARD_KILL_TRIALS" in os.environ
TRIALS = int(os.environ.get("ORCHARD_KILL_TRIALS", "1"))

PRETRAIN = {
    "max_steps": 60,
    "batch_size": 8,
    "context_length": 64,
    "checkpoint_every": 10,
    "eval_every": 30,
    "sample_every": 30,
    "warmup_steps": 4,
    "sample_max_new_tokens": 4,
    "seed": 11,
    "device": "cpu",
}
SFT = {
    "max_steps": 32,
    "batch_size": 4,
    "max_length": 64,
    "eval_every": 8,
    "sample_every": 8,
    "save_every": 4,
    "sample_prompts": ["Hi"],
    "sample_max_new_tokens": 6,
    "learning_rate": 0.003,
    "device": "cpu",
}
CHATS = [("Hi", "Hello!"), ("2+3?", "5"), ("Name?", "Pip."), ("Bye", "Goodbye!")]


@dataclass(frozen=True)
class Spec:
    kind: str
    config: dict[str, Any]
    output_file: str  # what is compared with the uninterrupted run
    checkpoint_every: int | None = None  # None: nothing to resume from, the run starts over

    @property
    def intervals(self) -> int:
        assert self.checkpoint_every is not None
        return self.config["max_steps"] // self.checkpoint_every


SPECS = {
    "tokenizer": Spec("tokenizer", {"vocab_size": 600}, "tokenizer.json"),
    "pretrain": Spec("pretrain", PRETRAIN, "model.safetensors", 10),
    "sft": Spec("sft", SFT, "model.safetensors", 4),
}


@dataclass(frozen=True)
class Reference:
    output: Any  # tensors by name, or the bytes of a file
    seconds: float  # the whole run
    interval_seconds: float  # between its last two checkpoints (no checkpoints: the run)


# The uninterrupted run of each kind, computed once per session: every trial's inputs have the
# same content, and the stress form runs many trials.
_REFERENCES: dict[str, Reference] = {}


EMBEDDED_DEFAULTS = settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and (
    settings.CELERY_BROKER_URL.startswith("filesystem")
)


def trials(kinds: tuple[str, ...], in_ci: tuple[str, ...]) -> list[Any]:
    """Every kind's trials. The CI form (no ORCHARD_KILL_TRIALS) is one trial of the ``in_ci``
    kinds, on the embedded defaults only; skipped here, a trial sets up no fixture."""
    return [
        pytest.param(kind, trial, id=f"{kind}-{trial}", marks=ci_form(kind, in_ci))
        for kind in kinds
        for trial in range(TRIALS)
    ]


def ci_form(kind: str, in_ci: tuple[str, ...]) -> list[Any]:
    if FULL_SIZE:
        return []
    if kind not in in_ci:
        return [pytest.mark.skip(reason=f"{kind}: under `make stress` only (CI time)")]
    if not EMBEDDED_DEFAULTS:
        return [pytest.mark.skip(reason="CI runs these on the embedded defaults only")]
    return []


# --- inputs and outputs -------------------------------------------------------------------------


def inputs_for(kind: str, request: pytest.FixtureRequest, user: Any) -> dict[str, list[int]]:
    if kind == "tokenizer":
        from django.core.files.uploadedfile import SimpleUploadedFile

        from training import uploads

        # 1 MB: enough for the reading and the merges to take a moment worth aiming at.
        text = request.getfixturevalue("shakespeare_slice")(1_000_000).read_bytes()
        corpus = uploads.corpus_upload(
            uploaded=SimpleUploadedFile("s.txt", text), name="shakespeare", user=user
        )
        return {"corpus": [corpus.pk]}
    if kind == "pretrain":
        corpus, tokenizer = request.getfixturevalue("corpus_and_tokenizer")
        return {"corpus": [corpus.pk], "tokenizer": [tokenizer.pk]}
    base = request.getfixturevalue("tiny_checkpoint")
    return {"base": [base.pk], "datasets": [chat_dataset(user).pk]}


def chat_dataset(user: Any) -> Artifact:
    """A dataset snapshot folder (train.jsonl, validation.jsonl) registered as an artifact."""
    folder = services.artifacts_root() / f"staging-chats-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    chats = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS * 3
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats[:10]))
    (folder / "validation.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats[10:]))
    return services.artifact_register_dir(
        source=folder,
        kind=ArtifactKind.DATASET,
        name="greetings",
        run=None,
        parents=[],
        user=user,
        meta={},
    )


def output_of(run: Run, spec: Spec) -> Any:
    path = Artifact.objects.get(run=run).abspath() / spec.output_file
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return path.read_bytes()


def assert_same_output(got: Any, want: Any) -> None:
    if isinstance(want, bytes):
        assert got == want, "the tokenizer differs from the uninterrupted run's"
        return
    import torch

    assert got.keys() == want.keys()
    differ = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differ, f"weights differ from the uninterrupted run's: {differ}"


def reference(spec: Spec, inputs: dict[str, list[int]], user: Any) -> Reference:
    """The uninterrupted run, executed in this process on one thread (as the workers are)."""
    if spec.kind not in _REFERENCES:
        # Its duration bounds the tokenizer's kill moment: imports stay out of it, as a worker
        # pays for its own on top. (Before the run exists: a queued run left waiting is sent
        # to the workers by their sweeper.)
        from transformers import AutoTokenizer  # noqa: F401

        # No message: a worker that is starting must not take the reference run.
        enqueue, services.run_enqueue = services.run_enqueue, lambda *, run_id: True
        try:
            run = services.run_create(kind=spec.kind, config=spec.config, inputs=inputs, user=user)
        finally:
            services.run_enqueue = enqueue
        began = time.monotonic()
        with one_torch_thread():
            outcome = services.run_execute(run_id=run.pk)
        seconds = time.monotonic() - began
        run.refresh_from_db()
        assert outcome == "succeeded", run.error
        interval = last_interval_seconds(checkpoints_of(run)) or seconds
        _REFERENCES[spec.kind] = Reference(output_of(run, spec), seconds, interval)
    return _REFERENCES[spec.kind]


# --- checkpoints on disk ------------------------------------------------------------------------

_CHECKPOINT_DIR = re.compile(r"^(step_\d{8}|checkpoint-\d+)$")  # pretrain's, the Trainer's


def checkpoints_of(run: Run) -> Path:
    return services.run_dir(run) / "work" / "checkpoints"


def newest_complete_step(root: Path, verify: bool = True) -> int | None:
    """The step of the newest checkpoint a resume may use: named as one, with a COMPLETE marker
    whose hashes match (a ``.tmp-`` folder may hold a marker just before its rename)."""
    from training.core.checkpoints import read_complete

    if not root.is_dir():
        return None
    steps = [
        ckpt.step
        for child in root.iterdir()
        if _CHECKPOINT_DIR.match(child.name) and (ckpt := read_complete(child, verify)) is not None
    ]
    return max(steps, default=None)


def last_interval_seconds(root: Path) -> float | None:
    """Time between the last two checkpoints written under ``root`` (None: fewer than two)."""
    markers = sorted(p.stat().st_mtime for p in root.glob("*/COMPLETE")) if root.is_dir() else []
    return markers[-1] - markers[-2] if len(markers) >= 2 else None


def partial_checkpoint(root: Path, kind: str, step: int) -> Path | None:
    """The checkpoint of ``step`` while it is being written: pretraining writes a ``.tmp-``
    folder and renames it; the Trainer writes ``checkpoint-N`` in place, complete once marked."""
    if kind == "pretrain":
        return next(root.glob(f".tmp-step_{step:08d}-*"), None)
    folder = root / f"checkpoint-{step}"
    return folder if folder.is_dir() and not (folder / "COMPLETE").exists() else None


# --- the trials ---------------------------------------------------------------------------------


def two_workers(start_worker: Any, name: str) -> list[WorkerProcess]:
    """Both start at once (while the reference trains); whichever takes the run is the victim,
    the other one the rescuer, already up."""
    return [start_worker(f"{name}-{side}", wait=False, **ONE_THREAD) for side in ("a", "b")]


def status_of(run: Run) -> str:
    return Run.objects.get(pk=run.pk).status


def finished(run: Run, workers: list[WorkerProcess], timeout: float = 240) -> Run:
    """The run once it ended on the rescuer. The workers are killed then: they have nothing
    left to do, and a warm shutdown costs seconds per test."""
    wait_for(
        lambda: status_of(run) in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED),
        timeout,
        f"{run.kind} run {run.pk} to finish on the rescuer",
    )
    for worker in workers:
        if worker.proc.poll() is None:
            worker.kill9()
    run.refresh_from_db()
    return run


def assert_still_running(run: Run, what: str) -> None:
    current = Run.objects.get(pk=run.pk)
    assert current.status == RunStatus.RUNNING and current.attempts == 1, (
        f"the run was {current.status} (attempt {current.attempts}) {what}: the trial's kill "
        "point is too late for this machine"
    )


def kill_at_random_point(
    run: Run, victim: WorkerProcess, spec: Spec, rng: random.Random, ref: Reference
) -> None:
    """Kill the victim at a random point of the first half of its training: a random time after
    a random number of checkpoints (none: after its first step), the time drawn from what a
    checkpoint interval took the reference run, so the kill lands inside the run on a fast
    machine as on a slow one. (The database learns the step up to half a second late; the
    checkpoint files tell at once.)"""
    if spec.checkpoint_every is None:
        # The victim imports transformers before it saves (the reference had it loaded), so
        # twice the reference's time still ends inside the run.
        time.sleep(rng.uniform(0, 2 * ref.seconds))
    else:
        every = spec.checkpoint_every
        reached = every * rng.randint(0, spec.intervals // 2 - 1)
        root = checkpoints_of(run)
        if reached:
            wait_for(lambda: (newest_complete_step(root, False) or 0) >= reached, 120, "it", 0.02)
        else:
            wait_for(lambda: Run.objects.get(pk=run.pk).step >= 1, 120, "the first step", 0.02)
        time.sleep(rng.uniform(0, ref.interval_seconds))
    assert_still_running(run, "before the kill")
    victim.kill9()


# In CI, SFT's resume is proven by the checkpoint-write trial below.
@pytest.mark.parametrize(("kind", "trial"), trials(tuple(SPECS), in_ci=("tokenizer", "pretrain")))
def test_a_run_killed_at_a_random_point_ends_as_if_uninterrupted(
    kind: str, trial: int, request: pytest.FixtureRequest, start_worker: Any, people: Any
) -> None:
    spec, rng, user = SPECS[kind], random.Random(f"{kind}-{trial}"), people["tom"]
    inputs = inputs_for(kind, request, user)
    workers = two_workers(start_worker, f"{kind}{trial}")
    ref = reference(spec, inputs, user)
    for worker in workers:
        worker.wait_ready()

    run = services.run_create(kind=kind, config=spec.config, inputs=inputs, user=user)
    victim = lease_holder(workers, run.pk)
    kill_at_random_point(run, victim, spec, rng, ref)
    newest_at_kill = newest_complete_step(checkpoints_of(run))
    step_at_kill = Run.objects.get(pk=run.pk).step  # flushed before the kill: a lower bound

    run = finished(run, workers)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.log_tail[-2000:]
    assert run.attempts == 2
    if spec.checkpoint_every is not None:
        resumed = run.result["resumed_from_step"]
        assert resumed == newest_at_kill, "resumed from another than the newest checkpoint"
        assert step_at_kill - (resumed or 0) <= spec.checkpoint_every
    assert_same_output(output_of(run, spec), ref.output)


# In CI, SFT: the Trainer writes its checkpoints in place, the riskier of the two.
@pytest.mark.parametrize(("kind", "trial"), trials(("pretrain", "sft"), in_ci=("sft",)))
def test_a_worker_killed_while_writing_a_checkpoint_resumes_from_the_one_before(
    kind: str, trial: int, request: pytest.FixtureRequest, start_worker: Any, people: Any
) -> None:
    """The victim's process group is frozen the moment a checkpoint folder is seen half
    written, then killed: a real kill at a moment the partial folder proves, without hooks."""
    spec, rng, user = SPECS[kind], random.Random(f"write-{kind}-{trial}"), people["tom"]
    every = spec.checkpoint_every
    assert every is not None
    inputs = inputs_for(kind, request, user)
    workers = two_workers(start_worker, f"write-{kind}{trial}")
    ref = reference(spec, inputs, user)
    for worker in workers:
        worker.wait_ready()

    run = services.run_create(kind=kind, config=spec.config, inputs=inputs, user=user)
    victim = lease_holder(workers, run.pk)
    root = checkpoints_of(run)
    partial = None
    # The write to crash is drawn at random; one too quick to catch lets the next one be tried.
    for step in range(every * rng.randint(1, 3), spec.config["max_steps"], every):
        partial = crash_during_write(run, victim, root, kind, step)
        if partial is not None:
            break
    assert partial is not None, "no checkpoint write was caught half done"
    newest_at_kill = newest_complete_step(root)
    assert newest_at_kill is None or newest_at_kill < step

    run = finished(run, workers)
    assert run.status == RunStatus.SUCCEEDED, run.error + run.log_tail[-2000:]
    assert run.attempts == 2
    assert run.result["resumed_from_step"] == newest_at_kill
    if kind == "sft":  # written in place: the rescuer deletes it, and later writes it anew
        assert f"deleting the incomplete checkpoint {partial.name}" in run.log_tail
    else:  # a uniquely named temporary folder, removed by the next save
        assert not partial.exists(), "the half-written checkpoint was left behind"
    assert_same_output(output_of(run, spec), ref.output)


def crash_during_write(
    run: Run, victim: WorkerProcess, root: Path, kind: str, step: int
) -> Path | None:
    """Watch for ``step``'s checkpoint being written; freeze the victim there and kill it if the
    folder is still partial once frozen (the partial folder, kept). None when the write finished
    first: the victim carries on."""
    complete = root / (f"step_{step:08d}" if kind == "pretrain" else f"checkpoint-{step}")
    deadline = time.monotonic() + 120
    while (found := partial_checkpoint(root, kind, step)) is None:
        if (complete / "COMPLETE").exists():
            return None  # missed: the whole write fell between two looks
        assert time.monotonic() < deadline, f"no checkpoint of step {step} was written"
        time.sleep(0.0005)
    victim.freeze()
    if partial_checkpoint(root, kind, step) != found:
        victim.thaw()
        return None
    victim.kill9()
    assert partial_checkpoint(root, kind, step) == found
    return found
