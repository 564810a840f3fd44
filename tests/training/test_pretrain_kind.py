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


def _memory_row(client, **params) -> tuple[str, float]:
    """(label, fp32 GiB) of the estimate panel's memory row."""
    import re

    body = client.get("/runs/new/pretrain/estimate/", params).content.decode()
    match = re.search(r"<dt>(Memory[^<]*)</dt><dd>([\d.]+) GiB", body)
    assert match, body
    return match.group(1), float(match.group(2))


def test_the_memory_estimate_is_per_gpu_when_training_on_several(client_for, corpus_and_tokenizer):
    _, tokenizer = corpus_and_tokenizer
    tom = client_for("tom")
    shape = {"config_preset": "small", "config_batch_size": 32, "input_tokenizer": tokenizer.pk}
    one_label, one = _memory_row(tom, **shape, config_processes=1)
    four_label, four = _memory_row(tom, **shape, config_processes=4)
    all_label, all_gpus = _memory_row(tom, **shape, config_processes=0)
    assert one_label.startswith("Memory (") and "4 processes" in four_label
    assert "visible GPU" in all_label and all_gpus == one  # the worker counts its GPUs later
    # Each of 4 processes keeps the whole model and optimizer but a quarter of the activations.
    assert 0 < four < one
    from training.core.model import get_preset, training_memory
    from training.core.token_view import load_tokenizer

    vocab = load_tokenizer(tokenizer.abspath()).get_vocab_size()
    shape_ns = get_preset("small").config_shape(vocab, 256)
    expected = training_memory(shape_ns, batch_size=8, context_length=256)["total"] / 2**30
    assert four == pytest.approx(expected, abs=0.005)


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
