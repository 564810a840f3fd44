"""The sft and merge run kinds in-process: labeled conversations → snapshot → fine-tuned
checkpoint → compare with the base → chat in the playground; LoRA adapters served on their base."""

from __future__ import annotations

from typing import Any

import pytest

from labeling import data
from labeling import services as labeling
from training import services
from training.models import Artifact, Run, RunRecord

pytestmark = pytest.mark.django_db

# Short: the tiny test model's context window is 64 tokens.
PAIRS = [("Hi", "Hello!"), ("2+3?", "5"), ("Name?", "Pip."), ("Bye", "Goodbye!")]
SFT = {
    "max_steps": 8,
    "batch_size": 4,
    "max_length": 64,
    "eval_every": 4,
    "sample_every": 4,
    "save_every": 4,
    "sample_prompts": ["Hi"],
    "sample_max_new_tokens": 6,
    "learning_rate": 0.003,
}


@pytest.fixture
def snapshot(people: dict[str, Any]) -> Any:
    project = labeling.project_create(user=people["tom"], name="greetings")
    for i in range(3):
        for user, reply in PAIRS:
            labeling.conversation_create(
                project=project,
                user=people["lena" if i % 2 else "leo"],
                messages=[
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": reply},
                ],
                status="approved",
            )
    return data.snapshot_create(project=project, user=people["tom"], name="greetings v1")


def launch(people: dict, base: Any, snapshot: Any, **config: Any) -> Run:
    run = services.run_create(
        kind="sft",
        config={**SFT, **config},
        inputs={"base": [base.pk], "datasets": [snapshot.artifact.pk]},
        user=people["tom"],
    )
    outcome = services.run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert outcome == "succeeded", run.error
    return run


def test_sft_run_from_a_labeling_snapshot(client_for, people, tiny_checkpoint, snapshot) -> None:
    tom = client_for("tom")
    launch_page = tom.get(f"/runs/new/sft/?input_datasets={snapshot.artifact.pk}").content.decode()
    assert "Dataset snapshots" in launch_page and "greetings v1" in launch_page
    run = launch(people, tiny_checkpoint, snapshot, method="full")
    tuned = Artifact.objects.get(run=run)
    assert tuned.kind == "checkpoint" and tuned.meta["stage"] == "sft"
    assert set(tuned.parents.all()) == {tiny_checkpoint, snapshot.artifact}
    assert run.result["train_loss_last"] < run.result["train_loss_first"]
    assert 0 <= run.result["stop_rate"] <= 1
    assert run.metrics.filter(name="val/loss").exists()
    assert RunRecord.objects.filter(run=run, name="samples").exists()
    page = tom.get(f"/runs/{run.pk}/").content.decode()
    assert "Replies that end their turn" in page and "Compare with its base" in page
    assert "Samples from fixed prompts" in page

    # Before and after: ?a= preselects the tuned checkpoint and its base.
    form = tom.get(f"/checkpoints/compare/?a={tuned.pk}").content.decode()
    assert f'value="{tiny_checkpoint.pk}" selected' in form
    compared = tom.post(
        "/checkpoints/compare/",
        {
            "a": tuned.pk,
            "b": tiny_checkpoint.pk,
            "prompts": "Hi\n2+3?",
            "temperature": 0,
            "seed": 0,
            "max_new_tokens": 6,
        },
    )
    assert compared.status_code == 200, compared.content.decode()[-500:]
    body = compared.content.decode()
    assert body.count("ended their turn") == 2 and "2+3?" in body

    # The playground's chat mode sends the prompt as a user turn through the chat template.
    chat = tom.post(
        "/playground/",
        {
            "checkpoint": tuned.pk,
            "prompt": "Hi",
            "chat": "on",
            "temperature": 0,
            "top_k": 0,
            "top_p": 1,
            "n": 1,
            "max_new_tokens": 4,
        },
    )
    assert chat.status_code == 200


def test_lora_adapter_is_served_on_its_base_and_merges(
    client_for, people, tiny_checkpoint, snapshot
):
    run = launch(people, tiny_checkpoint, snapshot, method="lora", merge_adapter=False)
    adapter = Artifact.objects.get(run=run)
    assert (adapter.abspath() / "adapter_config.json").is_file()
    assert run.result["adapter"] is True
    assert run.result["trainable_params"] < run.result["total_params"]
    tom = client_for("tom")
    assert "Merge the adapter into its base" in tom.get(f"/runs/{run.pk}/").content.decode()
    sampled = tom.post(
        "/playground/",
        {"checkpoint": adapter.pk, "prompt": "Hi", "temperature": 0, "top_k": 0, "top_p": 1,
         "n": 1, "max_new_tokens": 4},
    )  # fmt: skip
    assert sampled.status_code == 200, sampled.content.decode()[-400:]

    merge = services.run_create(
        kind="merge",
        config={},
        inputs={"base": [tiny_checkpoint.pk], "adapter": [adapter.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=merge.pk) == "succeeded"
    merged = Artifact.objects.get(run=merge)
    assert (merged.abspath() / "model.safetensors").is_file()
    assert set(merged.parents.all()) == {tiny_checkpoint, adapter}

    from training.core.generate import SamplingParams
    from training.inference import adapter_base_path, engine_cache

    assert adapter_base_path(adapter) == tiny_checkpoint.abspath()
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    served = engine_cache().get(adapter, adapter_base_path(adapter))
    on_base = served.generate(["<|im_start|>user\nHi"], greedy)
    folded = engine_cache().get(merged).generate(["<|im_start|>user\nHi"], greedy)
    assert on_base[0].token_ids == folded[0].token_ids


def test_too_long_conversations_fail_with_a_clear_message(people, tiny_checkpoint) -> None:
    project = labeling.project_create(user=people["tom"], name="long")
    long_reply = " ".join(["apples"] * 200)
    labeling.conversation_create(
        project=project,
        user=people["lena"],
        messages=[
            {"role": "user", "content": "Tell me"},
            {"role": "assistant", "content": long_reply},
        ],
        status="approved",
    )
    long_snapshot = data.snapshot_create(
        project=project, user=people["tom"], name="long", validation_fraction=0
    )
    run = services.run_create(
        kind="sft",
        config={**SFT, "too_long": "error"},
        inputs={"base": [tiny_checkpoint.pk], "datasets": [long_snapshot.artifact.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=run.pk) == "failed"
    run.refresh_from_db()
    assert "max_length" in run.error and "longer" in run.error
