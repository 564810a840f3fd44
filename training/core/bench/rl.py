"""``python -m training.core.bench rl``: reinforcement-learning step throughput on a tiny Llama.

    python -m training.core.bench rl            # about a minute on a quiet 2-core CPU
    python -m training.core.bench rl --quick    # about 15 s: two timed steps per side

Everything is built in a temporary folder, nothing is downloaded: a byte-level BPE tokenizer
(512 tokens, :mod:`training.core.tokenizer`, trained in a second on generated arithmetic), a
randomly initialised ``LlamaForCausalLM`` (by default width 128, 4 layers, 4 heads, context 256:
about 0.9M parameters, the size STACK.md section 8 times things on), 64 generated arithmetic
problems (:func:`training.core.problems.arithmetic_problems`, difficulty 2, written as a problem
snapshot) and, for PPO, a random 2-layer ``LlamaForSequenceClassification`` reward model.

GRPO. The same problems, the same model folder, the same reward (the problems' ``number``
checker), the same work per step (``--batch-size`` completions: ``batch_size / generations``
problems x ``--generations`` replies of at most ``--completion-length`` tokens, then one
update), on the CPU, in the same process, two ways:

- ``grpo``: Orchard's ``grpo`` stage: :func:`training.core.grpo.prepare` with
  :class:`~training.core.grpo.GRPOConfig`'s defaults apart from those sizes, ``max_steps``,
  ``device="cpu"`` and ``dtype="fp32"`` (so beta 0.04 with a frozen reference model, no
  activation checkpointing, metrics logged every step), then ``trainer.train()``. fp32 like TRL's
  side, so that on a CPU with native bf16 the ratio still compares recipes, not precisions;
- ``trl_default``: TRL's ``GRPOTrainer`` with ``trl.GRPOConfig``'s defaults, overriding only what
  the CPU needs (``use_cpu``, ``bf16=False``, ``report_to="none"``) and the same sizes and
  ``max_steps``: so activation checkpointing on, beta 0 (no reference model), learning rate 1e-6.

The two trainers run in two threads that take strict turns, one optimizer step each (grpo,
trl, grpo, trl, ...), so that load from other processes on a shared machine hits both alike and
they never run at the same time. A step's time runs from when its trainer gets the turn to the
end of its optimizer step (``on_step_end``): the rollout (generation), the reward, the reference
forward pass (if any), the update and the previous step's logging. Each trainer's first step is a
warm-up and is not counted. ``*_samples_per_second`` is completions per step over the median
step time of that side; ``ratio`` is Orchard's over TRL's defaults'; ``ratio_median_of_pairs``
is the median over adjacent step pairs of the same ratio, the figure to trust on a busy machine.

PPO. :func:`training.core.ppo.rollout_throughput` (one warm-up step, then ``--steps`` steps; its
figures are means over those steps) of Orchard's ``ppo`` stage with its defaults apart from
``batch_size`` (= the GRPO completions per step: one reply per prompt), ``max_new_tokens`` (= the
completion length), ``temperature`` (= GRPO's), ``monitor_every=0``, the CPU and fp32, on the same
policy, with the problems' prompts and the tiny reward model (also the value model's start).
``ppo_vs_grpo`` is its samples per second over the Orchard GRPO completions per second measured
in the same run: a same-run reference point, not a contest (PPO also trains a value model, makes
``ppo_epochs`` passes over every batch, and samples with Orchard's Engine instead of
``model.generate``); it runs after the GRPO pair, so it is not shielded from load changes.

Options: ``--steps N`` timed steps per side (default 16; ``--quick``: 2), ``--completion-length``
(64), ``--batch-size`` (16), ``--generations`` (8), ``--width`` (128), ``--layers`` (4),
``--threads N`` (torch CPU threads, default 1: a model this small runs about as fast on one
thread, and one thread is far less disturbed by other processes on a small shared machine; 0
keeps torch's default), ``--no-ppo``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel

VOCAB = 512
HEADS = 4
CONTEXT = 256
PROBLEMS = 64
DIFFICULTY = 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
SIDES = ("grpo", "trl_default")  # the order of the turns


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.core.bench rl")
    parser.add_argument("--quick", action="store_true", help="two timed steps per side")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side")
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="completions per step")
    parser.add_argument("--generations", type=int, default=8, help="completions per problem")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    parser.add_argument("--no-ppo", dest="ppo", action="store_false", help="skip the PPO part")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 16
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.batch_size % args.generations:
        parser.error("--batch-size must be a multiple of --generations")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(list(argv or []))
    import torch
    from transformers.utils import logging as hf_logging

    from training.core.device import describe_device

    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
            work = _Workspace.build(Path(tmp), args)
            sides = {"grpo": _orchard_grpo(work, args), "trl_default": _trl_default(work, args)}
            _take_turns(sides)
            ppo = _run_ppo(work, args) if args.ppo else None
        device = describe_device(torch.device("cpu"))
    finally:
        hf_logging.set_verbosity(verbosity)
        torch.set_num_threads(threads_before)
    return _report(args, work, sides, ppo, device, started)


# ------------------------------------------------------------------------------- workspace


@dataclass
class _Workspace:
    root: Path
    model_dir: Path
    reward_dir: Path
    problems_dir: Path
    problems: list[dict[str, Any]]
    parameters: int
    reward_parameters: int

    @classmethod
    def build(cls, root: Path, args: argparse.Namespace) -> _Workspace:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

        from training.core.problems import (
            arithmetic_problems,
            read_problems,
            write_problem_snapshot,
        )
        from training.core.reporting import RecordingReporter
        from training.core.tokenizer import TokenizerConfig
        from training.core.tokenizer import run as train_tokenizer

        problems = arithmetic_problems(PROBLEMS, difficulty=DIFFICULTY, seed=0)
        problems_dir = root / "problems"
        write_problem_snapshot(problems, problems_dir, validation_fraction=0.1, salt="bench")

        # The tokenizer learns from the kind of text it will see: questions and answers.
        corpus = root / "corpus.txt"
        more = arithmetic_problems(400, difficulty=DIFFICULTY, seed=1)
        corpus.write_text(
            "\n\n".join(f"{p['question']} The answer is {p['answer']}." for p in problems + more)
        )
        tok_dir = root / "tokenizer"
        train_tokenizer(
            TokenizerConfig(vocab_size=VOCAB), {"corpus": [corpus]}, tok_dir, RecordingReporter()
        )

        common = {
            "vocab_size": VOCAB,
            "num_attention_heads": HEADS,
            "num_key_value_heads": HEADS,
            "max_position_embeddings": CONTEXT,
            "bos_token_id": 0,
            "pad_token_id": 1,
            "eos_token_id": 3,
            "tie_word_embeddings": True,
        }
        torch.manual_seed(0)
        policy = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=args.width,
                intermediate_size=3 * args.width,
                num_hidden_layers=args.layers,
                **common,
            )
        )
        reward = LlamaForSequenceClassification(
            LlamaConfig(
                hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_labels=1, **common
            )
        )
        model_dir, reward_dir = root / "policy", root / "reward"
        for model, folder in ((policy, model_dir), (reward, reward_dir)):
            model.save_pretrained(folder)
            for name in TOKENIZER_FILES:
                (folder / name).write_bytes((tok_dir / name).read_bytes())
        return cls(
            root=root,
            model_dir=model_dir,
            reward_dir=reward_dir,
            problems_dir=problems_dir,
            problems=read_problems(problems_dir)["train"],
            parameters=_count(policy),
            reward_parameters=_count(reward),
        )


def _count(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ GRPO


@dataclass
class _Side:
    """One GRPO trainer, ready to train, and what its run measured."""

    trainer: Any
    setup_seconds: float
    completion_lengths: Callable[[], list[float]]  # mean completion tokens of every step
    step_seconds: list[float] | None = None  # every step, the warm-up first

    @property
    def counted(self) -> list[float]:
        return (self.step_seconds or [])[1:]


def _orchard_config(args: argparse.Namespace) -> Any:
    from training.core.grpo import GRPOConfig

    return GRPOConfig(
        num_generations=args.generations,
        batch_size=args.batch_size,
        max_completion_length=args.completion_length,
        max_steps=args.steps + 1,
        device="cpu",
        dtype="fp32",
    )


def _orchard_grpo(work: _Workspace, args: argparse.Namespace) -> _Side:
    from training.core.grpo import prepare
    from training.core.reporting import RecordingReporter

    began = time.perf_counter()
    inputs = {"base": [work.model_dir], "problems": [work.problems_dir]}
    session = prepare(
        _orchard_config(args), inputs, work.root / "grpo" / "checkpoints", RecordingReporter()
    )

    def lengths() -> list[float]:  # the stage logs every step
        logged = {
            entry["step"]: float(entry["completions/mean_length"])
            for entry in session.trainer.state.log_history
            if "completions/mean_length" in entry
        }
        return [n for _, n in sorted(logged.items())]

    return _Side(session.trainer, time.perf_counter() - began, lengths)


def _trl_default_config(args: argparse.Namespace, output_dir: Path) -> Any:
    from trl import GRPOConfig as TRLGRPOConfig

    return TRLGRPOConfig(
        output_dir=str(output_dir),
        # what the CPU needs (TRL defaults to bf16 and reports to every installed tracker)
        use_cpu=True,
        bf16=False,
        report_to="none",
        # the same work as Orchard's side
        per_device_train_batch_size=args.batch_size,
        num_generations=args.generations,
        max_completion_length=args.completion_length,
        max_steps=args.steps + 1,
    )


def _trl_default(work: _Workspace, args: argparse.Namespace) -> _Side:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from training.core.checkers import check
    from training.core.grpo import completion_text, to_dataset

    began = time.perf_counter()
    problems = work.problems
    lengths: list[float] = []

    def correctness(
        completions: list[Any], problem_index: list[int], completion_ids: Any, **kw: Any
    ) -> list[float]:
        """The same reward as Orchard's side: 1.0 when the problem's checker accepts."""
        lengths.append(statistics.fmean(len(ids) for ids in completion_ids))
        texts = [completion_text(c) for c in completions]
        return [
            1.0 if check(problems[i], t).correct else 0.0
            for i, t in zip(problem_index, texts, strict=True)
        ]

    tokenizer = AutoTokenizer.from_pretrained(work.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        work.model_dir, dtype=torch.float32, local_files_only=True
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[correctness],
        args=_trl_default_config(args, work.root / "trl"),
        train_dataset=to_dataset(problems, None),
        processing_class=tokenizer,
    )
    return _Side(trainer, time.perf_counter() - began, lambda: list(lengths))


class _Turns:
    """Strict turns between named threads: one runs while the others wait."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.turn = 0
        self.finished: set[str] = set()
        self.condition = threading.Condition()

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.names[self.turn] == name)

    def hand_on(self, name: str, *, finished: bool = False) -> None:
        with self.condition:
            if finished:
                self.finished.add(name)
            if self.names[self.turn] == name and len(self.finished) < len(self.names):
                self.turn = (self.turn + 1) % len(self.names)
                while self.names[self.turn] in self.finished:  # skip those that are done
                    self.turn = (self.turn + 1) % len(self.names)
            self.condition.notify_all()


