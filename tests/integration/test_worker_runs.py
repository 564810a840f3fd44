"""Runs executed by a real Celery worker subprocess on the configured database and broker."""

from __future__ import annotations

import json
import platform
import time

import pytest
from django.test import Client

from tests.support.countdown import expected_state
from tests.support.workers import wait_for
from training import services, uploads
from training.core.allocator import freed_memory_kept
from training.models import Artifact, Run, RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def status_of(run: Run) -> str:
    return Run.objects.get(pk=run.pk).status


def test_a_tokenizer_run_succeeds_in_a_worker(start_worker, people, shakespeare_slice):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from transformers import AutoTokenizer

    start_worker("tok")
    path = shakespeare_slice(150_000)
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("shakespeare.txt", path.read_bytes()),
        name="",
        user=people["tom"],
    )
    run = services.run_create(
        kind="tokenizer",
        config={"vocab_size": 600},
        inputs={"corpus": [corpus.pk]},
        user=people["tom"],
    )
    wait_for(lambda: status_of(run) in ("succeeded", "failed"), 120, "the tokenizer run")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error + run.traceback
    assert run.result["vocab_size"] == 600
    output = Artifact.objects.get(run=run)
    assert list(output.parents.all()) == [corpus]
    tokenizer = AutoTokenizer.from_pretrained(output.abspath())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 3


def test_cancel_stops_a_running_run_within_seconds(start_worker, people):
    start_worker("cancel")
    run = services.run_create(
        kind="countdown",
        config={"steps": 5000, "step_seconds": 0.05},
        inputs={},
        user=people["tom"],
    )
    wait_for(lambda: Run.objects.get(pk=run.pk).step >= 3, 60, "the run to start stepping")
    client = Client()
    client.force_login(people["tom"])
    asked = time.monotonic()
    assert client.post(f"/api/runs/{run.pk}/cancel/").status_code == 200
    wait_for(lambda: status_of(run) == RunStatus.CANCELLED, 15, "the cancel to take effect")
    assert time.monotonic() - asked < 10
    assert Run.objects.get(pk=run.pk).step < 5000


def test_duplicate_messages_never_run_a_run_twice(start_worker, people):
    """Two workers and four messages for one run (a broker redelivery, a sweeper resend):
    the database lease lets exactly one execution happen."""
    start_worker("dup1")
    start_worker("dup2")
    run = services.run_create(
        kind="countdown",
        config={"steps": 20, "step_seconds": 0.05},
        inputs={},
        user=people["tom"],
    )
    for _ in range(3):
        services.run_enqueue(run_id=run.pk)
    wait_for(lambda: status_of(run) == RunStatus.SUCCEEDED, 60, "the run to finish")
    run.refresh_from_db()
    assert run.attempts == 1
    ledger = (services.run_dir(run) / "work" / "ledger.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in ledger]
    assert steps == list(range(1, 21))
    assert run.result["state"] == expected_state(20)
    # Each worker process runs one run: it keeps the memory a step frees for the next step.
    log = (services.run_dir(run) / "run.log").read_text()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert "this process keeps freed memory for reuse" in log
    assert not freed_memory_kept()  # while this process, which ran no run, left it alone
