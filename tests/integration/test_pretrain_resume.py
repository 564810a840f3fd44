"""kill -9 of the worker in the middle of pretraining: another worker resumes from the last
complete checkpoint and ends with the same weights as an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import pytest

from tests.support.workers import wait_for
from training import services
from training.models import Artifact, Run, RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = {
    "max_steps": 40,
    "batch_size": 4,
    "context_length": 64,
    "checkpoint_every": 10,
    "eval_every": 20,
    "sample_every": 20,
    "warmup_steps": 4,
    "sample_max_new_tokens": 4,
    "seed": 11,
}


def weights(artifact: Artifact) -> dict:
    from safetensors.torch import load_file

    return load_file(str(artifact.abspath() / "model.safetensors"))


def test_a_killed_pretraining_resumes_to_the_same_weights(
    start_worker, people, corpus_and_tokenizer
):
    import torch

    corpus, tokenizer = corpus_and_tokenizer
    inputs = {"corpus": [corpus.pk], "tokenizer": [tokenizer.pk]}

    victim = start_worker("pretrain-victim")
    run = services.run_create(kind="pretrain", config=CONFIG, inputs=inputs, user=people["tom"])
    wait_for(lambda: Run.objects.get(pk=run.pk).step >= 15, 120, "pretraining past step 15")
    victim.kill9()
    start_worker("pretrain-rescuer")
    wait_for(
        lambda: Run.objects.get(pk=run.pk).status in (RunStatus.SUCCEEDED, RunStatus.FAILED),
        180,
        "the resumed pretraining to finish",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempts == 2 and "resum" in run.log_tail.lower()

    reference = services.run_create(
        kind="pretrain", config=CONFIG, inputs=inputs, user=people["tom"]
    )
    services.run_execute(run_id=reference.pk)  # uninterrupted, in this process
    resumed = weights(Artifact.objects.get(run=run))
    straight = weights(Artifact.objects.get(run=reference))
    assert resumed.keys() == straight.keys()
    for name in resumed:
        assert torch.allclose(resumed[name], straight[name], atol=1e-6), name
