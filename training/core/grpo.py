"""The ``grpo`` stage: reinforcement learning with verifiable rewards, with TRL's GRPOTrainer.

Inputs: ``inputs["base"]``, exactly one Hugging Face model folder (``config.json``,
``model.safetensors``, the tokenizer files and ``chat_template.jinja``), typically the output of
the ``sft`` stage; and ``inputs["problems"]``, one or more problem snapshot folders
(:mod:`training.core.problems`): ``train.jsonl`` and ``validation.jsonl`` with one problem per
line::

    {"prompt": [{"role": "user", "content": "What is 37 + 48?"}], "answer": "85",
     "checker": "number"}

(``"choices"`` for ``"choice"`` problems, ``"checker_code"`` for ``"python"`` ones).

Training. For every problem in a step the policy samples ``num_generations`` replies at
``temperature`` (``max_completion_length`` tokens at most); each reply's reward is 1.0 when the
problem's checker (:mod:`training.core.checkers`) says it is right and 0.0 otherwise, plus
``format_reward_weight`` times 1.0 when it marks its answer (``#### 42``, ``\\boxed{42}``,
"answer: 42"). GRPO compares each reply with the others of its group (the advantage is its
reward minus the group mean, divided by the group's standard deviation with
``scale_rewards="group"``) and raises the probability of the better ones; ``beta`` > 0 keeps the
policy near the base with a KL penalty against a frozen copy (and logs ``kl``). A step trains on
``batch_size x gradient_accumulation_steps`` replies, that is on that many divided by
``num_generations`` problems: the product must be a multiple of ``num_generations`` (TRL's rule;
the config refuses other values with the fix).

Reported metrics (each logging step): ``reward/mean``, ``reward/std``, ``train/accuracy`` (share
of the step's replies the checker accepts), ``completion/mean_length``,
``completion/clipped_ratio`` (replies cut at ``max_completion_length``), ``kl``, ``train/loss``,
``train/entropy``, ``train/grad_norm``, ``train/lr``, ``reward/zero_std_fraction`` (problems whose
replies all got the same reward, which teach nothing) and ``reward/format`` (with a format
reward). Evaluation, before training, every ``eval_every`` steps and at the end, on up to
``eval_problems`` held-out problems (the validation splits; the training problems when there
are none), with :func:`evaluate_problems`: ``val/pass@1`` (greedy reply correct), ``val/pass@k``
(at least one of k samples correct, the unbiased estimate from ``eval_samples`` samples) and
``val/accuracy`` (share of correct samples). Each evaluation is also recorded as
``evaluation``; every ``sample_every`` steps (and at step 1) the step's replies to a few
problems are recorded as ``rollouts``: ``{"step", "problems": [{"question", "answer",
"samples": [{"text", "reward", "correct", "extracted"}]}]}``.

Divergence. A loss or gradient norm that is not finite, a reward that is NaN, or weights that
turned NaN stop the run with ValueError ("training diverged at step N: loss is nan; lower the
learning rate") before the optimizer applies the step; the last complete checkpoint stays.

Checkpoints and cancelling work as in :mod:`training.core.sft` (and reuse
:mod:`training.core.trl_common` and :mod:`training.core.hf_checkpoints`): ``checkpoint-N``
folders under ``work_dir/checkpoints`` every ``save_every`` steps, when
``reporter.should_stop()`` turns true (the run then returns ``stopped_early``) and at the end;
only folders marked ``COMPLETE`` after their save are resumed from, and a new run in the same
``work_dir`` continues from the newest one.

Output in ``out_dir``: a full causal-LM folder (``config.json``, ``model.safetensors``,
``generation_config.json`` whose eos includes ``<|im_end|>``, the tokenizer files,
``chat_template.jinja``) and ``orchard.json`` written last: ``{"kind": "checkpoint", "stage":
"grpo", "config", "stats"}``.

From the shell::

    python -m training.core grpo --config cfg.json --input base=out/sft \\
        --input problems=data/gsm8k --out out/grpo

Simplifications:

- Full fine-tuning only (no LoRA); one process, generation with transformers inside TRL (no
  vLLM); ``num_iterations`` is 1 (each batch of replies is used for one update).
- Problems whose prompt leaves less than ``max_completion_length`` tokens in the context window
  are dropped (and counted); ``max_completion_length`` is lowered to half the window when it
  does not fit at all.
- The base's chat template renders the prompts; a ``system_prompt`` is put before problems that
  have no system message of their own.
- Python checkers run one subprocess per reply (about 20 ms each).
- On resume the evaluation "before training" is the one recorded in the checkpoint.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.core.checkers import CheckResult, check, has_answer_marker
from training.core.checkpoints import read_complete
from training.core.device import DevicePreference, DtypePreference, device_field, dtype_field
from training.core.problems import read_problems
from training.core.reporting import Cancelled, Reporter
from training.core.trl_common import (
    ReporterBridge,
    StageRun,
    TrainerSession,
    base_dir,
    check_vocab,
    common_training_arguments,
    context_window,
    count_parameters,
    every,
    load_causal_lm,
    load_chat_tokenizer,
    raise_field_error,
    require_eos,
    set_generation_defaults,
    snapshot_dirs,
    spread,
    start_training,
    write_model_folder,
)

if TYPE_CHECKING:  # torch, transformers and trl load only when a run starts
    import torch
    from transformers import (
        PreTrainedTokenizerBase,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )

ROLLOUT_TEXT_LIMIT = 2000  # characters of each reply kept in a rollouts record
EVALUATION_RECORD_PROBLEMS = 16  # per-problem rows kept in an evaluation record
ENGINE_MAX_N = 16  # SamplingParams.n's limit: more samples are drawn in several calls
METRIC_NAMES = {  # TRL's log keys -> the reporter's metric names
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "learning_rate": "train/lr",
    "reward": "reward/mean",
    "reward_std": "reward/std",
    "accuracy": "train/accuracy",
    "completions/mean_length": "completion/mean_length",
    "completions/clipped_ratio": "completion/clipped_ratio",
    "kl": "kl",
    "entropy": "train/entropy",
    "frac_reward_zero_std": "reward/zero_std_fraction",
    "rewards/answer_format/mean": "reward/format",
}
MUST_BE_FINITE = ("loss", "grad_norm", "reward")  # in a log, or training diverged


class GRPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_generations: int = Field(
        8,
        ge=2,
        le=64,
        description=(
            "Replies sampled per problem; GRPO learns from the differences between them, so "
            "at least 2."
        ),
    )
    batch_size: int = Field(
        16,
        ge=2,
        le=4096,
        description=(
            "Replies per micro-batch. batch_size x gradient_accumulation_steps must be a "
            "multiple of num_generations: a step trains on that many replies to that many "
            "divided by num_generations problems."
        ),
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="Micro-batches whose gradients are summed before each optimizer step.",
    )
    max_completion_length: int = Field(
        64,
        ge=1,
        le=32_768,
        description="Most tokens per reply; longer replies are cut (and usually wrong).",
    )
    temperature: float = Field(
        1.0,
        gt=0.0,
        le=5.0,
        description="Sampling temperature of the replies; below 1 fewer, less varied guesses.",
    )
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling for the replies; 1 turns it off."
    )
    beta: float = Field(
        0.04,
        ge=0.0,
        le=10.0,
        description=(
            "Weight of the KL penalty that keeps the policy near the base model (0: no "
            "reference model, less memory, no kl metric)."
        ),
    )
    learning_rate: float = Field(2e-5, gt=0, le=1.0, description="Peak learning rate of AdamW.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="How the learning rate changes after warmup."
    )
    warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Steps of linear warmup to the peak learning rate."
    )
    max_steps: int = Field(200, ge=1, le=10_000_000, description="Optimizer steps to train.")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo",
        description=(
            "How token losses are averaged: dapo (TRL's default: over all tokens of the batch), "
            "grpo (per reply, then over replies: favours short replies), dr_grpo (by a "
            "constant), bnpo (over the micro-batch's tokens)."
        ),
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description=(
            "Divide the advantages by the reward's standard deviation in each problem's group, "
            "in the whole batch, or not at all."
        ),
    )
    format_reward_weight: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description=(
            "Extra reward, times this weight, for a reply that marks its answer (#### 42, "
            "\\boxed{42}, answer: 42); 0 turns it off."
        ),
    )
    system_prompt: str | None = Field(
        None,
        max_length=4000,
        description=(
            'System message before each problem, e.g. "Answer with #### <number> at the end."'
        ),
    )
    log_every: int = Field(1, ge=1, le=100_000, description="Report the metrics every N steps.")
    eval_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Measure held-out accuracy every N steps (0: only before and after training).",
    )
    eval_problems: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Evaluation uses at most this many held-out problems (a fixed selection).",
    )
    eval_k: int = Field(4, ge=1, le=64, description="k of pass@k.")
    eval_samples: int = Field(
        8,
        ge=1,
        le=64,
        description="Replies sampled per held-out problem to estimate pass@k (at least eval_k).",
    )
    sample_every: int = Field(
        10,
        ge=0,
        le=1_000_000,
        description="Record the replies to a few problems every N steps (0: only at step 1).",
    )
    sample_problems: int = Field(
        4, ge=1, le=64, description="Problems per rollouts record, each with all its replies."
    )
    save_every: int = Field(
        50,
        ge=1,
        le=1_000_000,
        description="Save a resumable checkpoint every N steps (and at the end).",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="How many of the newest checkpoints to keep."
    )
    seed: int = Field(
        1337, ge=0, le=2**31 - 1, description="Seed for the problem order and the sampling."
    )
    device: DevicePreference = device_field()
    dtype: DtypePreference = dtype_field()

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        replies = self.batch_size * self.gradient_accumulation_steps
        if replies % self.num_generations:
            fit = -(-self.batch_size // self.num_generations) * self.num_generations
            raise_field_error(
                self,
                "batch_size",
                self.batch_size,
                "batch_not_divisible",
                "batch_size x gradient_accumulation_steps ({replies}) must be a multiple of "
                "num_generations ({num_generations}), so that every problem's replies are "
                "compared within one step: try batch_size {fit}",
                {"replies": replies, "num_generations": self.num_generations, "fit": fit},
            )
        if self.eval_samples < self.eval_k:
            raise_field_error(
                self,
                "eval_samples",
                self.eval_samples,
                "too_few_samples",
                "eval_samples ({samples}) must be at least eval_k ({k}) to estimate pass@{k}",
                {"samples": self.eval_samples, "k": self.eval_k},
            )
        return self

    @property
    def problems_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps // self.num_generations


def diverged_message(step: int, what: str, value: float, advice: str = "") -> str:
    advice = advice or "lower the learning rate"
    return f"training diverged at step {step}: {what} is {value}; {advice}"


# --------------------------------------------------------------------------------- rewards


def correctness_reward(result: CheckResult) -> float:
    """The checker's verdict as a reward: 1.0 correct, 0.0 otherwise."""
    return 1.0 if result.correct else 0.0


