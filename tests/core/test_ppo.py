"""The ppo stage: Orchard's own PPO loop on conftest's tiny random Llama and a hand-built reward
model whose score rises with the share of "good" tokens (even ids from 8) in the conversation."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from tests.support.precision import auto_dtype_on_cpu
from training.core import ppo
from training.core.checkpoints import COMPLETE, latest_complete
from training.core.ppo import (
    KLController,
    Monitor,
    PPOConfig,
    compute_gae,
    masked_whiten,
    policy_loss,
    rollout_throughput,
    run,
    value_loss,
)
from training.core.reporting import RecordingReporter

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
WORDS = [
    "Hi",
    "apples",
    "Hello",
    "number",
    "about",
    "doc",
    "one",
    "two",
    "red",
    "tree",
    "pick",
    "fig",
]
FAST: dict[str, Any] = {
    "batch_size": 16,
    "mini_batch_size": 8,
    "ppo_epochs": 2,
    "learning_rate": 1e-2,
    "max_new_tokens": 10,
    "temperature": 1.0,
    "kl_coef": 0.01,
    "missing_eos_penalty": 0.0,
    "monitor_every": 0,
    "sample_every": 5,
    "save_every": 100,
    "device": "cpu",
}
STEP_METRICS = {
    "reward/mean",
    "reward/with_penalty",
    "kl",
    "kl_coef",
    "entropy",
    "loss/policy",
    "loss/value",
    "clipfrac",
    "approxkl",
    "response/mean_length",
    "value/mean",
}


def cfg(**overrides: Any) -> PPOConfig:
    return PPOConfig(**{**FAST, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the runs are then repeatable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_reward_model(folder: Path, tokenizer_dir: Path, sign: float) -> Path:
    """A 1-layer LlamaForSequenceClassification set by hand: uniform attention averages a
    "good token" indicator over the conversation, and the score reads it (times ``sign``)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=3,
        pad_token_id=1,
        num_labels=1,
    )
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0 if "norm" in name else 0.0)
        embed = model.model.embed_tokens.weight  # (V, 16)
        embed[:, 2] = 1.0  # every token: a constant, so the norm never divides by zero
        embed[8::2, 0] = 1.0  # good tokens
        attention = model.model.layers[0].self_attn  # q = k = 0: uniform attention
        attention.v_proj.weight[0, 0] = 1.0
        attention.o_proj.weight[1, 0] = 0.7  # the average lands in dimension 1 ...
        model.score.weight[0, 1] = sign  # ... which the score reads
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((tokenizer_dir / name).read_bytes())
    return folder


