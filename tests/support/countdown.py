"""A deterministic, checkpointing run kind used to test the run system itself.

Each step folds the step number into a state (``state = (31 * state + step) mod p``), sleeps a
little, and every ``checkpoint_every`` steps saves the state atomically. Killed and resumed at any
point, it must end in exactly the state an uninterrupted run reaches: that is what the resume
tests assert. Every executed step is appended to a ledger with the executing process's id, so
tests can prove that two workers never executed the run at the same time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from training.core.checkpoints import latest_complete, save_checkpoint
from training.core.reporting import Reporter
from training.kinds import RunKind
from training.models import ArtifactKind

PRIME = 1_000_003


class CountdownConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1, le=100_000, description="How many steps to run.")
    checkpoint_every: int = Field(5, ge=1, le=100_000, description="Steps between checkpoints.")
    step_seconds: float = Field(0.02, ge=0, le=10, description="Sleep per step.")
    fail_at_step: int = Field(0, ge=0, description="Raise at this step (0: never).")


def expected_state(steps: int) -> int:
    state = 1
    for step in range(1, steps + 1):
        state = (31 * state + step) % PRIME
    return state


def run(
    cfg: CountdownConfig, inputs: dict, out_dir: Path, reporter: Reporter, work_dir: Path
) -> dict:
    root = work_dir / "checkpoints"
    latest = latest_complete(root)
    state, start = 1, 0
    if latest is not None:
        state = json.loads((latest.path / "state.json").read_text())["state"]
        start = latest.step
        reporter.log(f"resumed from step {start}")
    work_dir.mkdir(parents=True, exist_ok=True)
    for step in range(start + 1, cfg.steps + 1):
        if reporter.should_stop():
            return {"stopped_at": step - 1}
        began = time.time()
        time.sleep(cfg.step_seconds)
        state = (31 * state + step) % PRIME
        with open(work_dir / "ledger.jsonl", "a") as ledger:
            ledger.write(
                json.dumps({"pid": os.getpid(), "step": step, "t0": began, "t1": time.time()})
                + "\n"
            )
        reporter.progress(step, cfg.steps, f"step {step}")
        reporter.metrics({"state_mod_97": state % 97}, step)
        if step % cfg.checkpoint_every == 0:
            reporter.record("checkpoint", {"state": state}, step)
            sample = {"prompt": "state", "text": f"{state} after step {step}"}
            reporter.record("samples", {"samples": [sample]}, step)
        if step == cfg.fail_at_step:
            raise RuntimeError(f"injected failure at step {step}")
        if step % cfg.checkpoint_every == 0:
            payload = json.dumps({"state": state})
            save_checkpoint(root, step, lambda d, p=payload: (d / "state.json").write_text(p))
    (out_dir / "result.json").write_text(json.dumps({"state": state}))
    return {"state": state, "resumed_from": start}


COUNTDOWN_KIND = RunKind(
    name="countdown",
    label="Countdown (test)",
    description="Deterministic checkpointing steps, for testing runs, leases and resume.",
    config_path="tests.support.countdown:CountdownConfig",
    entry_path="tests.support.countdown:run",
    output_kind=ArtifactKind.OUTPUT,
)
