"""Every training run is followed by an evaluation of its checkpoint: the inputs it gets per
stage, the figures it shows on the run page and the report card, and the switch that turns it
off. Multiple-choice sets arrive through the problem bank's import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling.models import Problem
from tests.core.test_ppo import build_reward_model
from tests.training.test_rl_kinds import register
from tests.training.test_sft_kind import launch, snapshot  # noqa: F401 (a fixture)
from training import evaluations, services
from training.models import Artifact, Run, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def auto_evaluate(settings: Any) -> None:
    settings.ORCHARD_AUTO_EVALUATE = True


def reward_model(tmp_path: Path, tiny_model_dir: Path, people: dict) -> Artifact:
    """A reward model made by a (recorded) reward run, as the newest judge of replies."""
    run = Run.objects.create(
        kind="reward", status=RunStatus.SUCCEEDED, created_by=people["tom"], config={}
    )
    folder = build_reward_model(tmp_path / "rm", tiny_model_dir, 1.0)
    artifact = register(folder, "checkpoint", "rm", people["tom"], stage="reward")
    Artifact.objects.filter(pk=artifact.pk).update(run=run)
    return Artifact.objects.get(pk=artifact.pk)


def test_an_sft_run_is_followed_by_its_evaluation(
    auto_evaluate, client_for, people, tiny_checkpoint, request, tmp_path, tiny_model_dir
) -> None:
    dataset = request.getfixturevalue("snapshot")  # test_sft_kind's labeled conversations
    judge = reward_model(tmp_path, tiny_model_dir, people)
    run = launch(people, tiny_checkpoint, dataset, method="full")
    tuned = Artifact.objects.get(run=run)
    evaluation = Run.objects.get(kind="evaluate")
    assert evaluation.status == RunStatus.QUEUED and evaluation.created_by == people["tom"]
    given = {name: ids for name, ids in evaluation.inputs.items() if ids}
    assert given == {
        "checkpoints": [tuned.pk],
        "conversations": [dataset.artifact.pk],
        "judge": [judge.pk],
        "baseline": [tiny_checkpoint.pk],
    }
    assert services.run_execute(run_id=evaluation.pk) == "succeeded"
    evaluation.refresh_from_db()
    row = evaluation.result["checkpoints"][0]
    assert row["sft_loss"] > 0 and 0 <= row["stop_rate"] <= 1 and 0 <= row["win_rate"] <= 1
    assert not Run.objects.filter(kind="evaluate").exclude(pk=evaluation.pk).exists()

    tom = client_for("tom")
    page = tom.get(f"/runs/{run.pk}/").content.decode()
    assert f'href="/runs/{evaluation.pk}/"' in page and "Evaluations" in page
    table = tom.get(f"/runs/{evaluation.pk}/").content.decode()
    assert "Held-out SFT loss" in table and "Win rate vs baseline" in table
    assert "What the judge compared" in table
    card = tom.get(f"/checkpoints/{tuned.pk}/report/").content.decode()
    assert "Win rate vs baseline" in card and f"run #{evaluation.pk}" in card
    markdown = tom.get(f"/checkpoints/{tuned.pk}/report.md").content.decode()
    assert f"Evaluate run #{evaluation.pk}: " in markdown and "Held-out SFT loss" in markdown


def make_run(kind: str, people: dict, inputs: dict, config: dict | None = None) -> Run:
    return Run.objects.create(
        kind=kind,
        status=RunStatus.SUCCEEDED,
        created_by=people["tom"],
        config=config or {},
        inputs=inputs,
    )


def output_of(run: Run, people: dict) -> Artifact:
    return Artifact.objects.create(
        kind="checkpoint", name=f"{run.kind} out", path="", run=run, created_by=people["tom"]
    )


def test_each_stage_is_evaluated_on_its_own_held_out_data(people) -> None:
    plan = evaluations.follow_up_inputs
    pretrain = make_run(
        "pretrain", people, {"corpus": [11], "tokenizer": [12]}, {"val_fraction": 0.1}
    )
    out = output_of(pretrain, people)
    assert plan(pretrain, out) == (
        {"checkpoints": [out.pk], "text": [11]},
        {"text_hold_out_every": 10},
    )
    nothing_held_out = make_run("pretrain", people, {"corpus": [11]}, {"val_fraction": 0})
    assert plan(nothing_held_out, output_of(nothing_held_out, people)) is None

    # Without any reward model, GRPO is still measured on its problems (no win rate).
    grpo = make_run("grpo", people, {"base": [3], "problems": [7]})
    out = output_of(grpo, people)
    assert plan(grpo, out) == ({"checkpoints": [out.pk], "problems": [7]}, {})

    reward = make_run("reward", people, {"base": [1], "datasets": [21, 22]})
    out = output_of(reward, people)
    assert plan(reward, out) == ({"checkpoints": [out.pk], "preferences": [21, 22]}, {})

    # PPO is judged by the independent monitor when it has one: the reward model it was
    # optimised against is the one its policy may have learned to game.
    ppo = make_run("ppo", people, {"policy": [3], "reward": [4], "monitor": [5], "prompts": [6]})
    out = output_of(ppo, people)
    assert plan(ppo, out) == (
        {"checkpoints": [out.pk], "prompts": [6], "judge": [5], "baseline": [3]},
        {},
    )
    # GRPO's win rate is judged by the newest reward model there is (the reward run's above).
    grpo = make_run("grpo", people, {"base": [3], "problems": [7]})
    out = output_of(grpo, people)
    judge = Artifact.objects.get(run=reward).pk
    assert plan(grpo, out) == (
        {"checkpoints": [out.pk], "problems": [7], "judge": [judge], "baseline": [3]},
        {},
    )

    evaluate = make_run("evaluate", people, {"checkpoints": [3], "problems": [7]})
    assert evaluations.launch_follow_up(evaluate) is None  # evaluations are not evaluated


def test_the_judge_is_a_reward_model_of_the_same_family_when_there_is_one(people) -> None:
    """Two teams' lines of models: a GRPO checkpoint of line A is judged by line A's reward
    model, though line B's is newer; with no relative, the newest reward model judges."""

    def checkpoint(name: str, *parents: Artifact, kind: str = "checkpoint") -> Artifact:
        artifact = Artifact.objects.create(kind=kind, name=name, path="", created_by=people["tom"])
        artifact.parents.set(parents)
        return artifact

    def reward_model(base: Artifact) -> Artifact:
        run = make_run("reward", people, {"base": [base.pk], "datasets": [21]})
        artifact = output_of(run, people)
        artifact.parents.set([base])
        return artifact

    tokenizer_a = checkpoint("tokenizer a", kind="tokenizer")
    base_a = checkpoint("pretrained a", tokenizer_a)
    sft_a = checkpoint("sft a", base_a)
    judge_a = reward_model(sft_a)
    base_b = checkpoint("pretrained b", checkpoint("tokenizer b", kind="tokenizer"))
    judge_b = reward_model(base_b)  # the newest reward model of all

    grpo = make_run("grpo", people, {"base": [sft_a.pk], "problems": [7]})
    out = output_of(grpo, people)
    out.parents.set([sft_a])
    inputs, _config = evaluations.follow_up_inputs(grpo, out)
    assert inputs["judge"] == [judge_a.pk]

    stranger = output_of(make_run("sft", people, {"base": [99]}), people)  # no recorded lineage
    assert evaluations.judge_for(stranger) == judge_b.pk
    assert evaluations.judge_for(judge_b) == judge_a.pk  # never its own judge


