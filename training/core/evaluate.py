"""The ``evaluate`` stage: one or more checkpoints measured side by side on whatever the inputs
allow (the figures themselves are in :mod:`training.core.evalsuite`).

Inputs (only ``checkpoints`` is required; at least one other must give something to measure):

- ``checkpoints``: model folders to compare (a base, its SFT and RL descendants...), reward
  models included;
- ``problems``: problem snapshots (:mod:`training.core.problems`): pass@1 (greedy) and pass@k
  (``k`` seeded samples), the factuality shares (correct / wrong / "I don't know") of the greedy
  answers, and multiple-choice accuracy by log-likelihood for ``"choice"`` problems;
- ``text``: corpus files: validation loss and bits per byte on the held-out documents;
- ``conversations``: SFT dataset snapshots: held-out loss on the assistant's tokens and the share
  of replies that end their turn (their ``validation.jsonl``);
- ``preferences``: preference snapshots: held-out pairwise accuracy of each reward model;
- ``judge`` and ``baseline``: a reward model and a checkpoint (typically the parent): each
  checkpoint's win rate against the baseline's replies to the same held-out prompts: those PPO's
  monitor answers from ``prompts`` (:func:`training.core.ppo.load_prompts`), else the held-out
  conversations cut before their last reply, else the problems.

Output: ``evaluation.json`` with every figure and each problem's greedy answer, and
``orchard.json``. The result lists one row per checkpoint with the figures that apply to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.core import evalsuite
from training.core.reporting import Cancelled, Reporter

SUMMARY_KEYS = (
    "pass@1",
    "pass@k",
    "accuracy",
    "scored",
    "mc_accuracy",
    "correct_rate",
    "wrong_rate",
    "refusal_rate",
    "val_loss",
    "val_bpb",
    "sft_loss",
    "stop_rate",
    "rm_accuracy",
    "win_rate",
)
NOTHING_TO_MEASURE = (
    "an evaluation needs something to measure besides the checkpoints: problem snapshots, a "
    "corpus (held-out text), SFT conversations, preference pairs (for reward models), or a judge "
    "reward model with a baseline checkpoint (win rate)"
)


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
    text_hold_out_every: int = Field(
        20,
        ge=1,
        description=(
            "Held-out text: every Nth document of the corpus, pretraining's rule (N = "
            "round(1 / val_fraction); 20 for its default 0.05)."
        ),
    )
    max_text_tokens: int = Field(
        16_384, ge=16, le=10_000_000, description="Tokens of held-out text scored at most."
    )
    max_conversations: int = Field(
        64, ge=1, le=10_000, description="Held-out conversations scored at most."
    )
    max_prompts: int = Field(
        16, ge=1, le=1_000, description="Prompts answered for the stop rate and the win rate."
    )


@dataclass
class Plan:
    """What the inputs allow: the data each figure needs, read once for every checkpoint."""

    problems: list[dict[str, Any]] = field(default_factory=list)
    text: list[Path] = field(default_factory=list)
    conversations: list[list[dict[str, Any]]] = field(default_factory=list)
    preferences: list[Path] = field(default_factory=list)
    judge: Path | None = None
    baseline: Path | None = None
    prompts: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def measures_something(self) -> bool:
        wins = self.judge is not None and self.baseline is not None and bool(self.prompts)
        return bool(self.problems or self.text or self.conversations or self.preferences or wins)


def plan(cfg: EvaluateConfig, inputs: dict[str, list[Path]]) -> Plan:
    """Read the inputs; ValueError when nothing can be measured or an input is unusable."""
    from training.core.ppo import load_prompts
    from training.core.problems import read_problems
    from training.core.sft import Conversation, held_out_prompts, read_conversations

    folders = [Path(p) for p in inputs.get("problems") or []]
    problems = [p for folder in folders for p in read_problems(folder)[cfg.split]]
    if folders and not problems:
        raise ValueError(
            f"the problem snapshots have no {cfg.split} problems: choose the other split"
        )
    conversations = [
        conv.messages
        for folder in inputs.get("conversations") or []
        if (Path(folder) / "validation.jsonl").is_file()
        for conv in read_conversations(Path(folder) / "validation.jsonl")
    ][: cfg.max_conversations]
    judge = _single(inputs, "judge")
    baseline = _single(inputs, "baseline")
    prompt_paths = [Path(p) for p in inputs.get("prompts") or []]
    prompts = load_prompts(prompt_paths, cfg.max_prompts).monitor if prompt_paths else []
    if not prompts:
        prompts = held_out_prompts(
            [Conversation(messages=m, where="") for m in conversations], cfg.max_prompts
        )
    if not prompts and problems:
        from training.core.grpo import prompt_messages

        prompts = [prompt_messages(p, cfg.system_prompt) for p in problems[: cfg.max_prompts]]
    result = Plan(
        problems=problems[: cfg.max_problems],
        text=[Path(p) for p in inputs.get("text") or []],
        conversations=conversations,
        preferences=[Path(p) for p in inputs.get("preferences") or []],
        judge=judge,
        baseline=baseline,
        prompts=prompts if judge and baseline else [],
    )
    if (judge is None) != (baseline is None):
        raise ValueError("a win rate needs both a judge (a reward model) and a baseline checkpoint")
    if judge is not None and evalsuite.model_role(judge) != "reward":
        raise ValueError(f"the judge {judge} is not a reward model")
    if not result.measures_something:
        raise ValueError(NOTHING_TO_MEASURE)
    return result


def _single(inputs: dict[str, list[Path]], key: str) -> Path | None:
    paths = [Path(p) for p in inputs.get(key) or []]
    return paths[0] if paths else None


def run(
    cfg: EvaluateConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    checkpoints = [Path(p) for p in inputs.get("checkpoints") or []]
    if not checkpoints:
        raise ValueError("an evaluation needs at least one checkpoint")
    todo = plan(cfg, inputs)
    baseline_replies = _baseline_replies(cfg, todo)
    judge = evalsuite.reward_judge(todo.judge) if todo.prompts and todo.judge else None
    results = []
    for index, folder in enumerate(checkpoints):
        if reporter.should_stop():
            raise Cancelled()
        reporter.progress(index, len(checkpoints), f"checkpoint {index + 1} of {len(checkpoints)}")
        row = {"checkpoint": index, **measure(folder, cfg, todo, baseline_replies, judge, reporter)}
        numbers = {f"checkpoint{index}/{k}": row[k] for k in SUMMARY_KEYS if _number(row.get(k))}
        if numbers:
            reporter.metrics(numbers, index)
        results.append(row)
    reporter.progress(len(checkpoints), len(checkpoints), "done")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    summary = {
        "problems": len(todo.problems),
        "split": cfg.split,
        "k": cfg.k,
        "measured": _measured(todo),
        "checkpoints": [
            {"checkpoint": r["checkpoint"], "role": r["role"]}
            | {key: r[key] for key in (*SUMMARY_KEYS, "win_examples") if key in r}
            for r in results
        ],
    }
    manifest = {"kind": "evaluation", "config": cfg.model_dump(), "stats": summary}
    (out_dir / "orchard.json").write_text(json.dumps(manifest, indent=1))
    return summary


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _measured(todo: Plan) -> list[str]:
    parts = {
        "problems": bool(todo.problems),
        "text": bool(todo.text),
        "conversations": bool(todo.conversations),
        "preferences": bool(todo.preferences),
        "win_rate": bool(todo.prompts),
    }
    return [name for name, present in parts.items() if present]


def _baseline_replies(cfg: EvaluateConfig, todo: Plan) -> list[dict[str, Any] | None]:
    if not todo.prompts or todo.baseline is None:
        return []
    from training.core.sft import generate_replies, load_for_generation

    model, tok = load_for_generation(todo.baseline)
    return generate_replies(model, tok, todo.prompts, cfg.max_new_tokens)


def measure(
    folder: Path,
    cfg: EvaluateConfig,
    todo: Plan,
    baseline_replies: list[dict[str, Any] | None],
    judge: Callable[[list[list[dict[str, Any]]]], list[float]] | None,
    reporter: Reporter,
) -> dict[str, Any]:
    """Every figure that applies to one checkpoint (``judge`` scores replies for the win rate)."""
    role = evalsuite.model_role(folder)
    row: dict[str, Any] = {"role": role}
    if role == "reward":
        if todo.preferences:
            row.update(evalsuite.reward_accuracy(folder, todo.preferences))
        return row
    from training.core.sft import generate_replies, load_for_generation

    model, tok = load_for_generation(folder)
    if todo.problems:
        row.update(_problem_figures(model, tok, cfg, todo.problems, reporter))
    if todo.text:
        documents = evalsuite.held_out_documents(todo.text, cfg.text_hold_out_every)
        row.update(evalsuite.text_figures(model, tok, documents, max_tokens=cfg.max_text_tokens))
    if todo.conversations:
        row.update(
            evalsuite.conversation_figures(
                model,
                tok,
                todo.conversations,
                max_new_tokens=cfg.max_new_tokens,
                stop_prompts=cfg.max_prompts,
            )
        )
    if judge is not None:
        replies = generate_replies(model, tok, todo.prompts, cfg.max_new_tokens)
        row.update(evalsuite.win_rate(replies, baseline_replies, todo.prompts, judge))
        row["win_examples"] = _examples(todo.prompts, replies, baseline_replies)
    return row


def _problem_figures(
    model: Any, tok: Any, cfg: EvaluateConfig, problems: list[dict[str, Any]], reporter: Reporter
) -> dict[str, Any]:
    from training.core.grpo import evaluate_problems

    figures = evaluate_problems(
        model,
        tok,
        problems,
        k=cfg.k,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        system_prompt=cfg.system_prompt,
        should_stop=reporter.should_stop,
    )
    if reporter.should_stop():
        raise Cancelled()
    figures.update(evalsuite.factuality_figures(figures["per_problem"]))
    choice = evalsuite.choice_figures(model, tok, problems, system_prompt=cfg.system_prompt)
    if choice["mc_scored"]:
        figures.update(choice)
    return figures


def _examples(
    prompts: list[list[dict[str, Any]]],
    replies: list[dict[str, Any] | None],
    baseline: list[dict[str, Any] | None],
    count: int = 4,
) -> list[dict[str, Any]]:
    """A few prompts with both replies, so a person can see what the judge compared."""
    rows = []
    for prompt, mine, theirs in zip(prompts, replies, baseline, strict=True):
        if mine is not None and theirs is not None:
            rows.append(
                {
                    "prompt": prompt[-1]["content"],
                    "reply": mine["reply"],
                    "baseline": theirs["reply"],
                }
            )
        if len(rows) == count:
            break
    return rows