def format_reward(text: str) -> float:
    """1.0 when the reply marks its answer explicitly (``#### 42``, ``\\boxed{42}``, ...)."""
    return 1.0 if has_answer_marker(text) else 0.0


def completion_text(completion: Any) -> str:
    """The reply's text, from TRL's conversational (``[{"role", "content"}]``) or plain form."""
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


# ------------------------------------------------------------------------------------ data


@dataclass
class ProblemData:
    """Problems after reading, prompt rendering and the length filter."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]  # what evaluation uses (held out, or training problems)
    held_out: bool  # whether ``validation`` really is held out
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    dropped_too_long: int = 0


def prompt_messages(problem: dict[str, Any], system_prompt: str | None) -> list[dict[str, Any]]:
    messages = problem.get("prompt") or [{"role": "user", "content": problem["question"]}]
    if system_prompt and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _problem_dirs(inputs: dict[str, list[Path]]) -> list[Path]:
    return snapshot_dirs(
        inputs,
        "problems",
        purpose="reinforcement learning",
        kind="problem snapshot",
        missing="there is nothing to practise on",
    )


def load_problem_data(
    paths: list[Path],
    tok: PreTrainedTokenizerBase,
    cfg: GRPOConfig,
    *,
    max_prompt_tokens: int,
    reporter: Reporter,
) -> ProblemData:
    """Every snapshot read and checked; prompts longer than ``max_prompt_tokens`` dropped."""
    train: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    snapshots = []
    dropped = 0
    for path in paths:
        splits = read_problems(path)
        kept = {}
        for split, problems in splits.items():
            fitting = _fitting(problems, tok, cfg.system_prompt, max_prompt_tokens)
            dropped += len(problems) - len(fitting)
            kept[split] = fitting
        if splits["train"] and not kept["train"]:
            raise ValueError(
                f"every training problem in {path.name} is longer than {max_prompt_tokens} "
                f"tokens, which leaves no room for a reply of max_completion_length "
                f"({cfg.max_completion_length}) tokens in the model's context window: lower "
                "max_completion_length or use a model with a longer context"
            )
        snapshots.append(
            {
                "path": str(path),
                "train": len(kept["train"]),
                "validation": len(kept["validation"]),
                "dropped_too_long": sum(len(splits[s]) - len(kept[s]) for s in splits),
            }
        )
        reporter.log(
            f"{path.name}: {len(kept['train'])} training and {len(kept['validation'])} "
            f"held-out problems; dropped {snapshots[-1]['dropped_too_long']} whose prompt is "
            f"longer than {max_prompt_tokens} tokens"
        )
        train += kept["train"]
        validation += kept["validation"]
    if not train:
        raise ValueError(
            "the problem snapshots hold no training problems (train.jsonl is empty): export "
            "them again with a smaller validation share"
        )
    if len(train) < cfg.problems_per_step:
        raise ValueError(
            f"there are {len(train)} training problems but every step needs "
            f"{cfg.problems_per_step} different ones (batch_size x gradient_accumulation_steps "
            f"/ num_generations): lower batch_size or add problems"
        )
    held_out = bool(validation)
    if not held_out:
        reporter.log("no held-out problems: evaluating on training problems instead")
    return ProblemData(
        train=train,
        validation=spread(validation if held_out else train, cfg.eval_problems),
        held_out=held_out,
        snapshots=snapshots,
        dropped_too_long=dropped,
    )


def _fitting(
    problems: list[dict[str, Any]],
    tok: PreTrainedTokenizerBase,
    system_prompt: str | None,
    max_prompt_tokens: int,
) -> list[dict[str, Any]]:
    if not problems:
        return []
    rendered = tok.apply_chat_template(
        [prompt_messages(p, system_prompt) for p in problems],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return [p for p, ids in zip(problems, rendered, strict=True) if len(ids) <= max_prompt_tokens]


def to_dataset(problems: list[dict[str, Any]], system_prompt: str | None) -> Any:
    """What TRL reads: the chat ``prompt`` and the problem's index (for the reward function)."""
    from datasets import Dataset, Features, Json, List, Value

    features = Features({"prompt": List(Json()), "problem_index": Value("int64")})
    rows = [
        {"prompt": prompt_messages(p, system_prompt), "problem_index": i}
        for i, p in enumerate(problems)
    ]
    return Dataset.from_list(rows, features=features)