class Models(NamedTuple):
    policy: Path
    reward: Path
    contrarian: Path  # rewards exactly what ``reward`` penalises
    prompts: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Models:
    root = tmp_path_factory.mktemp("ppo-models")
    prompts = root / "prefs"
    prompts.mkdir()
    rows = [
        {"prompt": [{"role": "user", "content": w}], "chosen": [], "rejected": []} for w in WORDS
    ]
    (prompts / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (prompts / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    return Models(
        policy=tiny_model_dir,
        reward=build_reward_model(root / "rm", tiny_model_dir, 1.0),
        contrarian=build_reward_model(root / "rm-contrarian", tiny_model_dir, -1.0),
        prompts=prompts,
    )


def inputs(models: Models, **extra: list[Path]) -> dict[str, list[Path]]:
    return {
        "policy": [models.policy],
        "reward": [models.reward],
        "prompts": [models.prompts],
        **extra,
    }


def step_metrics(reporter: RecordingReporter, name: str) -> list[float]:
    return [values[name] for values, _ in reporter.metric_calls if name in values]


def state_dict(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


class Trained(NamedTuple):
    out: Path
    result: dict[str, Any]
    reporter: RecordingReporter


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Trained:
    out = tmp_path_factory.mktemp("ppo-out") / "out"
    reporter = RecordingReporter()
    result = run(cfg(max_steps=24, monitor_every=8), inputs(models), out, reporter)
    return Trained(out, result, reporter)


# --------------------------------------------------------------------------- the whole stage


def test_ppo_raises_the_reward_while_the_kl_stays_finite(trained: Trained) -> None:
    rewards = step_metrics(trained.reporter, "reward/mean")
    assert len(rewards) == 24
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, rewards
    kls = step_metrics(trained.reporter, "kl")
    assert all(math.isfinite(k) for k in kls)
    assert sum(kls[-5:]) / 5 > 0.5  # the policy moved away from the reference ...
    entropy = step_metrics(trained.reporter, "entropy")
    assert entropy[-1] < entropy[0]  # ... and became more certain
    for values, _ in trained.reporter.metric_calls:
        if "reward/mean" in values:
            assert set(values) >= STEP_METRICS
            assert all(math.isfinite(v) for v in values.values())


def test_the_output_is_a_chat_checkpoint_with_a_manifest(trained: Trained, models: Models) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = trained.out
    for name in ("config.json", "model.safetensors", "generation_config.json", *TOKENIZER_FILES):
        assert (out / name).is_file(), name
    assert not (out / ".work").exists()  # the stage's own work folder is removed after success
    manifest = json.loads((out / "orchard.json").read_text())
    assert manifest["kind"] == "checkpoint" and manifest["stage"] == "ppo"
    assert manifest["config"]["max_steps"] == 24
    assert manifest["stats"]["steps"] == 24
    tok = AutoTokenizer.from_pretrained(out)
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert tok.eos_token_id in GenerationConfig.from_pretrained(out).eos_token_id
    before, after = state_dict(models.policy), state_dict(out)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)  # every weight was trained


def test_result_samples_and_monitor_without_an_independent_model(trained: Trained) -> None:
    result = trained.result
    assert result["steps"] == 24 and result["stopped_early"] is False
    assert result["reward_last"] is not None and result["reward_first"] is not None
    assert math.isfinite(result["kl_last"])
    assert result["best_step"] is None and result["divergence_step"] is None
    assert result["device"] == "cpu" and result["dtype"] == auto_dtype_on_cpu()
    assert [p["step"] for p in result["monitor"]["points"]] == [0, 8, 16, 24]
    assert result["monitor"]["source"] == "validation" and result["monitor"]["prompts"] == 4
    monitor_steps = [s for v, s in trained.reporter.metric_calls if "monitor/train_rm" in v]
    assert monitor_steps == [0, 8, 16, 24]
    assert not any("monitor/independent_rm" in v for v, _ in trained.reporter.metric_calls)
    samples = [(p, s) for name, p, s in trained.reporter.records if name == "samples"]
    assert [s for _, s in samples] == [5, 10, 15, 20, 24]
    payload, step = samples[0]
    assert payload["step"] == step
    assert set(payload["samples"][0]) == {"prompt", "reply", "score"}
    assert payload["samples"][0]["prompt"] in WORDS


# ------------------------------------------------------------------------ PPO arithmetic by hand


def test_gae_matches_a_hand_computation() -> None:
    import torch

    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.25, 0.5], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1 ends after two tokens
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # Row 0: deltas 0 + .9*.25 - .5 = -.275, 0 + .9*.5 - .25 = .2, 1 - .5 = .5
    # A2 = .5, A1 = .2 + .45*.5 = .425, A0 = -.275 + .45*.425 = -.08375
    # Row 1 (position 2 is padding: reward and value 0): deltas .5 + .9 - 1 = .4, 2 - 1 = 1
    # A1 = 1, A0 = .4 + .45 = .85
    expected = torch.tensor([[-0.08375, 0.425, 0.5], [0.85, 1.0, 0.0]])
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, (expected + values * mask) * mask)
    # gamma = lam = 1: the return is the sum of the rewards still to come (Monte Carlo).
    _, mc = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(mc, torch.tensor([[1.0, 1.0, 1.0], [2.5, 2.0, 0.0]]))


