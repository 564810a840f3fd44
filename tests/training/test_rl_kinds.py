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