# ------------------------------------------------------------------------------ evaluation


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021)."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_problems(
    model_or_path: Any,
    tokenizer: PreTrainedTokenizerBase | None,
    problems: list[dict[str, Any]],
    k: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    *,
    n: int | None = None,
    system_prompt: str | None = None,
    batch_size: int = 32,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Held-out accuracy of a model on ``problems`` (dicts with ``prompt`` or ``question``,
    ``answer`` and ``checker``, as :func:`training.core.problems.read_problems` gives).

    ``model_or_path`` is a model folder (loaded with the generation engine; ``tokenizer`` may be
    None) or a loaded model with its ``tokenizer``. Each problem gets one greedy reply and
    ``n`` (default ``k``) sampled ones at ``temperature``, seeded. Returns ``{"pass@1": share
    of greedy replies correct, "pass@k": mean unbiased pass@k from the n samples, "accuracy":
    share of sampled replies correct, "k", "n", "scored", "skipped", "per_problem": [{
    "question", "answer", "greedy", "extracted", "greedy_correct", "reason", "correct_samples",
    "sampled", "pass@k"}]}``. Problems whose prompt leaves no room in the context window are
    skipped (counted, not scored). A model's train/eval mode is restored.
    """
    from training.core.generate import Engine, SamplingParams, chat_prompt

    n = k if n is None else n
    if n < k:
        raise ValueError(f"n ({n}) must be at least k ({k})")
    if isinstance(model_or_path, str | os.PathLike):
        engine = Engine.load(model_or_path)
        model, was_training = engine.model, False
    else:
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a loaded model")
        model, was_training = model_or_path, model_or_path.training
        engine = Engine(model, tokenizer)
    tok = engine.tokenizer
    try:
        prompts = [chat_prompt(tok, prompt_messages(p, system_prompt)) for p in problems]
        lengths = [len(tok.encode(t, add_special_tokens=False)) for t in prompts]
        usable = [i for i, length in enumerate(lengths) if length < engine.context_window]
        rows: list[dict[str, Any]] = []
        stop = should_stop or (lambda: False)
        for start in range(0, len(usable), batch_size):
            if stop():
                break
            chunk = usable[start : start + batch_size]
            texts = [prompts[i] for i in chunk]
            greedy = engine.generate(
                texts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
            )
            sampled: list[list[str]] = [[] for _ in chunk]
            drawn = 0
            while drawn < n:
                count = min(ENGINE_MAX_N, n - drawn)
                params = SamplingParams(
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    n=count,
                    seed=seed * 1_000_003 + start * 64 + drawn,
                )
                for done in engine.generate(texts, params):
                    sampled[done.prompt_index].append(done.text)
                drawn += count
            for offset, index in enumerate(chunk):
                rows.append(
                    _score_problem(problems[index], greedy[offset].text, sampled[offset], k)
                )
    finally:
        model.train(was_training)
    scored = len(rows)
    return {
        "pass@1": sum(r["greedy_correct"] for r in rows) / scored if scored else None,
        "pass@k": sum(r["pass@k"] for r in rows) / scored if scored else None,
        "accuracy": sum(r["correct_samples"] for r in rows) / (scored * n) if scored else None,
        "k": k,
        "n": n,
        "scored": scored,
        "skipped": len(problems) - len(usable),
        "per_problem": rows,
    }


def _score_problem(
    problem: dict[str, Any], greedy_text: str, samples: list[str], k: int
) -> dict[str, Any]:
    greedy = check(problem, greedy_text)
    correct = sum(check(problem, text).correct for text in samples)
    return {
        "question": problem.get("question") or problem["prompt"][-1]["content"],
        "answer": problem.get("answer"),
        "greedy": greedy_text,
        "extracted": greedy.extracted,
        "greedy_correct": greedy.correct,
        "reason": greedy.reason,
        "correct_samples": correct,
        "sampled": len(samples),
        "pass@k": pass_at_k(len(samples), correct, k),
    }


# ---------------------------------------------------------------------- model and tokenizer


def _base_dir(inputs: dict[str, list[Path]]) -> Path:
    return base_dir(inputs, "reinforcement learning")


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tok = load_chat_tokenizer(path)
    require_eos(tok, path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _weights_finite(model: torch.nn.Module) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ------------------------------------------------------------------------ trainer and bridge


def _trainer_class() -> type:
    """GRPOTrainer that refuses a non-finite loss (defined when trl is imported)."""
    from trl import GRPOTrainer

    class OrchardGRPOTrainer(GRPOTrainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            loss = super().training_step(model, inputs, num_items_in_batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ValueError(diverged_message(self.state.global_step + 1, "loss", value))
            return loss

    return OrchardGRPOTrainer


class GRPOBridge(ReporterBridge):
    """The shared bridge, plus divergence checks: a gradient norm that is not finite before the
    optimizer applies it, and a loss, gradient norm or reward in a log."""

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        import torch

        model = kw.get("model")
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model else []
        if grads:
            total = torch.stack([g.detach().float().norm() for g in grads]).norm().item()
            if not math.isfinite(total):
                raise ValueError(diverged_message(state.global_step + 1, "grad_norm", total))
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> TrainerControl:
        for key in MUST_BE_FINITE:
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                raise ValueError(diverged_message(state.global_step, key, value))
        return super().on_log(args, state, control, logs, **kw)


class RewardFunctions:
    """The reward functions TRL calls; they also record rollouts and the step's accuracy.

    TRL calls each once per generation batch with every reply of the step, the problems' extra
    columns (``problem_index``) and ``trainer_state`` (``global_step`` is the number of steps
    done, so these replies train step ``global_step + 1``).
    """

    def __init__(self, session: Session) -> None:
        self.session = session

    def functions(self) -> list[Callable[..., list[float]]]:
        funcs = [self.correctness]
        if self.session.cfg.format_reward_weight > 0:
            funcs.append(self.answer_format)
        return funcs

    def weights(self) -> list[float]:
        weights = [1.0]
        if self.session.cfg.format_reward_weight > 0:
            weights.append(self.session.cfg.format_reward_weight)
        return weights

    def correctness(
        self,
        prompts: list[Any],
        completions: list[Any],
        problem_index: list[int],
        trainer_state: Any = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kw: Any,
    ) -> list[float]:
        session = self.session
        step = (trainer_state.global_step if trainer_state is not None else 0) + 1
        problems = session.data.train
        texts = [completion_text(c) for c in completions]
        results = [check(problems[i], t) for i, t in zip(problem_index, texts, strict=True)]
        rewards = [float(correctness_reward(r)) for r in results]
        for value in rewards:
            if not math.isfinite(value):
                raise ValueError(
                    diverged_message(
                        step,
                        "reward",
                        value,
                        "the reward function returned a value that is "
                        "not a number: check the problems' checkers",
                    )
                )
        if log_metric is not None and results:
            log_metric("accuracy", sum(r.correct for r in results) / len(results))
        every = session.cfg.sample_every
        if step == 1 or (every and step % every == 0):
            self._record(step, problem_index, texts, results, rewards)
        return rewards

    def answer_format(self, completions: list[Any], **kw: Any) -> list[float]:
        return [float(format_reward(completion_text(c))) for c in completions]

    def _record(
        self,
        step: int,
        problem_index: list[int],
        texts: list[str],
        results: list[CheckResult],
        rewards: list[float],
    ) -> None:
        session = self.session
        weight = session.cfg.format_reward_weight
        groups: dict[int, list[dict[str, Any]]] = {}
        for index, text, result, reward in zip(problem_index, texts, results, rewards, strict=True):
            if index not in groups and len(groups) >= session.cfg.sample_problems:
                continue
            total = reward + (weight * format_reward(text) if weight else 0.0)
            groups.setdefault(index, []).append(
                {
                    "text": text[:ROLLOUT_TEXT_LIMIT],
                    "reward": total,
                    "correct": result.correct,
                    "extracted": result.extracted,
                }
            )
        payload = {
            "step": step,
            "problems": [
                {
                    "question": session.data.train[index]["question"],
                    "answer": session.data.train[index]["answer"],
                    "samples": samples,
                }
                for index, samples in groups.items()
            ],
        }
        session.reporter.record("rollouts", payload, step)


@dataclass(kw_only=True)
class Session(TrainerSession):
    """A prepared GRPO run: problems, model, trainer and what it reports to."""

    metric_names = METRIC_NAMES
    bridge_class = GRPOBridge

    cfg: GRPOConfig
    data: ProblemData
    max_completion_length: int
    rewards: RewardFunctions | None = None
    eval_before: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def on_step(self, step: int, last: bool) -> None:
        """Evaluate every ``eval_every`` steps, unless asked to stop (the end is evaluated after
        training)."""
        if every(step, last, self.cfg.eval_every) and not self.reporter.should_stop():
            self.evaluate(step)

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint records: the stage and the evaluation before training."""
        return {"stage": "grpo", "eval_before": self.eval_before}

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out pass@1, pass@k and accuracy: reported, recorded and returned."""
        cfg = self.cfg
        result = evaluate_problems(
            self.model,
            self.tok,
            self.data.validation,
            k=cfg.eval_k,
            n=cfg.eval_samples,
            max_new_tokens=self.max_completion_length,
            temperature=cfg.temperature,
            seed=cfg.seed + step,
            system_prompt=cfg.system_prompt,
        )
        summary = {key: result[key] for key in ("pass@1", "pass@k", "accuracy", "k", "n")}
        summary.update(step=step, scored=result["scored"], held_out=self.data.held_out)
        self.evaluations.append(summary)
        if result["scored"]:
            self.reporter.metrics(
                {
                    "val/pass@1": result["pass@1"],
                    "val/pass@k": result["pass@k"],
                    "val/accuracy": result["accuracy"],
                },
                step,
            )
        record = {**summary, "per_problem": result["per_problem"][:EVALUATION_RECORD_PROBLEMS]}
        self.reporter.record("evaluation", record, step)
        return summary


def training_arguments(
    cfg: GRPOConfig,
    checkpoints_dir: Path,
    *,
    max_completion_length: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    reward_weights: list[float],
) -> Any:
    """TRL's GRPOConfig for this run, with every default that does not suit us overridden.

    TRL turns on bf16 and activation checkpointing, samples 8 x 512 tokens and uses a learning
    rate of 1e-6; its logging drops a NaN loss silently (``logging_nan_inf_filter``).
    """
    from trl import GRPOConfig as TRLGRPOConfig

    return TRLGRPOConfig(
        **common_training_arguments(
            cfg,
            checkpoints_dir,
            learning_rate=cfg.learning_rate,
            device=device,
            amp_dtype=amp_dtype,
        ),
        num_generations=cfg.num_generations,
        max_completion_length=max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        reward_weights=reward_weights,
        num_iterations=1,
        logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
        eval_strategy="no",
        shuffle_dataset=True,
        use_vllm=False,
        log_completions=False,
    )


def prepare(
    cfg: GRPOConfig,
    inputs: dict[str, list[Path]],
    checkpoints_dir: Path,
    reporter: Reporter,
) -> Session:
    """Check the inputs, read the problems, load the model and build the GRPOTrainer.

    ValueError with a message for people when the inputs cannot work. Nothing is trained yet.
    """
    device, amp_dtype = start_training(cfg)  # refuses a missing GPU before reading anything
    base = _base_dir(inputs)
    paths = _problem_dirs(inputs)
    tok = _load_tokenizer(base)
    window = context_window(base)
    max_completion = cfg.max_completion_length
    if max_completion >= window:
        max_completion = window // 2
        reporter.log(
            f"max_completion_length lowered from {cfg.max_completion_length} to {max_completion}"
            f" (half the model's context window of {window} tokens)"
        )
    data = load_problem_data(
        paths, tok, cfg, max_prompt_tokens=window - max_completion, reporter=reporter
    )
    if reporter.should_stop():
        raise Cancelled()

    model = load_causal_lm(base)
    check_vocab(tok, model)
    if not _weights_finite(model):
        raise ValueError(f"the base model in {base} has weights that are NaN or infinite")
    set_generation_defaults(model, tok)
    session = Session(
        cfg=cfg,
        base_dir=base,
        tok=tok,
        data=data,
        checkpoints_dir=checkpoints_dir,
        reporter=reporter,
        max_completion_length=max_completion,
        device=device,
        amp_dtype=amp_dtype,
    )
    session.rewards = RewardFunctions(session)
    args = training_arguments(
        cfg,
        checkpoints_dir,
        max_completion_length=max_completion,
        device=device,
        amp_dtype=amp_dtype,
        reward_weights=session.rewards.weights(),
    )
    trainer = _trainer_class()(
        model=model,
        reward_funcs=session.rewards.functions(),
        args=args,
        train_dataset=to_dataset(data.train, cfg.system_prompt),
        processing_class=tok,
    )
    session.trainer = trainer
    session.attach_bridge()
    return session


# ------------------------------------------------------------------------------- the run itself


def run(
    cfg: GRPOConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Train with GRPO, checkpoint, and save the model to ``out_dir``; return statistics.

    When ``reporter.should_stop()`` turns true during training, a checkpoint is saved and the
    partial result is returned with ``"stopped_early": True``; ``out_dir`` then gets no model.
    ValueError (with a message for people) when the inputs cannot work or training diverges.
    """
    stage = StageRun.begin(out_dir, work_dir)
    session = prepare(cfg, inputs, stage.checkpoints, reporter)

    def resumable(folder: Path, step: int) -> None:
        session.eval_before = _check_resumable(folder, step)

    stage.find_resume(reporter, resumable)

    trainable, total = count_parameters(session.model)
    problems_per_step = cfg.problems_per_step
    reporter.log(
        f"GRPO: {total:,} parameters; {len(session.data.train)} training problems, "
        f"{problems_per_step} per step x {cfg.num_generations} replies of at most "
        f"{session.max_completion_length} tokens; {session.where()}"
    )
    if stage.resume is None:
        session.eval_before = session.evaluate(0)
    try:
        state, stopped = session.train(stage.resume)
    except RuntimeError as exc:
        # Sampling from NaN logits fails inside generate ("probability tensor contains inf/nan").
        if _weights_finite(session.model):
            raise
        step = session.trainer.state.global_step
        raise ValueError(
            f"training diverged at step {step}: the model's weights are nan or inf; lower the "
            "learning rate"
        ) from exc
    eval_after = None
    if not stopped:
        done = [e for e in session.evaluations if e["step"] == state.global_step]
        eval_after = done[-1] if done else session.evaluate(state.global_step)

    history = state.log_history

    def series(key: str) -> list[float]:
        return [e[key] for e in history if isinstance(e.get(key), int | float)]

    rewards, accuracy, lengths, kls = (
        series("reward"),
        series("accuracy"),
        series("completions/mean_length"),
        series("kl"),
    )
    before = session.eval_before or {}
    after = eval_after or {}
    result = {
        **stage.result_head(state, stopped),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "accuracy_first": accuracy[0] if accuracy else None,
        "accuracy_last": accuracy[-1] if accuracy else None,
        "mean_length_first": lengths[0] if lengths else None,
        "mean_length_last": lengths[-1] if lengths else None,
        "kl_last": kls[-1] if kls else None,
        "val_pass@1_before": before.get("pass@1"),
        "val_pass@1_after": after.get("pass@1"),
        "val_pass@k_before": before.get("pass@k"),
        "val_pass@k_after": after.get("pass@k"),
        "val_accuracy_before": before.get("accuracy"),
        "val_accuracy_after": after.get("accuracy"),
        "eval_k": cfg.eval_k,
        "eval_held_out": session.data.held_out,
        "problems": len(session.data.train),
        "validation_problems": len(session.data.validation),
        "dropped_too_long": session.data.dropped_too_long,
        "max_completion_length": session.max_completion_length,
        "trainable_params": trainable,
        "total_params": total,
        **stage.result_tail(session),
    }
    if not stopped:
        _write_output(session, stage.out_dir, result)
        stage.clean_up()
    return result


def _check_resumable(folder: Path, step: int) -> dict[str, Any] | None:
    """The evaluation before training recorded in a GRPO checkpoint; ValueError for another
    stage's checkpoint."""
    ckpt = read_complete(folder, verify=False)
    meta = ckpt.meta if ckpt else {}
    if meta.get("stage") != "grpo":
        raise ValueError(
            f"the checkpoint at step {step} in {folder.parent} was not written by the grpo stage: "
            "start in a fresh work folder"
        )
    return meta.get("eval_before")


def _write_output(session: Session, out_dir: Path, result: dict[str, Any]) -> None:
    """The final model folder; ``orchard.json`` last, since it means complete."""
    model = session.model
    set_generation_defaults(model, session.tok)
    manifest = {
        "kind": "checkpoint",
        "stage": "grpo",
        "config": session.cfg.model_dump(),
        "stats": {
            **result,
            "problem_snapshots": session.data.snapshots,
            "evaluations": session.evaluations,
        },
    }
    write_model_folder(out_dir, model, session.tok, manifest)