def _turn_clock(name: str, turns: _Turns) -> Any:
    """A TrainerCallback that waits for its turn, times its step, and hands the turn on."""
    from transformers import TrainerCallback

    class TurnClock(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.began = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            turns.wait(name)
            self.began = time.perf_counter()
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.steps.append(time.perf_counter() - self.began)
            if state.global_step < state.max_steps:  # after the last, train() saves: not timed
                turns.hand_on(name)
                turns.wait(name)
                self.began = time.perf_counter()
            return control

    return TurnClock()


def _take_turns(sides: dict[str, _Side]) -> None:
    """Train every side in its own thread, one optimizer step at a time each, in turn."""
    import torch

    turns = _Turns(list(sides))
    clocks = {name: _turn_clock(name, turns) for name in sides}
    errors: dict[str, BaseException] = {}
    threads_per_trainer = torch.get_num_threads()

    def train(name: str) -> None:
        torch.set_num_threads(threads_per_trainer)
        try:
            sides[name].trainer.add_callback(clocks[name])
            sides[name].trainer.train()
        except BaseException as exc:  # reported by the main thread
            errors[name] = exc
        finally:
            turns.hand_on(name, finished=True)

    workers = [threading.Thread(target=train, args=(name,), name=name) for name in sides]
    with contextlib.redirect_stdout(sys.stderr):  # TRL's progress and logs; stdout is the JSON's
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    for name, error in errors.items():
        raise RuntimeError(f"the {name} trainer failed: {error}") from error
    for name, side in sides.items():
        side.step_seconds = clocks[name].steps


# ------------------------------------------------------------------------------------- PPO


def _ppo_config(args: argparse.Namespace) -> Any:
    from training.core.ppo import PPOConfig

    return PPOConfig(
        batch_size=args.batch_size,
        max_new_tokens=args.completion_length,
        temperature=_orchard_config(args).temperature,
        monitor_every=0,
        device="cpu",
        dtype="fp32",
    )


def _run_ppo(work: _Workspace, args: argparse.Namespace) -> dict[str, Any]:
    from training.core.ppo import rollout_throughput

    cfg = _ppo_config(args)
    inputs = {
        "policy": [work.model_dir],
        "reward": [work.reward_dir],
        "prompts": [work.problems_dir],
    }
    began = time.perf_counter()
    speed = rollout_throughput(cfg, inputs, steps=args.steps)
    keys = ("batch_size", "mini_batch_size", "ppo_epochs", "max_new_tokens", "temperature")
    return {
        "config": {key: getattr(cfg, key) for key in keys},
        "wall_seconds": round(time.perf_counter() - began, 2),
        **speed,
    }


# ---------------------------------------------------------------------------------- report


def _side_report(side: _Side, args: argparse.Namespace) -> dict[str, Any]:
    counted = side.counted
    median = statistics.median(counted)
    lengths = side.completion_lengths()[1:]  # the warm-up step's left out, like its time
    tokens = statistics.fmean(lengths) if lengths else None
    return {
        "samples_per_second": args.batch_size / median,
        "median_step_seconds": round(median, 4),
        "best_step_seconds": round(min(counted), 4),
        "step_seconds": [round(s, 4) for s in counted],
        "warmup_step_seconds": round((side.step_seconds or [0.0])[0], 3),
        "setup_seconds": round(side.setup_seconds, 3),
        "mean_completion_tokens": round(tokens, 2) if tokens else None,
        "completion_tokens_per_second": args.batch_size * tokens / median if tokens else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _report(
    args: argparse.Namespace,
    work: _Workspace,
    sides: dict[str, _Side],
    ppo: dict[str, Any] | None,
    device: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    orchard = _orchard_config(args)
    grpo = _side_report(sides["grpo"], args)
    trl = _side_report(sides["trl_default"], args)
    pairs = zip(sides["grpo"].counted, sides["trl_default"].counted, strict=False)
    result: dict[str, Any] = {
        "benchmark": "rl",
        "quick": args.quick,
        "device": device,
        "model": {
            "architecture": "LlamaForCausalLM (random weights)",
            "parameters": work.parameters,
            "width": args.width,
            "layers": args.layers,
            "heads": HEADS,
            "vocab": VOCAB,
            "context": CONTEXT,
        },
        "reward_model_parameters": work.reward_parameters,
        "workload": {
            "problems": len(work.problems),
            "problem_source": f"arithmetic_problems(difficulty={DIFFICULTY})",
            "completions_per_step": args.batch_size,
            "num_generations": args.generations,
            "max_completion_length": args.completion_length,
            "timed_steps_per_side": args.steps,
            "warmup_steps_per_side": 1,
        },
        "grpo": {
            "recipe": (
                "training.core.grpo.prepare + trainer.train(): GRPOConfig defaults "
                f"(beta {orchard.beta}, learning rate {orchard.learning_rate}, no activation "
                "checkpointing, fp32 on the CPU, log every step) with the sizes above"
            ),
            **grpo,
        },
        "trl_default": {
            "recipe": (
                "trl.GRPOTrainer with trl.GRPOConfig defaults (activation checkpointing on, "
                "beta 0, learning rate 1e-6) + use_cpu, bf16=False, report_to='none' and the "
                "sizes above"
            ),
            **trl,
        },
        "grpo_samples_per_second": grpo["samples_per_second"],
        "trl_default_samples_per_second": trl["samples_per_second"],
        "ratio": grpo["samples_per_second"] / trl["samples_per_second"],
        "ratio_median_of_pairs": statistics.median(t / o for o, t in pairs),
        "ratio_per_completion_token": _ratio(
            grpo["completion_tokens_per_second"], trl["completion_tokens_per_second"]
        ),
    }
    if ppo is not None:
        result["ppo"] = ppo
        speed = ppo.get("samples_per_second")
        result["ppo_samples_per_second"] = speed
        result["ppo_vs_grpo"] = speed / grpo["samples_per_second"] if speed else None
    result["goal"] = (
        "ratio > 1: Orchard's grpo stage, as configured, trains on more completions per second "
        "than TRL's GRPOTrainer with its defaults on the same work (same model, problems, "
        "reward, completions per step and length cap), both measured in this run. No numeric "
        "target is set; compare the ratios across machines, never the absolute figures."
    )
    result["notes"] = [
        "samples_per_second = completions per optimizer step / median step time; a step is "
        "rollout (generation) + reward + reference forward (if any) + update + logging; each "
        "side's first step is a warm-up and is not counted.",
        "ratio = grpo_samples_per_second / trl_default_samples_per_second (Orchard over TRL "
        "defaults; the two trainers take strict turns, one step each, in one process); "
        "ratio_median_of_pairs = median over adjacent step pairs of trl step time / grpo step "
        "time, less sensitive to load from other processes; ratio_per_completion_token = the "
        "same with completion tokens per second, which corrects for the sides having drawn "
        "replies of different mean length (most replies of a random model run to the cap).",
        "The sides differ in what they compute: Orchard runs beta 0.04 (one more forward pass "
        "of a frozen reference model per step) without activation checkpointing; TRL's "
        "defaults run beta 0 with activation checkpointing (the training forward pass again "
        "in the backward). Both sample with model.generate. mean_completion_tokens shows "
        "whether both drew replies of similar length (the work depends on it).",
        "ppo_vs_grpo = ppo_samples_per_second (training.core.ppo.rollout_throughput: mean over "
        "its timed steps after one warm-up; one reply per prompt, same policy, same reply cap, "
        "same samples per step) / grpo_samples_per_second from this run. A same-run reference "
        "point, not a like-for-like contest: PPO also scores with a reward model, trains a "
        "value model, makes ppo_epochs passes per batch and samples with Orchard's Engine; "
        "ppo.rollout_seconds and ppo.update_seconds give its split.",
    ]
    for name, value in list(result.items()):
        if isinstance(value, float) and math.isfinite(value):
            result[name] = round(value, 4)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result
