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
:mod:`training.core.hf_checkpoints`): ``checkpoint-N`` folders under ``work_dir/checkpoints``
every ``save_every`` steps, when ``reporter.should_stop()`` turns true (the run then returns
``stopped_early``) and at the end; only folders marked ``COMPLETE`` after their save are
resumed from, and a new run in the same ``work_dir`` continues from the newest one.

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

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from training.core.checkers import CheckResult, check, has_answer_marker
from training.core.checkpoints import read_complete
from training.core.hf_checkpoints import (
    CHECKPOINT_PREFIX,
    latest_checkpoint,
    mark_complete,
    prune_checkpoints,
)
from training.core.problems import read_problems
from training.core.reporting import Cancelled, Reporter

if TYPE_CHECKING:  # torch, transformers and trl load only when a run starts
    import torch
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )

WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
ROLLOUT_TEXT_LIMIT = 2000  # characters of each reply kept in a rollouts record
EVALUATION_RECORD_PROBLEMS = 16  # per-problem rows kept in an evaluation record
ENGINE_MAX_N = 16  # SamplingParams.n's limit: more samples are drawn in several calls


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
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="Where to train: auto prefers a CUDA GPU, then Apple MPS, then CPU."
    )
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description=(
            "Compute precision: auto uses bf16 autocast on GPUs that support it and fp32 "
            "elsewhere; weights stay fp32."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        replies = self.batch_size * self.gradient_accumulation_steps
        if replies % self.num_generations:
            fit = -(-self.batch_size // self.num_generations) * self.num_generations
            _raise_field_error(
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
            _raise_field_error(
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


def _raise_field_error(
    model: BaseModel, field_name: str, value: Any, kind: str, message: str, context: dict[str, Any]
) -> None:
    """A ValidationError located at ``field_name``, so a web form shows it next to that field."""
    problem = PydanticCustomError(kind, message, context)
    raise ValidationError.from_exception_data(
        type(model).__name__, [InitErrorDetails(type=problem, loc=(field_name,), input=value)]
    )


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
    paths = [Path(p) for p in inputs.get("problems") or []]
    if not paths:
        raise ValueError(
            'reinforcement learning needs at least one problem snapshot as input "problems": '
            "there is nothing to practise on"
        )
    for path in paths:
        if not path.is_dir():
            raise ValueError(f"problem snapshot not found: {path}")
    return paths


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
    pool = validation if held_out else train
    if not held_out:
        reporter.log("no held-out problems: evaluating on training problems instead")
    if len(pool) > cfg.eval_problems:
        stride = len(pool) / cfg.eval_problems  # a fixed, evenly spread selection
        pool = [pool[int(i * stride)] for i in range(cfg.eval_problems)]
    return ProblemData(
        train=train,
        validation=pool,
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
    dirs = [Path(p) for p in inputs.get("base") or []]
    if len(dirs) != 1:
        raise ValueError(
            f'reinforcement learning needs exactly one model folder as input "base", got '
            f"{len(dirs)}"
        )
    base = dirs[0]
    if (base / "adapter_config.json").is_file():
        raise ValueError(
            f"{base} is a LoRA adapter, not a full model: merge the adapter first "
            "(training.core.sft.merge_adapter)"
        )
    if not (base / "config.json").is_file():
        raise ValueError(f"{base} is not a model folder (no config.json)")
    if not any((base / name).is_file() for name in WEIGHTS_FILES):
        raise ValueError(
            f"{base} has no model.safetensors: only safetensors weights are loaded (pickled "
            "pytorch_model.bin files are refused)"
        )
    return base


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if not tok.chat_template:
        raise ValueError(f"the tokenizer in {path} has no chat template (chat_template.jinja)")
    if tok.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no eos token to end the assistant's turn")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_model(base: Path) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    # fp32 weights: with dtype bf16 the Trainer autocasts the matmuls, the master weights stay.
    return AutoModelForCausalLM.from_pretrained(
        base,
        dtype=torch.float32,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=False,
    )


def _context_window(base: Path) -> int:
    config = json.loads((base / "config.json").read_text())
    window = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(window, int) or window <= 0:
        raise ValueError(f"{base}/config.json does not say the model's context window")
    return window


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


def _bridge_class() -> type:
    """The reporter bridge, defined when transformers is imported (it subclasses its callback)."""
    from transformers import TrainerCallback

    class ReporterBridge(TrainerCallback):
        """Progress, metrics, divergence checks, evaluation, stop and checkpoints."""

        METRIC_NAMES = {
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
        MUST_BE_FINITE = ("loss", "grad_norm", "reward")

        def __init__(self, session: Session) -> None:
            self.session = session
            self.stopped = False

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

        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
        ) -> TrainerControl:
            session = self.session
            step, total = state.global_step, state.max_steps
            session.reporter.progress(step, total)
            last = step >= total
            every = session.cfg.eval_every
            if every and step % every == 0 and not last and not session.reporter.should_stop():
                session.evaluate(step)
            if last:
                control.should_save = True  # the end is a resume point too
            elif session.reporter.should_stop():
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True
            return control

        def on_save(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
        ) -> TrainerControl:
            session = self.session
            folder = session.checkpoints_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if folder.is_dir():
                meta = {"stage": "grpo", "eval_before": session.eval_before}
                mark_complete(folder, state.global_step, meta)
                prune_checkpoints(session.checkpoints_dir, session.cfg.keep_checkpoints)
            return control

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kw: Any,
        ) -> TrainerControl:
            logs = logs or {}
            for key in self.MUST_BE_FINITE:
                value = logs.get(key)
                if isinstance(value, int | float) and not math.isfinite(value):
                    raise ValueError(diverged_message(state.global_step, key, value))
            values = {
                name: float(logs[key])
                for key, name in self.METRIC_NAMES.items()
                if isinstance(logs.get(key), int | float)
            }
            if values:
                self.session.reporter.metrics(values, state.global_step)
            return control

    return ReporterBridge


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


@dataclass
class Session:
    """A prepared GRPO run: problems, model, trainer and what it reports to."""

    cfg: GRPOConfig
    base_dir: Path
    tok: PreTrainedTokenizerBase
    data: ProblemData
    checkpoints_dir: Path
    reporter: Reporter
    max_completion_length: int
    device: torch.device
    amp_dtype: torch.dtype | None
    trainer: Any = None
    bridge: Any = None
    rewards: RewardFunctions | None = None
    eval_before: dict[str, Any] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> PreTrainedModel:
        return self.trainer.model

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
    import torch
    from trl import GRPOConfig as TRLGRPOConfig

    return TRLGRPOConfig(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
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
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        max_steps=cfg.max_steps,
        logging_steps=cfg.log_every,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
        eval_strategy="no",
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=None,  # pruned by the bridge, which knows which folders are complete
        seed=cfg.seed,
        data_seed=cfg.seed,
        shuffle_dataset=True,
        bf16=amp_dtype == torch.bfloat16,
        fp16=False,
        activation_checkpointing=False,
        use_cpu=device.type == "cpu",
        dataloader_pin_memory=False,
        report_to="none",
        disable_tqdm=True,
        push_to_hub=False,
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
    import datasets
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging

    from training.core.device import autocast_dtype, pick_device
    from training.core.sft import set_generation_defaults

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    device = pick_device(cfg.device)  # refuse a missing GPU before reading anything
    amp_dtype = autocast_dtype(device, cfg.dtype)
    base = _base_dir(inputs)
    paths = _problem_dirs(inputs)
    tok = _load_tokenizer(base)
    window = _context_window(base)
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

    model = _load_model(base)
    if len(tok) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"the tokenizer has {len(tok)} tokens but the model's embedding only "
            f"{model.get_input_embeddings().num_embeddings}: use the tokenizer the model was "
            "trained with"
        )
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
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout
    session.trainer = trainer
    session.bridge = _bridge_class()(session)
    trainer.add_callback(session.bridge)
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
    from training.core.device import dtype_name
    from training.core.sft import count_parameters

    started = time.monotonic()
    out_dir = Path(out_dir)
    own_work_dir = work_dir is None
    work = Path(work_dir) if work_dir is not None else out_dir / ".work"
    checkpoints_dir = work / "checkpoints"
    session = prepare(cfg, inputs, checkpoints_dir, reporter)
    resume = latest_checkpoint(checkpoints_dir, reporter)
    if resume is not None:
        session.eval_before = _check_resumable(resume[1], resume[0])
        reporter.log(f"resuming from the checkpoint at step {resume[0]}")

    trainable, total = count_parameters(session.model)
    problems_per_step = cfg.problems_per_step
    reporter.log(
        f"GRPO: {total:,} parameters; {len(session.data.train)} training problems, "
        f"{problems_per_step} per step x {cfg.num_generations} replies of at most "
        f"{session.max_completion_length} tokens; on {session.device.type} in "
        f"{dtype_name(session.amp_dtype)}"
    )
    if resume is None:
        session.eval_before = session.evaluate(0)
    try:
        session.trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
    except RuntimeError as exc:
        # Sampling from NaN logits fails inside generate ("probability tensor contains inf/nan").
        if _weights_finite(session.model):
            raise
        step = session.trainer.state.global_step
        raise ValueError(
            f"training diverged at step {step}: the model's weights are nan or inf; lower the "
            "learning rate"
        ) from exc
    state = session.trainer.state
    stopped = bool(session.bridge.stopped)
    eval_after = None
    if stopped:
        reporter.log(f"stopped at step {state.global_step}; a checkpoint was saved")
    else:
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
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "stopped_early": stopped,
        "resumed_from_step": resume[0] if resume else None,
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
        "device": session.device.type,
        "dtype": dtype_name(session.amp_dtype),
        "seconds": round(time.monotonic() - started, 3),
    }
    if not stopped:
        _write_output(session, out_dir, result)
        if own_work_dir:
            shutil.rmtree(work, ignore_errors=True)
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
    from training.core.sft import set_generation_defaults

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "orchard.json").unlink(missing_ok=True)
    model = session.model
    set_generation_defaults(model, session.tok)
    model.save_pretrained(out_dir)
    session.tok.save_pretrained(out_dir)
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
    tmp = out_dir / ".orchard.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(tmp, out_dir / "orchard.json")