def test_automatic_evaluation_can_be_turned_off(settings, people) -> None:
    reward = make_run("reward", people, {"base": [1], "datasets": [21]})
    output_of(reward, people)
    settings.ORCHARD_AUTO_EVALUATE = False
    assert evaluations.launch_follow_up(reward) is None
    assert not Run.objects.filter(kind="evaluate").exists()


def test_a_planning_failure_never_fails_the_training_run(auto_evaluate, people) -> None:
    reward = make_run("reward", people, {"base": [1], "datasets": [999_999]})  # no such dataset
    output_of(reward, people)
    assert evaluations.launch_follow_up(reward) is None
    reward.refresh_from_db()
    assert reward.status == RunStatus.SUCCEEDED


def test_multiple_choice_sets_are_imported_into_the_problem_bank(client_for, people) -> None:
    from labeling import services as labeling

    project = labeling.project_create(user=people["tom"], name="science")
    lines = [
        json.dumps({"question": "Fruit?", "choices": ["rock", "apple"], "answer": 1,
                    "subject": "biology"}),
        json.dumps({"question": {"stem": "Ice is?", "choices": [
            {"label": "A", "text": "cold"}, {"label": "B", "text": "hot"}]}, "answerKey": "A"}),
        json.dumps({"question": "Broken", "choices": ["a", "b"], "answer": 5}),
    ]  # fmt: skip
    response = client_for("tom").post(
        f"/labeling/projects/{project.pk}/problems/import/",
        {
            "file_format": "choice",
            "file": SimpleUploadedFile("arc.jsonl", "\n".join(lines).encode()),
        },
        follow=True,
    )
    page = response.content.decode()
    assert "Imported 2 problems, skipped 1." in page and "outside the 2 choices" in page
    imported = list(Problem.objects.filter(project=project).order_by("pk"))
    assert [(p.checker, p.answer, p.choices) for p in imported] == [
        ("choice", "B", ["rock", "apple"]),
        ("choice", "A", ["cold", "hot"]),
    ]
    assert imported[0].source == "biology" and imported[0].status == "approved"
    assert "A. rock\nB. apple" in imported[0].question
