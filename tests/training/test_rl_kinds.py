"""The RL run kinds in-process: PPO against a reward model with the reward-hacking monitor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_ppo import build_reward_model
from training import services
from training.models import Artifact

pytestmark = pytest.mark.django_db


def register(folder: Path, kind: str, name: str, user: Any, **meta: Any) -> Artifact:
    staging = services.artifacts_root() / f"staging-{name}"
    shutil.copytree(folder, staging)
    return services.artifact_register_dir(
        source=staging, kind=kind, name=name, run=None, parents=[], user=user, meta=meta
    )


@pytest.fixture
def rl_inputs(tmp_path: Path, tiny_model_dir: Path, tiny_checkpoint: Any, people: dict) -> dict:
    tom = people["tom"]
    reward = build_reward_model(tmp_path / "rm", tiny_model_dir, 1.0)
    contrarian = build_reward_model(tmp_path / "rm-contrarian", tiny_model_dir, -1.0)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    words = ["apple", "pear", "plum", "fig", "lime", "kiwi", "date", "lemon"]
    rows = [{"prompt": [{"role": "user", "content": w}]} for w in words]
    (prompts / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (prompts / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    return {
        "policy": tiny_checkpoint,
        "reward": register(reward, "checkpoint", "rm", tom, stage="reward"),
        "monitor": register(contrarian, "checkpoint", "rm-independent", tom, stage="reward"),
        "prompts": register(prompts, "dataset", "prompts", tom, stage="prompts"),
    }


def test_ppo_run_shows_the_reward_hacking_monitor(client_for, people, rl_inputs) -> None:
    run = services.run_create(
        kind="ppo",
        config={
            "max_steps": 4,
            "batch_size": 4,
            "mini_batch_size": 2,
            "ppo_epochs": 1,
            "max_new_tokens": 6,
            "monitor_every": 2,
            "monitor_prompts": 4,
            "sample_every": 2,
            "device": "cpu",
        },
        inputs={name: [artifact.pk] for name, artifact in rl_inputs.items()},
        user=people["tom"],
    )
    outcome = services.run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert outcome == "succeeded", run.error
    policy = Artifact.objects.get(run=run)
    assert policy.meta["stage"] == "ppo"
    assert set(policy.parents.all()) == set(rl_inputs.values())
    assert run.metrics.filter(name="kl").exists()
    assert run.metrics.filter(name="monitor/independent_rm").count() >= 2
    page = client_for("tom").get(f"/runs/{run.pk}/").content.decode()
    assert "Reward hacking monitor" in page and "Scores against KL" in page
    assert "independent reward model" in page and "<polyline" in page


def test_grpo_and_evaluate_runs(client_for, people, tiny_checkpoint) -> None:
    from labeling import problem_bank
    from labeling import services as labeling

    project = labeling.project_create(user=people["tom"], name="arithmetic")
    problem_bank.problems_generate(project=project, user=people["tom"], count=24, difficulty=1,
                                   seed=0)  # fmt: skip
    snapshot = problem_bank.problem_snapshot_create(
        project=project, user=people["tom"], name="sums", validation_fraction=0.25
    )
    run = services.run_create(
        kind="grpo",
        config={
            "max_steps": 2,
            "num_generations": 4,
            "batch_size": 8,
            "max_completion_length": 8,
            "eval_problems": 4,
            "eval_k": 2,
            "eval_samples": 2,
            "sample_every": 1,
            "device": "cpu",
        },
        inputs={"base": [tiny_checkpoint.pk], "problems": [snapshot.artifact.pk]},
        user=people["tom"],
    )
    outcome = services.run_execute(run_id=run.pk)
    run.refresh_from_db()
    assert outcome == "succeeded", run.error
    tuned = Artifact.objects.get(run=run)
    assert tuned.meta["stage"] == "grpo"
    tom = client_for("tom")
    page = tom.get(f"/runs/{run.pk}/").content.decode()
    assert "Held-out pass@1" in page and "Sampled solutions at step" in page
    assert "Compare pass@1 with its starting checkpoint" in page

    evaluation = services.run_create(
        kind="evaluate",
        config={"max_problems": 4, "k": 2, "max_new_tokens": 6},
        inputs={"checkpoints": [tiny_checkpoint.pk, tuned.pk], "problems": [snapshot.artifact.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=evaluation.pk) == "succeeded"
    evaluation.refresh_from_db()
    assert len(evaluation.result["checkpoints"]) == 2
    table = tom.get(f"/runs/{evaluation.pk}/").content.decode()
    assert "pass@1 (greedy) per checkpoint" in table and tuned.name in table


def test_factuality_probe_and_drafts_for_review(client_for, people, tiny_checkpoint) -> None:
    from labeling import problem_bank
    from labeling import services as labeling
    from labeling.models import Conversation

    project = labeling.project_create(user=people["tom"], name="facts")
    problem_bank.problems_generate(project=project, user=people["tom"], count=6, difficulty=3,
                                   seed=1)  # fmt: skip
    questions = problem_bank.problem_snapshot_create(
        project=project, user=people["tom"], name="facts v1"
    )
    runs = []
    for _ in range(2):  # the same questions twice: the page compares the probes
        run = services.run_create(
            kind="factuality",
            config={"samples": 2, "max_new_tokens": 4},
            inputs={"checkpoint": [tiny_checkpoint.pk], "questions": [questions.artifact.pk]},
            user=people["tom"],
        )
        assert services.run_execute(run_id=run.pk) == "succeeded"
        run.refresh_from_db()
        runs.append(run)
    result = runs[0].result
    assert result["questions"] == 6
    assert result["correct_rate"] + result["wrong_rate"] + result["refusal_rate"] == pytest.approx(
        1
    )
    tom = client_for("tom")
    page = tom.get(f"/runs/{runs[1].pk}/").content.decode()
    assert "The same questions, checkpoint by checkpoint" in page
    assert result["drafts"] > 0  # an untrained model gets 3-digit arithmetic wrong
    tom.post(f"/labeling/from-factuality/{runs[0].pk}/", {"project": project.pk})
    tom.post(f"/labeling/from-factuality/{runs[0].pk}/", {"project": project.pk})
    drafts = Conversation.objects.filter(source="factuality")
    assert drafts.count() == result["drafts"]  # nothing added twice
    assert all("idk" in c.tags and c.status == "submitted" for c in drafts)
