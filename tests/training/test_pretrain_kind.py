"""The pretrain run kind in-process: launch estimate, run, checkpoint, playground."""

from __future__ import annotations

import pytest

from training import services
from training.models import Artifact, Run, RunRecord

pytestmark = pytest.mark.django_db


def test_the_launch_page_estimates_size_compute_and_memory(client_for, corpus_and_tokenizer):
    corpus, tokenizer = corpus_and_tokenizer
    tom = client_for("tom")
    page = tom.get(f"/runs/new/pretrain/?input_tokenizer={tokenizer.pk}&input_corpus={corpus.pk}")
    body = page.content.decode()
    assert "FLOPs per token" in body and "GiB" in body and "per parameter" in body
    assert "passes over it" in body  # corpus size known from the upload and the tokenizer
    partial = tom.get(
        "/runs/new/pretrain/estimate/", {"config_preset": "mini", "input_tokenizer": tokenizer.pk}
    )
    assert "<html" not in partial.content.decode() and "Parameters" in partial.content.decode()
    assert "choose a tokenizer" in tom.get("/runs/new/pretrain/estimate/").content.decode()


def test_a_pretrain_run_produces_a_checkpoint_with_lineage_and_samples(
    client_for, people, corpus_and_tokenizer
):
    corpus, tokenizer = corpus_and_tokenizer
    run = services.run_create(
        kind="pretrain",
        config={
            "max_steps": 12,
            "batch_size": 4,
            "context_length": 64,
            "eval_every": 6,
            "sample_every": 6,
            "checkpoint_every": 6,
            "warmup_steps": 2,
            "sample_max_new_tokens": 8,
        },
        inputs={"corpus": [corpus.pk], "tokenizer": [tokenizer.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=run.pk) == "succeeded", Run.objects.get(pk=run.pk).error
    run.refresh_from_db()
    checkpoint = Artifact.objects.get(run=run)
    assert checkpoint.kind == "checkpoint" and checkpoint.meta["stage"] == "pretrain"
    assert checkpoint.meta["parameters"] > 0
    assert set(checkpoint.parents.all()) == {corpus, tokenizer}
    assert RunRecord.objects.filter(run=run, name="samples").exists()
    assert run.metrics.filter(name="val_loss").exists()
    tom = client_for("tom")
    page = tom.get(f"/runs/{run.pk}/").content.decode()
    assert "Samples from fixed prompts" in page and "Validation loss" in page
    assert f"Corpus #{corpus.pk}</a> → " in tom.get("/checkpoints/").content.decode()
    sampled = tom.post(
        "/playground/",
        {
            "checkpoint": checkpoint.pk,
            "prompt": "ROMEO:",
            "temperature": "1",
            "top_k": "0",
            "top_p": "1",
            "max_new_tokens": "5",
            "seed": "1",
            "n": "1",
        },
    )
    assert sampled.status_code == 200 and len(sampled.context["samples"]) == 1


def test_a_context_longer_than_the_preset_is_refused_at_launch(people, corpus_and_tokenizer):
    from training.kinds import ConfigInvalid

    corpus, tokenizer = corpus_and_tokenizer
    with pytest.raises(ConfigInvalid):
        services.run_create(
            kind="pretrain",
            config={"context_length": 10**7},
            inputs={"corpus": [corpus.pk], "tokenizer": [tokenizer.pk]},
            user=people["tom"],
        )
    assert not Run.objects.filter(kind="pretrain").exists()
