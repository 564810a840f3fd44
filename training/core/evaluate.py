"""The ``evaluate`` stage: several checkpoints, one held-out problem set, side by side.

Inputs: ``inputs["checkpoints"]``, the model folders to compare (a base, its SFT and RL
descendants...); ``inputs["problems"]``, problem snapshot folders (see
:mod:`training.core.problems`). Each checkpoint answers the same problems of the chosen split
(greedy for pass@1, ``k`` seeded samples for pass@k) through
:func:`training.core.grpo.evaluate_problems`. Output: ``evaluation.json`` with every figure and
each problem's greedy answer, and ``orchard.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.core.reporting import Cancelled, Reporter


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: Literal["validation", "train"] = Field(
        "validation", description="Which part of the problem snapshots to answer."
    )
    max_problems: int = Field(64, ge=1, le=10_000, description="Problems answered at most.")
    k: int = Field(4, ge=1, le=64, description="pass@k: samples drawn per problem.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Longest answer, in tokens.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="For the k samples.")
    system_prompt: str | None = Field(None, description="Put before every problem, if given.")
    seed: int = Field(0, ge=0, description="Seed for the samples.")


def run(
    cfg: EvaluateConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    from training.core.grpo import evaluate_problems
    from training.core.problems import read_problems

    checkpoints = [Path(p) for p in inputs.get("checkpoints") or []]
    folders = [Path(p) for p in inputs.get("problems") or []]
    if not checkpoints or not folders:
        raise ValueError("an evaluation needs at least one checkpoint and one problem snapshot")
    problems = [p for folder in folders for p in read_problems(folder)[cfg.split]]
    if not problems:
        raise ValueError(
            f"the problem snapshots have no {cfg.split} problems: choose the other split"
        )
    problems = problems[: cfg.max_problems]
    results = []
    for index, folder in enumerate(checkpoints):
        if reporter.should_stop():
            raise Cancelled()
        reporter.progress(index, len(checkpoints), f"checkpoint {index + 1} of {len(checkpoints)}")
        figures = evaluate_problems(
            folder,
            None,
            problems,
            k=cfg.k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            system_prompt=cfg.system_prompt,
            should_stop=reporter.should_stop,
        )
        reporter.metrics(
            {
                f"checkpoint{index}/pass@1": figures["pass@1"],
                f"checkpoint{index}/pass@k": figures["pass@k"],
            },
            index,
        )
        results.append({"checkpoint": index, **figures})
    reporter.progress(len(checkpoints), len(checkpoints), "done")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    summary = {
        "problems": len(problems),
        "split": cfg.split,
        "k": cfg.k,
        "checkpoints": [
            {key: r[key] for key in ("checkpoint", "pass@1", "pass@k", "accuracy", "scored")}
            for r in results
        ],
    }
    manifest = {"kind": "evaluation", "config": cfg.model_dump(), "stats": summary}
    (out_dir / "orchard.json").write_text(json.dumps(manifest, indent=1))
    return summary
