"""``python -m training.core.bench rl``: a smoke run of the benchmark (not a timing assertion)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from training.core.bench import __main__ as bench
from training.core.bench import rl

SMALLEST = ["--quick", "--steps", "1", "--completion-length", "12", "--layers", "2"]


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_rl_benchmark_reports_finite_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["rl", *SMALLEST]) == 0
    result = json.loads(capsys.readouterr().out)  # TRL's own output stays off stdout

    assert result["benchmark"] == "rl" and result["quick"] is True
    for key in (
        "grpo_samples_per_second",
        "trl_default_samples_per_second",
        "ratio",
        "ratio_median_of_pairs",
        "ppo_samples_per_second",
        "ppo_vs_grpo",
    ):
        assert positive(result[key]), key
    for side in ("grpo", "trl_default"):
        assert len(result[side]["step_seconds"]) == 1  # the warm-up step is not counted
        assert positive(result[side]["median_step_seconds"])
        assert 0 < result[side]["mean_completion_tokens"] <= 12
    assert result["ratio"] == pytest.approx(
        result["grpo_samples_per_second"] / result["trl_default_samples_per_second"], rel=1e-3
    )
    ppo = result["ppo"]
    assert positive(ppo["rollout_seconds"]) and positive(ppo["update_seconds"])
    assert ppo["seconds_per_step"] == pytest.approx(ppo["rollout_seconds"] + ppo["update_seconds"])
    assert result["workload"]["completions_per_step"] == ppo["config"]["batch_size"] == 16
    assert "ratio" in result["goal"] and len(result["notes"]) >= 3


def test_options() -> None:
    assert rl.parse_args([]).steps == 16
    assert rl.parse_args(["--quick"]).steps == 2
    assert rl.parse_args(["--quick", "--steps", "5"]).steps == 5
    with pytest.raises(SystemExit):
        rl.parse_args(["--batch-size", "12"])  # not a multiple of 8 generations
    with pytest.raises(SystemExit):
        rl.parse_args(["--steps", "0"])


class FakeTrainer:
    """Calls its callbacks as a Trainer does; logs each step in ``log``; can fail at a step."""

    def __init__(self, name: str, steps: int, log: list[str], fail_at: int | None = None) -> None:
        self.name, self.steps, self.log, self.fail_at = name, steps, log, fail_at
        self.callbacks: list[Any] = []

    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def train(self) -> None:
        from types import SimpleNamespace

        state = SimpleNamespace(global_step=0, max_steps=self.steps)
        for callback in self.callbacks:
            callback.on_train_begin(None, state, None)
        for step in range(1, self.steps + 1):
            if step == self.fail_at:
                raise ValueError("boom")
            self.log.append(f"{self.name}{step}")
            state.global_step = step
            for callback in self.callbacks:
                callback.on_step_end(None, state, None)


def sides(log: list[str], fail_at: int | None = None) -> dict[str, Any]:
    return {
        "grpo": rl._Side(FakeTrainer("g", 3, log), 0.0, list),
        "trl_default": rl._Side(FakeTrainer("t", 3, log, fail_at), 0.0, list),
    }


def test_trainers_take_strict_turns_one_step_each() -> None:
    log: list[str] = []
    both = sides(log)
    rl._take_turns(both)
    assert log == ["g1", "t1", "g2", "t2", "g3", "t3"]
    for side in both.values():
        assert len(side.step_seconds) == 3 and len(side.counted) == 2


def test_a_failing_trainer_hands_the_turn_on_and_is_reported() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="the trl_default trainer failed: boom"):
        rl._take_turns(sides(log, fail_at=2))
    assert log == ["g1", "t1", "g2", "g3"]  # the other side finished alone, no deadlock
