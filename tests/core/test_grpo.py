"""The grpo stage: TRL's GRPOTrainer on the tiny random Llama from conftest, with a toy task.

The task: every problem's answer is 7. The random model says a 7 as its last number in about
3 % of its replies; rewarding those is real reinforcement learning (nothing else tells the model
what is right), and a 1-layer model learns it within a few dozen cheap steps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from training.core import grpo
from training.core.checkpoints import COMPLETE
from training.core.grpo import GRPOConfig, evaluate_problems, pass_at_k, run
from training.core.problems import read_problems, write_problem_snapshot
from training.core.reporting import RecordingReporter

REPO = Path(__file__).resolve().parents[2]

FAST: dict[str, Any] = {
    "num_generations": 8,
    "batch_size": 32,  # 4 problems x 8 replies per step
    "max_completion_length": 4,
    "learning_rate": 1e-2,
    "eval_every": 0,
    "eval_problems": 4,
    "eval_k": 2,
    "eval_samples": 4,
    "sample_every": 0,
    "save_every": 1000,
    "device": "cpu",
}
SEVENS = [
    {"question": f"Say {word}", "answer": "7", "checker": "number"}
    for word in ("seven", "the number", "it", "now", "again", "please", "one", "two")
] + [{"question": f"Number {i}?", "answer": "7", "checker": "number"} for i in range(8)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg(**overrides: Any) -> GRPOConfig:
    return GRPOConfig(**{**FAST, **overrides})


class Trained(NamedTuple):
    out: Path
    result: dict[str, Any]
    reporter: RecordingReporter


@pytest.fixture(scope="module")
def sevens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("problems") / "sevens"
    card = write_problem_snapshot(SEVENS, folder, validation_fraction=0.25, salt="x")
    assert card["counts"] == {"train": 13, "validation": 3, "total": 16}
    return folder


@pytest.fixture(scope="module")
def inputs(tiny_model_dir: Path, sevens: Path) -> dict[str, list[Path]]:
    return {"base": [tiny_model_dir], "problems": [sevens]}


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, inputs: dict[str, list[Path]]) -> Trained:
    out = tmp_path_factory.mktemp("grpo") / "out"
    reporter = RecordingReporter()
    config = cfg(max_steps=40, seed=2, eval_every=20, sample_every=10, eval_problems=8)
    result = run(config, inputs, out, reporter)
    return Trained(out, result, reporter)


def series(reporter: RecordingReporter, name: str) -> list[tuple[int, float]]:
    return [(step, values[name]) for values, step in reporter.metric_calls if name in values]


# ------------------------------------------------------------------------------------ config


def test_config_defaults_and_validation() -> None:
    default = GRPOConfig()
    assert default.num_generations == 8 and default.max_completion_length == 64
    assert default.beta == 0.04 and default.format_reward_weight == 0.0
    assert default.problems_per_step == 2
    assert all(f.description for f in GRPOConfig.model_fields.values())
    with pytest.raises(ValidationError) as caught:
        GRPOConfig(batch_size=12)
    error = caught.value.errors()[0]
    assert error["loc"] == ("batch_size",)
    assert "(12) must be a multiple of num_generations (8)" in error["msg"]
    assert "try batch_size 16" in error["msg"]
    assert GRPOConfig(batch_size=4, gradient_accumulation_steps=2).problems_per_step == 1
    for bad, field_name in [
        ({"colour": "red"}, "colour"),
        ({"num_generations": 1}, "num_generations"),
        ({"eval_k": 4, "eval_samples": 2}, "eval_samples"),
        ({"temperature": 0}, "temperature"),
        ({"loss_type": "ppo"}, "loss_type"),
    ]:
        with pytest.raises(ValidationError) as caught:
            GRPOConfig(**bad)
        assert caught.value.errors()[0]["loc"][0] == field_name


def test_pass_at_k_is_the_unbiased_estimate() -> None:
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))
    assert pass_at_k(5, 3, 3) == 1.0  # fewer wrong samples than k: one right is always drawn
    with pytest.raises(ValueError, match="at least 4 samples"):
        pass_at_k(2, 1, 4)


# ---------------------------------------------------------------------------------- learning


def test_reinforcement_raises_accuracy(learned: Trained) -> None:
    result, reporter = learned.result, learned.reporter
    assert result["steps"] == result["max_steps"] == 40 and not result["stopped_early"]
    accuracy = [value for _, value in series(reporter, "train/accuracy")]
    assert len(accuracy) == 40
    early, late = sum(accuracy[:5]) / 5, sum(accuracy[-5:]) / 5
    assert early < 0.2 and late > 0.5 and late > early + 0.3
    rewards = [value for _, value in series(reporter, "reward/mean")]
    assert rewards == pytest.approx(accuracy)  # 1.0 per correct reply, no format reward
    assert result["accuracy_first"] == accuracy[0] and result["accuracy_last"] == accuracy[-1]
    assert result["val_accuracy_after"] > result["val_accuracy_before"]
    assert result["val_pass@k_after"] >= result["val_pass@k_before"]
    assert result["kl_last"] > 0 and result["eval_held_out"] is True
    assert result["problems"] == 13 and result["validation_problems"] == 3


def test_metrics_progress_and_evaluations_are_reported(learned: Trained) -> None:
    reporter = learned.reporter
    assert [step for step, _, _ in reporter.progress_calls] == list(range(1, 41))
    names = {name for values, _ in reporter.metric_calls for name in values}
    assert {
        "reward/mean",
        "reward/std",
        "train/accuracy",
        "completion/mean_length",
        "kl",
        "train/loss",
        "train/entropy",
        "train/grad_norm",
        "val/pass@1",
        "val/pass@k",
        "val/accuracy",
    } <= names
    assert [step for step, _ in series(reporter, "val/pass@1")] == [0, 20, 40]
    evaluations = [(p, s) for name, p, s in reporter.records if name == "evaluation"]
    assert [s for _, s in evaluations] == [0, 20, 40]
    last = evaluations[-1][0]
    assert last["k"] == 2 and last["n"] == 4 and last["scored"] == 3
    assert last["pass@1"] == learned.result["val_pass@1_after"]
    row = last["per_problem"][0]
    assert {"question", "answer", "greedy", "greedy_correct", "correct_samples", "pass@k"} <= set(
        row
    )


def test_rollouts_are_recorded(learned: Trained) -> None:
    rollouts = [(p, s) for name, p, s in learned.reporter.records if name == "rollouts"]
    assert [s for _, s in rollouts] == [1, 10, 20, 30, 40]
    payload = rollouts[-1][0]
    assert payload["step"] == 40 and 1 <= len(payload["problems"]) <= 4
    for problem in payload["problems"]:
        assert problem["answer"] == "7" and problem["question"]
        assert len(problem["samples"]) == 8  # every reply of the problem's group
        for sample in problem["samples"]:
            assert set(sample) == {"text", "reward", "correct", "extracted"}
            assert sample["reward"] == (1.0 if sample["correct"] else 0.0)
            assert sample["correct"] == (sample["extracted"] == "7")
    late = [s["correct"] for p in payload["problems"] for s in p["samples"]]
    first = [s["correct"] for p in rollouts[0][0]["problems"] for s in p["samples"]]
    assert sum(late) > sum(first)


def test_output_is_a_checkpoint_that_stops_at_im_end(learned: Trained) -> None:
    from transformers import AutoTokenizer

    names = {p.name for p in learned.out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "orchard.json",
    } <= names
    assert ".work" not in names
    tok = AutoTokenizer.from_pretrained(learned.out)
    generation = json.loads((learned.out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    assert generation["pad_token_id"] == tok.convert_tokens_to_ids("<|pad|>")
    manifest = json.loads((learned.out / "orchard.json").read_text())
    assert manifest["kind"] == "checkpoint" and manifest["stage"] == "grpo"
    assert manifest["config"]["max_steps"] == 40
    assert manifest["stats"]["val_pass@1_after"] == learned.result["val_pass@1_after"]
    assert [e["step"] for e in manifest["stats"]["evaluations"]] == [0, 20, 40]


def test_evaluate_problems_on_a_folder_and_a_model(learned: Trained, sevens: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problems = read_problems(sevens)["validation"]
    from_folder = evaluate_problems(
        learned.out, None, problems, k=2, n=4, max_new_tokens=4, temperature=1.0, seed=3
    )
    assert from_folder["scored"] == 3 and from_folder["skipped"] == 0
    assert from_folder["pass@1"] == learned.result["val_pass@1_after"]  # greedy: deterministic
    model = AutoModelForCausalLM.from_pretrained(learned.out, dtype=torch.float32).train()
    tok = AutoTokenizer.from_pretrained(learned.out)
    loaded = evaluate_problems(model, tok, problems, k=2, n=4, max_new_tokens=4, seed=3)
    assert model.training  # the caller's mode is restored
    assert loaded["pass@1"] == from_folder["pass@1"]
    assert loaded["accuracy"] == from_folder["accuracy"]  # same seed, same samples
    assert [r["correct_samples"] for r in loaded["per_problem"]] == [
        r["correct_samples"] for r in from_folder["per_problem"]
    ]


# ------------------------------------------------------------------------- stop and resume


def test_cancelled_run_saves_and_resumes(tmp_path: Path, inputs: dict[str, list[Path]]) -> None:
    config = cfg(max_steps=6)
    work, out = tmp_path / "work", tmp_path / "out"
    stopper = RecordingReporter(stop_after_progress_calls=3)
    partial = run(config, inputs, out, stopper, work_dir=work)
    assert partial["stopped_early"] and partial["steps"] == 3
    assert not (out / "model.safetensors").exists()
    checkpoints = work / "checkpoints"
    assert (checkpoints / "checkpoint-3" / COMPLETE).is_file()
    assert (checkpoints / "checkpoint-3" / "model.safetensors").is_file()
    (checkpoints / "checkpoint-5").mkdir()  # a save that crashed halfway: no marker
    (checkpoints / "checkpoint-5" / "trainer_state.json").write_text("{}")

    reporter = RecordingReporter()
    result = run(config, inputs, out, reporter, work_dir=work)
    assert result["resumed_from_step"] == 3 and not result["stopped_early"]
    assert [s for s, _, _ in reporter.progress_calls] == [4, 5, 6]
    assert result["steps"] == 6 and (out / "orchard.json").is_file()
    assert "deleting the incomplete checkpoint checkpoint-5" in reporter.lines
    assert result["val_pass@1_before"] == partial["val_pass@1_before"]  # from the checkpoint
    assert result["accuracy_first"] == partial["accuracy_first"]  # history survives resume
    assert [s for v, s in reporter.metric_calls if "val/pass@1" in v] == [6]  # no new "before"


# -------------------------------------------------------------------------------- divergence


def test_nan_reward_stops_with_a_clear_error(
    tmp_path: Path, inputs: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpo, "correctness_reward", lambda result: float("nan"))
    with pytest.raises(ValueError, match="training diverged at step 1: reward is nan"):
        run(cfg(max_steps=3), inputs, tmp_path / "out", RecordingReporter())


@pytest.mark.parametrize("poison", ["loss", "grad_norm"])
def test_non_finite_loss_or_gradient_stops_before_the_update(
    tmp_path: Path, inputs: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch, poison: str
) -> None:
    import torch
    from trl import GRPOTrainer

    original = GRPOTrainer.compute_loss

    def poisoned(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original(self, model, inputs, return_outputs, num_items_in_batch)
        if self.state.global_step < 2:
            return loss
        if poison == "loss":
            return loss * float("nan")
        weight = model.get_output_embeddings().weight
        weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return loss

    monkeypatch.setattr(GRPOTrainer, "compute_loss", poisoned)
    work = tmp_path / "work"
    with pytest.raises(
        ValueError, match=f"training diverged at step 3: {poison} is (nan|inf); lower the learning"
    ):
        run(
            cfg(max_steps=5, save_every=1),
            inputs,
            tmp_path / "out",
            RecordingReporter(),
            work_dir=work,
        )
    saved = sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*"))
    assert saved == ["checkpoint-1", "checkpoint-2"]  # the poisoned step was never applied
    assert not (tmp_path / "out" / "orchard.json").exists()


# ---------------------------------------------------------------------------------- refusals


def test_refusals_say_what_to_do(tmp_path: Path, tiny_model_dir: Path, sevens: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    reporter = RecordingReporter()

    def refuse(config: GRPOConfig, inputs: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            grpo.prepare(config, inputs, tmp_path / "ck", reporter)

    base = {"base": [tiny_model_dir]}
    refuse(cfg(), base, 'at least one problem snapshot as input "problems"')
    refuse(cfg(), {"base": [], "problems": [sevens]}, 'exactly one model folder as input "base"')
    refuse(
        cfg(batch_size=128),
        {**base, "problems": [sevens]},
        r"13 training problems but every "
        r"step needs 16 different ones",
    )
    long = tmp_path / "long"
    write_problem_snapshot([{"question": "apples " * 60, "answer": "1"}], long, 0.0)
    refuse(cfg(), {**base, "problems": [long]}, "every training problem in long is longer than")

    nan_base = tmp_path / "nan-base"
    nan_base.mkdir()
    for path in tiny_model_dir.iterdir():
        (nan_base / path.name).write_bytes(path.read_bytes())
    weights = load_file(tiny_model_dir / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, nan_base / "model.safetensors", metadata={"format": "pt"})
    refuse(cfg(), {"base": [nan_base], "problems": [sevens]}, "weights that are NaN or infinite")


def test_format_reward_and_system_prompt(tmp_path: Path, inputs: dict[str, list[Path]]) -> None:
    reporter = RecordingReporter()
    config = cfg(
        format_reward_weight=0.5,
        system_prompt="Answer with #### <number>.",
        max_completion_length=8,
    )
    session = grpo.prepare(config, inputs, tmp_path / "ck", reporter)
    assert session.trainer.reward_weights.tolist() == [1.0, 0.5]
    assert [f.__name__ for f in session.rewards.functions()] == ["correctness", "answer_format"]
    row = session.trainer.train_dataset[0]
    assert row["prompt"][0] == {"role": "system", "content": "Answer with #### <number>."}
    completions = [[{"role": "assistant", "content": t}] for t in ("#### 7", "7", "#### 8")]
    assert session.rewards.answer_format(completions) == [1.0, 0.0, 1.0]
    assert session.rewards.correctness(
        prompts=[None] * 3, completions=completions, problem_index=[0, 0, 0]
    ) == [1.0, 1.0, 0.0]


# ----------------------------------------------------------------------------------------- CLI


def test_grpo_runs_from_the_shell(tmp_path: Path, tiny_model_dir: Path, sevens: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**FAST, "max_steps": 2}))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.core",
            "grpo",
            "--config",
            str(config),
            "--input",
            f"base={tiny_model_dir}",
            "--input",
            f"problems={sevens}",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds only the result
    assert result["steps"] == 2 and "[progress] 2/2" in done.stderr
    assert "reward/mean=" in done.stderr
    assert (out / "model.safetensors").is_file() and (out / "orchard.json").is_file()


def test_weights_turning_nan_stop_with_a_clear_error(
    tmp_path: Path, inputs: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that leaves NaN weights (finite loss and gradients) fails the next sampling."""
    import torch

    original = torch.optim.AdamW.step
    calls = []

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                for group in self.param_groups:
                    for param in group["params"]:
                        param.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(ValueError, match="training diverged at step 2: the model's weights are"):
        run(cfg(max_steps=4), inputs, tmp_path / "out", RecordingReporter())