def test_whitening_uses_only_the_masked_entries() -> None:
    import torch

    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2, unbiased variance ((1-2)^2 + (3-2)^2) / (2-1) = 2
    white = masked_whiten(x, mask)
    assert torch.allclose(white, torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]]))
    shifted = masked_whiten(x, mask, shift_mean=False)
    assert torch.allclose(shifted, torch.tensor([[2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2), 0]]))


def test_clipped_policy_and_value_losses() -> None:
    import torch

    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 1.5, 1.5]]))  # ratio 1.5 everywhere
    advantages = torch.tensor([[1.0, -1.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac, approxkl = policy_loss(new, old, advantages, mask, cliprange=0.2)
    # A = 1: max(-1.5, -1.2) = -1.2 (clipped); A = -1: max(1.5, 1.2) = 1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approxkl.item() == pytest.approx(0.5 * math.log(1.5) ** 2)

    values = torch.tensor([[2.0, 0.0]])
    old_values = torch.tensor([[1.0, 0.0]])
    returns = torch.tensor([[3.0, 0.5]])
    vmask = torch.ones(1, 2)
    vloss, vclip = value_loss(values, old_values, returns, vmask, cliprange_value=0.2)
    # Token 0: clipped prediction 1.2, (1.2-3)^2 = 3.24 > (2-3)^2 = 1; token 1: 0.25 both.
    assert vloss.item() == pytest.approx(0.5 * (3.24 + 0.25) / 2)
    assert vclip.item() == pytest.approx(0.5)


def test_the_adaptive_kl_controller_moves_towards_the_target() -> None:
    fixed = KLController(0.1)
    fixed.update(100.0, 16)
    assert fixed.value == 0.1
    ctl = KLController(0.1, adaptive=True, target=6.0, horizon=100)
    ctl.update(12.0, 10)  # error clipped to +0.2: x (1 + 0.2 * 10 / 100)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(3.0, 10)  # error -0.5, clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)


def test_the_divergence_rule() -> None:
    monitor = Monitor()

    def add(step: int, train: float, independent: float) -> bool:
        point = {"step": step, "train_rm": train, "independent_rm": independent}
        return monitor.add(point, threshold=0.5, patience=2)

    assert add(0, 1.0, 1.0) is True  # the first point is the best so far
    assert add(10, 1.5, 1.2) is True  # independent score up: new best
    add(20, 2.0, 0.6)  # 0.6 below the best and the training score above 1.5: diverging
    add(30, 1.4, 0.5)  # training score below the best point's: the run breaks
    assert monitor.divergence_step is None
    add(40, 2.5, 0.6)
    assert monitor.divergence_step is None  # one diverging point is not enough
    add(50, 2.6, 0.0)
    assert monitor.divergence_step == 40 and monitor.best_step == 10
    add(60, 3.0, 2.0)  # a later recovery makes a new best but does not undo the verdict
    assert monitor.best_step == 60 and monitor.divergence_step == 40


# ------------------------------------------------------------------------------------- safety


def test_a_nan_reward_stops_with_a_clear_message(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        ppo, "_score", lambda scorer, conversations, amp: [math.nan] * len(conversations)
    )
    with pytest.raises(ValueError, match=r"training diverged at step 1: the reward model") as err:
        run(cfg(max_steps=5), inputs(models), tmp_path / "out", RecordingReporter())
    assert "lower the learning rate or the KL coefficient" in str(err.value)
    assert not (tmp_path / "out" / "orchard.json").exists()


def test_nan_weights_stop_with_a_clear_message(models: Models, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    broken = tmp_path / "broken"
    model = AutoModelForCausalLM.from_pretrained(models.policy)
    with torch.no_grad():
        model.model.norm.weight.fill_(math.nan)
    model.save_pretrained(broken)
    for name in TOKENIZER_FILES:
        (broken / name).write_bytes((models.policy / name).read_bytes())
    with pytest.raises(ValueError, match=r"training diverged at step 1: .*log-probabilities"):
        run(
            cfg(max_steps=5),
            {**inputs(models), "policy": [broken]},
            tmp_path / "out",
            RecordingReporter(),
        )


class StopDuringRollout(RecordingReporter):
    """Asks to stop inside the second step's rollout (the Engine checks before each token)."""

    def __init__(self) -> None:
        super().__init__()
        self.checks_after_first_step = 0

    def should_stop(self) -> bool:
        if self.progress_calls:
            self.checks_after_first_step += 1
        return self.checks_after_first_step >= 3


def test_cancel_mid_rollout_saves_a_checkpoint_and_resume_matches_an_unbroken_run(
    models: Models, tmp_path: Path
) -> None:
    import torch

    config = cfg(max_steps=3, ppo_epochs=1)
    unbroken = run(config, inputs(models), tmp_path / "unbroken", RecordingReporter())
    assert unbroken["steps"] == 3

    work = tmp_path / "work"
    out = tmp_path / "out"
    stopper = StopDuringRollout()
    stopped = run(config, inputs(models), out, stopper, work_dir=work)
    assert stopped["stopped_early"] is True and stopped["steps"] == 1
    # Checks: before step 2, before the Engine's prefill, after its first token (the stop).
    assert stopper.checks_after_first_step == 3
    assert not (out / "orchard.json").exists()
    ckpt = latest_complete(work / "checkpoints")
    assert ckpt is not None and ckpt.step == 1
    assert (ckpt.path / COMPLETE).is_file()
    for name in ("policy/model.safetensors", "policy/tokenizer.json", "value/model.safetensors"):
        assert (ckpt.path / name).is_file(), name
    assert (ckpt.path / "trainer_state.pt").is_file()

    reporter = RecordingReporter()
    resumed = run(config, inputs(models), out, reporter, work_dir=work)
    assert resumed["resumed_from_step"] == 1 and resumed["steps"] == 3
    assert [s for v, s in reporter.metric_calls if "reward/mean" in v] == [2, 3]
    assert resumed["reward_first"] == unbroken["reward_first"]
    assert (out / "orchard.json").is_file()
    a, b = state_dict(tmp_path / "unbroken"), state_dict(out)
    assert all(torch.equal(a[name], b[name]) for name in a)  # bit for bit on the CPU


def test_cancel_between_minibatches_keeps_the_partial_step(
    models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reporter = RecordingReporter()
    stop_now = []
    original = ppo.Session._minibatch

    def minibatch_then_stop(self: Any, *args: Any) -> dict[str, float]:
        stats = original(self, *args)
        stop_now.append(True)
        return stats

    monkeypatch.setattr(ppo.Session, "_minibatch", minibatch_then_stop)
    monkeypatch.setattr(reporter, "should_stop", lambda: bool(stop_now))
    result = run(
        cfg(max_steps=4), inputs(models), tmp_path / "out", reporter, work_dir=tmp_path / "w"
    )
    assert result["stopped_early"] is True and result["steps"] == 1
    assert len(stop_now) == 1  # one minibatch of the planned four ran
    assert any("cut short after 1 of 4 minibatches" in line for line in reporter.lines)
    ckpt = latest_complete(tmp_path / "w" / "checkpoints")
    assert ckpt is not None and ckpt.step == 1


# ---------------------------------------------------------------------------- reward hacking


def test_the_monitor_finds_divergence_and_outputs_the_best_policy(
    models: Models, tmp_path: Path
) -> None:
    import torch

    reporter = RecordingReporter()
    config = cfg(
        max_steps=40,
        monitor_every=4,
        divergence_threshold=0.2,
        divergence_patience=2,
        stop_at_divergence=True,
    )
    work = tmp_path / "work"
    result = run(
        config,
        inputs(models, monitor=[models.contrarian]),
        tmp_path / "out",
        reporter,
        work_dir=work,
    )
    assert result["stopped_at_divergence"] is True and result["stopped_early"] is False
    assert result["divergence_step"] is not None and result["best_step"] is not None
    assert result["best_step"] < result["divergence_step"] <= result["steps"] < 40
    assert result["output_step"] == result["best_step"]
    points = result["monitor"]["points"]
    best = next(p for p in points if p["step"] == result["best_step"])
    last = points[-1]
    assert last["independent_rm"] < best["independent_rm"] - 0.2
    assert last["train_rm"] > best["train_rm"]
    charted = [v for v, _ in reporter.metric_calls if "monitor/train_rm" in v]
    assert all({"monitor/independent_rm", "monitor/kl"} <= set(v) for v in charted)
    assert [s for n, _, s in reporter.records if n == "monitor"] == [p["step"] for p in points]

    kept = latest_complete(work / "best")
    assert kept is not None and kept.step == result["best_step"]
    best_weights, out_weights = state_dict(kept.path), state_dict(tmp_path / "out")
    assert all(torch.equal(best_weights[n], out_weights[n]) for n in best_weights)
    if result["best_step"] == 0:
        initial = state_dict(models.policy)
        assert all(torch.equal(initial[n], out_weights[n]) for n in initial)


# ------------------------------------------------------------------------ inputs and config


def test_config_checks() -> None:
    with pytest.raises(ValidationError, match="mini_batch_size"):
        PPOConfig(batch_size=8, mini_batch_size=3)
    with pytest.raises(ValidationError, match="colour"):
        PPOConfig(colour="red")
    for name, info in PPOConfig.model_fields.items():
        assert info.description, name


def test_bad_inputs_are_refused_with_reasons(models: Models, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"question": "typo"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2"):
        run(cfg(), {**inputs(models), "prompts": [bad]}, tmp_path / "o", RecordingReporter())
    with pytest.raises(ValueError, match="not a reward model"):
        run(
            cfg(),
            {**inputs(models), "reward": [models.policy]},
            tmp_path / "o",
            RecordingReporter(),
        )
    with pytest.raises(ValueError, match="stop_at_divergence needs an independent"):
        run(
            cfg(stop_at_divergence=True, monitor_every=2),
            inputs(models),
            tmp_path / "o",
            RecordingReporter(),
        )
    other = tmp_path / "other-tokenizer"
    shutil.copytree(models.reward, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|new|>"], special_tokens=True)
    tok.save_pretrained(other)
    with pytest.raises(ValueError, match="another tokenizer than the policy"):
        run(cfg(), {**inputs(models), "reward": [other]}, tmp_path / "o", RecordingReporter())
    with pytest.raises(ValueError, match="exactly one policy"):
        run(cfg(), {**inputs(models), "policy": []}, tmp_path / "o", RecordingReporter())


def test_rollout_throughput(models: Models) -> None:
    config = cfg(batch_size=4, mini_batch_size=4, ppo_epochs=1)
    speed = rollout_throughput(config, inputs(models), steps=1)
    assert speed["samples_per_second"] > 0
    assert speed["seconds_per_step"] == pytest.approx(
        speed["rollout_seconds"] + speed["update_seconds"]
    )


def test_ppo_runs_from_the_shell(models: Models, tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    settings = {**FAST, "max_steps": 2, "batch_size": 4, "mini_batch_size": 2, "monitor_every": 2}
    config.write_text(json.dumps(settings))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [
            sys.executable, "-m", "training.core", "ppo", "--config", str(config),
            "--input", f"policy={models.policy}", "--input", f"reward={models.reward}",
            "--input", f"prompts={models.prompts / 'train.jsonl'}", "--out", str(out),
        ],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"] == 2
    # No validation.jsonl: a quarter of the 12 training prompts is held out for the monitor.
    assert result["monitor"]["source"] == "held-out train"
    assert result["monitor"]["prompts"] == 3 and result["prompts"] == 9
    assert "[metrics]" in done.stderr and "reward/mean" in done.stderr
    assert json.loads((out / "orchard.json").read_text())["stage"] == "ppo"
