"""The ``ppo`` stage: reinforcement learning of a chat model against a reward model, with PPO.

TRL 1.13 deleted its PPOTrainer (STACK.md section 5), so this is Orchard's own loop, written to be
read top to bottom: the clipped-surrogate PPO of InstructGPT / "Fine-Tuning Language Models from
Human Preferences" (Ziegler et al. 2019), as TRL's last PPOTrainer ran it.

Inputs:

- ``inputs["policy"]``: one causal-LM checkpoint folder (an SFT checkpoint: ``model.safetensors``,
  tokenizer files and ``chat_template.jinja``). It is the policy being trained and, frozen, the
  reference the KL penalty keeps it close to.
- ``inputs["reward"]``: one reward-model folder (``*ForSequenceClassification``, one label, the
  policy's tokenizer), frozen. The value model starts from it too:
  ``AutoModelForTokenClassification`` on the same weights, a value per token (its head starts as
  the reward model's head plus a zero bias).
- ``inputs["prompts"]``: one or more prompt snapshots: a folder with ``train.jsonl`` (and optional
  ``validation.jsonl``) or a ``.jsonl`` file, one prompt per line::

      {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "Hi"}]}

  Other keys (a preference snapshot's ``chosen`` / ``rejected``) are ignored; ``"prompt"`` may also
  be a plain string (one user message).
- ``inputs["monitor"]`` (optional): a second, independently trained reward model for the
  reward-hacking monitor.

One step (``batch_size`` prompts):

1. rollout: the policy answers each prompt once through :class:`training.core.generate.Engine`
   (``temperature``, ``max_new_tokens``), stopping at the tokenizer's eos ``<|im_end|>``;
2. old and reference log-probabilities of the reply tokens from forward passes without gradients
   (logits divided by ``temperature``, the distribution the tokens were drawn from), with
   ``position_ids = cumsum(attention_mask) - 1``, and the value of every reply position; the
   response mask runs through the first eos (the Engine stops there);
3. the reward model scores the whole conversation (prompt + reply, rendered with its chat
   template); a reply that did not end with ``<|im_end|>`` loses ``missing_eos_penalty``;
4. per-token reward ``-kl_coef * (logp - ref_logp)``, plus the score on the reply's last token;
   GAE (``gamma``, ``lam``) gives advantages and returns; advantages are whitened over the batch;
5. ``ppo_epochs`` passes over shuffled minibatches of ``mini_batch_size``: the clipped policy loss
   (``cliprange``) plus ``vf_coef`` times the clipped value loss (``cliprange_value``); AdamW for
   the policy and for the value model, gradients clipped to ``max_grad_norm`` each;
6. with ``adaptive_kl``, ``kl_coef`` follows Ziegler et al.'s proportional controller towards
   ``kl_target`` (nats per reply) with horizon ``kl_horizon`` samples.

Metrics every step: ``reward/mean`` (the reward model's score), ``reward/with_penalty`` (after the
missing-eos penalty), ``reward/total`` (with the KL penalty), ``kl`` (mean over replies of the sum
of ``logp - ref_logp``), ``kl_coef``, ``entropy`` (nats per reply token), ``loss/policy``,
``loss/value``, ``clipfrac``, ``approxkl``, ``value/mean``, ``value/clipfrac``,
``response/mean_length``, ``response/ended`` (share of replies ending with eos),
``time/rollout``, ``time/update`` and ``samples_per_sec``. Every ``sample_every`` steps a
``samples`` record ``{"step", "samples": [{"prompt", "reply", "score"}]}`` shows a few replies.

Reward-hacking monitor. Every ``monitor_every`` steps (and before the first step, and after the
last) the policy answers a fixed held-out prompt set greedily: the ``validation.jsonl`` prompts,
else a held-out slice of the training prompts (at most a quarter of them). The replies are scored
by the training reward model (``monitor/train_rm``) and, when given, the independent one
(``monitor/independent_rm``); ``monitor/kl`` is their KL to the reference (also
``monitor/mean_length``). A ``monitor`` record ``{"step", "train_rm", "independent_rm", "kl",
"mean_length", "samples": [{"prompt", "reply", "train_rm", "independent_rm"}]}`` holds the same
numbers and a few replies. With an independent reward model:

- the policy at the monitor step with the best independent score is kept in ``work_dir/best/``
  (a complete-marked checkpoint) and its step is ``best_step``;
- a monitor point *diverges* when its independent score is more than ``divergence_threshold``
  below the best independent score so far **and** its training-RM score is above the training-RM
  score at that best point: the policy pleases the reward it is trained on more and more, while
  a second opinion likes it less. ``divergence_step`` is the first point of the first run of
  ``divergence_patience`` consecutive diverging points (the point from which the two disagree);
- with ``stop_at_divergence`` the run stops once divergence is found, and the output is the policy
  at ``best_step``, not the last one (``stopped_at_divergence`` and ``output_step`` say so).

Without one, ``best_step`` and ``divergence_step`` stay None.

Safety. A non-finite reward, log-probability, value, loss or gradient stops the run with
``ValueError("training diverged at step N: ...; lower the learning rate or the KL coefficient")``.
``reporter.should_stop()`` is checked before each rollout, during it (the Engine checks before
every token), after it, and before every minibatch: a stop during the rollout or before the first
minibatch drops the rollout; a stop after some minibatches keeps the partial update and counts the
step as done. Then a checkpoint is saved and ``{"stopped_early": True}`` returned without output.

Checkpoints (every ``save_every`` steps, at the end, and on a stop) go to ``work_dir/checkpoints``
through :func:`training.core.checkpoints.save_checkpoint`: ``policy/`` (model + tokenizer),
``value/`` and ``trainer_state.pt`` (both optimizers, ``kl_coef``, the step, the RNG state, the
monitor history and the first reward), read back with ``torch.load(weights_only=True)``. A run
started with the same ``work_dir`` resumes from the newest complete one. The rollout seed and
the prompt and minibatch order are functions of ``seed`` and the step, so a run stopped between
steps and resumed on the CPU ends with the weights of the uninterrupted run.

Output in ``out_dir``: the policy as a Hugging Face folder (``config.json``, ``model.safetensors``,
``generation_config.json`` stopping at ``<|im_end|>``, tokenizer files, ``chat_template.jinja``)
and ``orchard.json`` (written last: ``{"kind": "checkpoint", "stage": "ppo", "config",
"stats"}``). Without a ``work_dir`` the stage works in ``out_dir/.work`` and deletes it after a
successful run (``best/`` included).

From the shell::

    python -m training.core ppo --config cfg.json --input policy=out/sft \\
        --input reward=out/reward --input prompts=data/prefs-v1 --out out/ppo

:func:`rollout_throughput` times a few steps (rollout and update) for benchmarks.

Simplifications:

- One sample per prompt; no reward normalisation across steps, no entropy bonus, no
  learning-rate schedule, no PPO-ptx (pretraining loss mixed in).
- The reward model scores the reply's text re-rendered with its own tokenizer's chat template;
  a reply cut at ``max_new_tokens`` is scored as if it had ended (and penalised).
- Prompts longer than the policy's context window minus ``max_new_tokens`` are dropped (counted).
- The KL estimate is the plain ``logp - ref_logp`` of the sampled tokens (k1), per reply summed.
- The monitor's KL is measured on greedy replies, which are not samples of the policy.
- A stop in the middle of a step's minibatches keeps the partial update (the step counts as
  done), so such a resume is not bit-for-bit the uninterrupted run.
- Single process, one device; several GPUs are not used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from training.core.checkpoints import Checkpoint, latest_complete, prune, save_checkpoint
from training.core.device import DevicePreference, DtypePreference, device_field, dtype_field
from training.core.reporting import Reporter

if TYPE_CHECKING:  # torch and transformers load only inside run(), never for the config
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from training.core.generate import Completion

TRAINER_STATE = "trainer_state.pt"
ROLES = ("system", "user", "assistant", "tool")
SAMPLES_PER_RECORD = 4  # replies shown in each samples / monitor record
RM_BATCH = 32  # conversations per reward-model forward pass
ADAM_EPS = 1e-5  # TRL's PPO default: a larger eps keeps early Adam steps on tiny gradients sane
DIVERGED_HINT = "lower the learning rate or the KL coefficient"


class PPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(
        16, ge=1, le=4096, description="Prompts answered per rollout (one reply each) per step."
    )
    mini_batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description="Replies per gradient step inside a PPO epoch; must divide batch_size.",
    )
    ppo_epochs: int = Field(
        4, ge=1, le=64, description="Passes over each rollout batch before the next rollout."
    )
    learning_rate: float = Field(
        3e-5, gt=0, le=1.0, description="AdamW learning rate of the policy (constant)."
    )
    value_learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="AdamW learning rate of the value model; empty: the policy's learning rate.",
    )
    max_steps: int = Field(
        100, ge=1, le=1_000_000, description="PPO steps (rollout + update) to train."
    )
    max_new_tokens: int = Field(
        48, ge=1, le=4096, description="Longest reply in tokens during rollouts and monitoring."
    )
    temperature: float = Field(
        0.7,
        ge=0.05,
        le=5.0,
        description=(
            "Sampling temperature of the rollouts; log-probabilities are computed at the same "
            "temperature."
        ),
    )
    kl_coef: float = Field(
        0.05,
        ge=0.0,
        le=100.0,
        description=(
            "Weight of the KL penalty that keeps the policy near the reference (the starting "
            "checkpoint); with adaptive_kl, its starting value."
        ),
    )
    adaptive_kl: bool = Field(
        False,
        description="Adjust kl_coef after every step so that the KL approaches kl_target.",
    )
    kl_target: float = Field(
        6.0,
        gt=0,
        le=1000.0,
        description="Adaptive KL: the KL per reply (nats) the controller steers towards.",
    )
    kl_horizon: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Adaptive KL: samples over which kl_coef can change by about 20 percent.",
    )
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount factor of the returns.")
    lam: float = Field(
        0.95, ge=0.0, le=1.0, description="GAE lambda: bias (0) versus variance (1) of advantages."
    )
    cliprange: float = Field(
        0.2, gt=0, le=10.0, description="PPO clipping of the policy ratio to 1 +/- cliprange."
    )
    cliprange_value: float = Field(
        0.2,
        gt=0,
        le=1000.0,
        description="Clipping of the new value predictions to old value +/- cliprange_value.",
    )
    vf_coef: float = Field(0.1, ge=0.0, le=100.0, description="Weight of the value loss.")
    whiten_rewards: bool = Field(
        False, description="Whiten the per-token rewards (scale only) before computing advantages."
    )
    missing_eos_penalty: float = Field(
        1.0,
        ge=0.0,
        le=1000.0,
        description=(
            "Subtracted from the score of a reply that did not end with the end-of-turn token "
            "within max_new_tokens; 0 turns the penalty off."
        ),
    )
    max_grad_norm: float = Field(
        1.0,
        gt=0,
        le=1000.0,
        description="Clip the gradient norm of the policy and of the value model to this.",
    )
    sample_every: int = Field(
        10,
        ge=0,
        le=1_000_000,
        description="Record a few rollout replies with their scores every N steps (0: never).",
    )
    save_every: int = Field(
        25,
        ge=1,
        le=1_000_000,
        description="Save a resumable checkpoint every N steps (and at the end).",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="How many of the newest checkpoints to keep."
    )
    monitor_every: int = Field(
        10,
        ge=0,
        le=1_000_000,
        description=(
            "Score greedy replies to the held-out prompts every N steps, before the first and "
            "after the last (0: no monitoring)."
        ),
    )
    monitor_prompts: int = Field(
        16, ge=1, le=1024, description="How many held-out prompts the monitor answers."
    )
    divergence_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1000.0,
        description=(
            "Monitor: how far (in the independent reward model's units) its score must fall "
            "below its best while the training reward still rises, to count as divergence."
        ),
    )
    divergence_patience: int = Field(
        2,
        ge=1,
        le=1000,
        description="Monitor: consecutive diverging monitor points needed to declare divergence.",
    )
    stop_at_divergence: bool = Field(
        False,
        description=(
            "Stop when the monitor finds divergence and output the policy from the monitor "
            "step with the best independent score (needs an independent reward model)."
        ),
    )
    seed: int = Field(
        1337,
        ge=0,
        le=2**31 - 1,
        description="Seed for the rollouts, the prompt order and the minibatch order.",
    )
    device: DevicePreference = device_field()
    dtype: DtypePreference = dtype_field()

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        if self.mini_batch_size > self.batch_size or self.batch_size % self.mini_batch_size:
            _raise_field_error(
                self,
                "mini_batch_size",
                self.mini_batch_size,
                "mini_batch_not_divisor",
                "mini_batch_size must divide batch_size ({batch_size})",
                {"batch_size": self.batch_size},
            )
        return self


def _raise_field_error(
    model: BaseModel, field_name: str, value: Any, kind: str, message: str, context: dict[str, Any]
) -> None:
    """A ValidationError located at ``field_name``, so a web form shows it next to that field."""
    problem = PydanticCustomError(kind, message, context)
    raise ValidationError.from_exception_data(
        type(model).__name__, [InitErrorDetails(type=problem, loc=(field_name,), input=value)]
    )


# ------------------------------------------------------------------------------- PPO arithmetic
# Tensors are (B, T): B replies, T reply positions; ``mask`` is 1 on real reply tokens.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries (Bessel's correction, as TRL)."""
    count = mask.sum()
    variance = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return variance * count / (count - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale the masked entries to unit variance (and zero mean with ``shift_mean``);
    masked-out entries become 0."""
    import torch

    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation: ``(advantages, returns)``, both (B, T).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    rewards and values zeroed past each reply's end, so the value after the last token is 0.
    """
    import torch

    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: ``(loss, clipfrac, approxkl)``.

    ``loss = mean(max(-A * r, -A * clip(r, 1 - c, 1 + c)))`` with ``r = exp(logp - old_logp)``;
    ``clipfrac`` is the share of tokens where the clipped term won; ``approxkl`` is
    ``mean((logp - old_logp)^2) / 2``.
    """
    import torch

    diff = logprobs - old_logprobs
    ratio = torch.exp(diff)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approxkl = 0.5 * masked_mean(diff**2, mask)
    return loss, clipfrac, approxkl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss: ``(loss, clipfrac)``.

    ``loss = mean(max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)) / 2``.
    """
    import torch

    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


@dataclass
class KLController:
    """``kl_coef``: fixed, or Ziegler et al.'s adaptive controller.

    ``error = clip(kl / target - 1, -0.2, 0.2)``; ``value *= 1 + error * n / horizon`` after a
    step of ``n`` samples, so the coefficient rises while the KL is above target and falls below.
    """

    value: float
    adaptive: bool = False
    target: float = 6.0
    horizon: int = 10_000

    def update(self, kl: float, samples: int) -> None:
        if not self.adaptive:
            return
        error = min(0.2, max(-0.2, kl / self.target - 1.0))
        self.value *= 1.0 + error * samples / self.horizon


# ------------------------------------------------------------------------------------ prompts


Messages = list[dict[str, Any]]


@dataclass
class Prompts:
    train: list[Messages]
    monitor: list[Messages]
    monitor_source: str  # "validation" or "held-out train"
    dropped_too_long: int = 0


def read_prompts(path: Path) -> list[Messages]:
    """The prompts of one ``.jsonl`` file; ValueError naming the file and line when one is bad."""
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the prompts in {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict) or "prompt" not in row:
            raise ValueError(f'{where}: expected an object with a "prompt" key')
        prompts.append(_prompt_messages(row["prompt"], where))
    return prompts


def _prompt_messages(prompt: Any, where: str) -> Messages:
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f'{where}: "prompt" must be a non-empty list of messages or a string')
    messages = []
    for message in prompt:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"{where}: every prompt message needs a role ({', '.join(ROLES)}) and a "
                "string content"
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def load_prompts(paths: list[Path], monitor_count: int) -> Prompts:
    """Training prompts and the monitor's held-out prompts from snapshot folders or files.

    The monitor uses the ``validation.jsonl`` prompts (evenly spread, at most ``monitor_count``);
    without any, it takes every k-th training prompt out of training (at most a quarter).
    """
    if not paths:
        raise ValueError('the ppo stage needs prompts: inputs["prompts"] is empty')
    train: list[Messages] = []
    validation: list[Messages] = []
    for path in map(Path, paths):
        if path.is_dir():
            if not (path / "train.jsonl").is_file():
                raise ValueError(f"the prompt folder {path} has no train.jsonl")
            train += read_prompts(path / "train.jsonl")
            if (path / "validation.jsonl").is_file():
                validation += read_prompts(path / "validation.jsonl")
        elif path.is_file() and path.suffix == ".jsonl":
            train += read_prompts(path)
        else:
            raise ValueError(f"{path} is neither a prompt folder nor a .jsonl file")
    if monitor_count == 0:
        return Prompts(train, [], "none")
    if validation:
        return Prompts(train, _spread(validation, monitor_count), "validation")
    count = min(monitor_count, len(train) // 4)
    if count == 0:
        return Prompts(train, [], "none")
    held = set(_spread(list(range(len(train))), count))
    kept = [p for i, p in enumerate(train) if i not in held]
    return Prompts(kept, [train[i] for i in sorted(held)], "held-out train")


def _spread(items: list[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return items
    stride = len(items) / count
    return [items[int(i * stride)] for i in range(count)]


# ------------------------------------------------------------------------------ reward models


class _RewardScorer:
    """A frozen ``*ForSequenceClassification`` reward model (one label) and its tokenizer.

    The score of a conversation is the model's logit at its last non-pad token: the text is the
    chat template's rendering (no generation prompt), right-padded, cut from the left when longer
    than the model's context window so that the reply's end is always seen.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        _check_reward_folder(path)
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not self.tok.chat_template:
            raise ValueError(f"the tokenizer in {path} has no chat template")
        if self.tok.pad_token_id is None:
            raise ValueError(f"the tokenizer in {path} has no pad token to score batches with")
        self.tok.padding_side, self.tok.truncation_side = "right", "left"
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, use_safetensors=True, local_files_only=True
        )
        model.config.pad_token_id = self.tok.pad_token_id
        self.model = model.to(device).eval().requires_grad_(False)
        self.window = int(getattr(model.config, "max_position_embeddings", 0) or 1024)
        self.device = device


def _score(scorer: _RewardScorer, conversations: list[Messages], amp: Any) -> list[float]:
    """One float per conversation. Kept separate so a shared ``reward.score`` can replace it."""
    import torch

    scores: list[float] = []
    for start in range(0, len(conversations), RM_BATCH):
        chunk = conversations[start : start + RM_BATCH]
        texts = [scorer.tok.apply_chat_template(c, tokenize=False) for c in chunk]
        enc = scorer.tok(
            texts,
            padding=True,
            truncation=True,
            max_length=scorer.window,
            add_special_tokens=False,
            return_tensors="pt",
        ).to(scorer.device)
        with torch.no_grad(), _autocast(scorer.device, amp):
            logits = scorer.model(**enc).logits  # (b, 1)
        scores += logits[:, 0].float().tolist()
    return scores


def _check_reward_folder(path: Path) -> None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a model folder (no readable config.json)") from exc
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{path} is not a reward model: its architecture is {architectures or 'unknown'}, "
            "not a *ForSequenceClassification model"
        )
    if len(config.get("id2label") or {"0": "LABEL_0"}) != 1:
        raise ValueError(f"{path} is not a reward model: it has more than one output label")


# --------------------------------------------------------------------------------- the session


@dataclass
class Rollout:
    """One step's batch: B replies to B prompts, reply positions padded to T."""

    prompts: list[Messages]
    replies: list[str]
    input_ids: torch.Tensor  # (B, P + T): left-padded prompts, then right-padded replies
    attention_mask: torch.Tensor  # (B, P + T)
    prompt_length: int  # P
    mask: torch.Tensor  # (B, T) float: 1 on reply tokens, up to and including the first eos
    lengths: list[int]
    ended: list[bool]


@dataclass
class Monitor:
    """The reward-hacking monitor's history and verdict."""

    points: list[dict[str, Any]] = field(default_factory=list)  # step, train_rm, independent_rm, kl
    best_step: int | None = None
    best_independent: float | None = None
    best_train: float | None = None
    divergence_step: int | None = None
    streak: list[int] = field(default_factory=list)  # steps of the current diverging run

    def add(self, point: dict[str, Any], threshold: float, patience: int) -> bool:
        """Record a monitor point; True when it is the new best (independent score)."""
        self.points.append(point)
        independent = point.get("independent_rm")
        if independent is None:
            return False
        if self.best_independent is None or independent > self.best_independent:
            self.best_step, self.best_independent = point["step"], independent
            self.best_train = point["train_rm"]
            self.streak = []
            return True
        diverging = independent < self.best_independent - threshold and point["train_rm"] > (
            self.best_train if self.best_train is not None else math.inf
        )
        self.streak = [*self.streak, point["step"]] if diverging else []
        if self.divergence_step is None and len(self.streak) >= patience:
            self.divergence_step = self.streak[0]
        return False

    def state(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "best_step": self.best_step,
            "best_independent": self.best_independent,
            "best_train": self.best_train,
            "divergence_step": self.divergence_step,
            "streak": self.streak,
        }


class Session:
    """Everything a PPO run holds: models, optimizers, prompts, monitor, and the step."""

    def __init__(
        self,
        cfg: PPOConfig,
        inputs: dict[str, list[Path]],
        work: Path,
        reporter: Reporter,
    ) -> None:
        from training.core.device import autocast_dtype, pick_device

        self.cfg = cfg
        self.reporter = reporter
        self.work = work
        self.ckpt_root = work / "checkpoints"
        self.best_root = work / "best"
        self.device = pick_device(cfg.device)
        self.amp = autocast_dtype(self.device, cfg.dtype)
        self.policy_dir = _one(inputs, "policy", "policy checkpoint (an SFT checkpoint)")
        self.reward_dir = _one(inputs, "reward", "reward model")
        monitors = inputs.get("monitor") or []
        if len(monitors) > 1:
            raise ValueError("the ppo stage takes at most one independent monitor reward model")
        self.monitor_dir = Path(monitors[0]) if monitors else None
        self.prompt_paths = [Path(p) for p in inputs.get("prompts") or []]
        if cfg.stop_at_divergence and (self.monitor_dir is None or cfg.monitor_every == 0):
            raise ValueError(
                "stop_at_divergence needs an independent reward model (input 'monitor') and "
                "monitor_every above 0"
            )
        self.step = 0
        self.saved_step: int | None = None
        self.resumed_from: int | None = None
        self.kl = KLController(cfg.kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon)
        self.monitor = Monitor()
        self.reward_first: float | None = None
        self.last_stats: dict[str, float] = {}
        self._orders: dict[int, list[int]] = {}

    # ------------------------------------------------------------------------------ setup

    def start(self) -> None:
        import copy

        import torch
        from transformers import AutoTokenizer

        from training.core.generate import Engine
        from training.core.sft import set_generation_defaults

        cfg = self.cfg
        self.tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            self.policy_dir, local_files_only=True
        )
        if not self.tok.chat_template:
            raise ValueError(f"the tokenizer in {self.policy_dir} has no chat template")
        if self.tok.eos_token_id is None:
            raise ValueError(f"the tokenizer in {self.policy_dir} has no eos token")
        resume = latest_complete(self.ckpt_root)
        self.policy = _load_causal_lm(resume.path / "policy" if resume else self.policy_dir)
        set_generation_defaults(self.policy, self.tok)
        if resume:
            self.ref = _load_causal_lm(self.policy_dir)
        else:
            self.ref = copy.deepcopy(self.policy)
        self.ref.eval().requires_grad_(False)
        self.value = _load_value_model(resume.path / "value" if resume else self.reward_dir)
        self.rm = _RewardScorer(self.reward_dir, self.device)
        if self.rm.tok.get_vocab() != self.tok.get_vocab():
            raise ValueError(
                f"the reward model in {self.reward_dir} uses another tokenizer than the policy: "
                "the value model starts from the reward model and reads the policy's tokens, so "
                "train the reward model from a checkpoint with the policy's tokenizer"
            )
        self.monitor_rm = _RewardScorer(self.monitor_dir, self.device) if self.monitor_dir else None
        self.policy.to(self.device).eval()  # eval: no dropout, PPO's ratios need it off
        self.ref.to(self.device)
        self.value.to(self.device).eval()
        self.policy_opt = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.learning_rate, eps=ADAM_EPS, weight_decay=0.0
        )
        self.value_opt = torch.optim.AdamW(
            self.value.parameters(),
            lr=cfg.value_learning_rate or cfg.learning_rate,
            eps=ADAM_EPS,
            weight_decay=0.0,
        )
        self.engine = Engine(self.policy, self.tok)
        self.window = self.engine.context_window
        monitored = cfg.monitor_prompts if cfg.monitor_every else 0
        self.prompts = load_prompts(self.prompt_paths, monitored)
        # id(messages) -> the prompt's token ids, generation prompt included
        self.prompt_ids: dict[int, list[int]] = {}
        self.prompts.train = self._fitting(self.prompts.train)
        self.prompts.monitor = self._fitting(self.prompts.monitor)
        if not self.prompts.train:
            raise ValueError(
                f"no training prompt fits the policy's context window ({self.window} tokens) "
                f"with room for max_new_tokens ({cfg.max_new_tokens}): lower max_new_tokens"
            )
        if resume:
            self._load_state(resume)
        self._log_start()
        if resume:
            self._log_config_changes(resume.meta.get("config") or {})

    def _fitting(self, prompts: list[Messages]) -> list[Messages]:
        """The prompts that leave room for ``max_new_tokens``, tokenized into ``prompt_ids``."""
        from training.core.generate import chat_prompt

        room = self.window - self.cfg.max_new_tokens
        kept = []
        for messages in prompts:
            ids = self.tok.encode(chat_prompt(self.tok, messages), add_special_tokens=False)
            if len(ids) <= room:
                self.prompt_ids[id(messages)] = ids
                kept.append(messages)
            else:
                self.prompts.dropped_too_long += 1
        return kept

    def _log_start(self) -> None:
        from training.core.device import dtype_name

        p = self.prompts
        params = sum(x.numel() for x in self.policy.parameters())
        self.reporter.log(
            f"PPO on {len(p.train)} training prompts ({p.dropped_too_long} dropped as too long), "
            f"{len(p.monitor)} monitor prompts ({p.monitor_source}); policy "
            f"{params:,} parameters; on {self.device.type} in {dtype_name(self.amp)}"
            + ("; with an independent monitor reward model" if self.monitor_rm else "")
        )
        if self.resumed_from is not None:
            self.reporter.log(f"resumed from the checkpoint at step {self.resumed_from}")

    def _log_config_changes(self, saved: dict[str, Any]) -> None:
        """A resumed run may change settings (a lower learning rate after a spike): say so."""
        current = self.cfg.model_dump()
        changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in current.items() if saved.get(k, v) != v]
        if changed:
            self.reporter.log("settings changed since the checkpoint: " + ", ".join(changed))

    # -------------------------------------------------------------------------- one step

    def batch_prompts(self, step: int) -> list[Messages]:
        """The prompts of update ``step`` (0-based): a fresh seeded permutation per epoch."""
        import torch

        n, size = len(self.prompts.train), self.cfg.batch_size
        picked = []
        for position in range(step * size, (step + 1) * size):
            epoch = position // n
            if epoch not in self._orders:
                gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
                self._orders = {epoch: torch.randperm(n, generator=gen).tolist()}
            picked.append(self.prompts.train[self._orders[epoch][position % n]])
        return picked

    def rollout(self, prompts: list[Messages], *, greedy: bool, seed: int) -> Rollout | None:
        """Generate one reply per prompt; None when asked to stop meanwhile."""
        from training.core.generate import SamplingParams

        params = SamplingParams(
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=0.0 if greedy else self.cfg.temperature,
            top_k=0,
            top_p=1.0,
            seed=seed,
        )
        ids = [self.prompt_ids[id(p)] for p in prompts]
        with _autocast(self.device, self.amp):
            completions = self.engine.generate(ids, params, should_stop=self.reporter.should_stop)
        if any(c.finish_reason == "stopped" for c in completions):
            return None
        return self._batch(prompts, ids, completions)

    def _batch(
        self, prompts: list[Messages], ids: list[list[int]], completions: list[Completion]
    ) -> Rollout:
        import torch

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        eos = self.tok.eos_token_id
        prompt_length = max(len(i) for i in ids)
        # The Engine stops each reply at its first eos: the reply tokens are exactly the mask.
        lengths = [len(c.token_ids) for c in completions]
        reply_length = max(lengths)
        batch = len(prompts)
        input_ids = torch.full((batch, prompt_length + reply_length), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, (prompt, done) in enumerate(zip(ids, completions, strict=True)):
            input_ids[row, prompt_length - len(prompt) : prompt_length] = torch.tensor(prompt)
            attention[row, prompt_length - len(prompt) : prompt_length] = 1
            end = prompt_length + len(done.token_ids)
            input_ids[row, prompt_length:end] = torch.tensor(done.token_ids, dtype=torch.long)
            attention[row, prompt_length:end] = 1
        mask = attention[:, prompt_length:].float()
        return Rollout(
            prompts=prompts,
            replies=[c.text for c in completions],
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            prompt_length=prompt_length,
            mask=mask.to(self.device),
            lengths=lengths,
            ended=[c.token_ids[-1:] == [eos] for c in completions],
        )

    def scores(self, batch: Rollout, scorer: _RewardScorer) -> list[float]:
        conversations = [
            [*p, {"role": "assistant", "content": r}]
            for p, r in zip(batch.prompts, batch.replies, strict=True)
        ]
        return _score(scorer, conversations, self.amp)

    def train_step(self) -> dict[str, float] | None:
        """Rollout and PPO update for step ``self.step + 1``; None when stopped before any
        update (nothing changed). A ``"cut_short"`` entry means a stop after a partial update."""
        import torch

        cfg, step = self.cfg, self.step + 1
        began = time.perf_counter()
        prompts = self.batch_prompts(self.step)
        batch = self.rollout(prompts, greedy=False, seed=_rollout_seed(cfg.seed, self.step))
        if batch is None or self.reporter.should_stop():
            return None
        mask = batch.mask
        old_logp, entropy, ref_logp, old_values = self._measure(batch)
        scores = torch.tensor(self.scores(batch, self.rm), device=self.device)
        _check_finite(step, "the reward model's scores", scores)
        _check_finite(step, "the policy's log-probabilities", old_logp[mask.bool()])
        _check_finite(step, "the reference's log-probabilities", ref_logp[mask.bool()])
        _check_finite(step, "the value model's values", old_values[mask.bool()])
        ended = torch.tensor(batch.ended, device=self.device)
        penalised = scores - cfg.missing_eos_penalty * (~ended).float()

        kl_tokens = (old_logp - ref_logp) * mask  # (B, T)
        rewards = -self.kl.value * kl_tokens
        last = torch.tensor(batch.lengths, device=self.device) - 1  # (B,) last reply token
        rows = torch.arange(len(prompts), device=self.device)
        rewards[rows, last] += penalised
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        rollout_seconds = time.perf_counter() - began

        began = time.perf_counter()
        update = self._update(batch, old_logp, old_values, advantages, returns, step)
        if update is None:
            return None
        kl = kl_tokens.sum(dim=1).mean().item()
        stats = {
            "reward/mean": scores.mean().item(),
            "reward/with_penalty": penalised.mean().item(),
            "reward/total": (penalised - self.kl.value * kl_tokens.sum(dim=1)).mean().item(),
            "kl": kl,
            "kl_coef": self.kl.value,
            "entropy": masked_mean(entropy, mask).item(),
            "value/mean": masked_mean(old_values, mask).item(),
            "response/mean_length": float(sum(batch.lengths)) / len(batch.lengths),
            "response/ended": float(sum(batch.ended)) / len(batch.ended),
            **update,
            "time/rollout": rollout_seconds,
            "time/update": time.perf_counter() - began,
        }
        stats["samples_per_sec"] = len(prompts) / max(
            1e-9, stats["time/rollout"] + stats["time/update"]
        )
        self.kl.update(kl, len(prompts))
        self.last_batch, self.last_scores = batch, scores.tolist()
        return stats

    def _update(
        self,
        batch: Rollout,
        old_logp: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        step: int,
    ) -> dict[str, float] | None:
        """``ppo_epochs`` passes of clipped minibatch updates; mean statistics, or None when
        stopped before the first minibatch."""
        import torch

        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        totals: dict[str, float] = {}
        done = 0
        planned = cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size, generator=gen).to(self.device)
            for start in range(0, cfg.batch_size, cfg.mini_batch_size):
                if self.reporter.should_stop():
                    if done == 0:
                        return None
                    self.reporter.log(
                        f"step {step} was cut short after {done} of {planned} minibatches"
                    )
                    return {**_means(totals, done), "cut_short": 1.0}
                idx = order[start : start + cfg.mini_batch_size]
                stats = self._minibatch(batch, idx, old_logp, old_values, advantages, returns, step)
                for name, value in stats.items():
                    totals[name] = totals.get(name, 0.0) + value
                done += 1
        _check_finite(step, "the policy's weights", *(p.detach() for p in self.policy.parameters()))
        return _means(totals, done)

    def _minibatch(
        self,
        batch: Rollout,
        idx: torch.Tensor,
        old_logp: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        step: int,
    ) -> dict[str, float]:
        import torch

        cfg = self.cfg
        mask = batch.mask[idx]
        logp, _ = self._logprobs(self.policy, batch, rows=idx)
        values = self._values(batch, rows=idx)
        pg_loss, clipfrac, approxkl = policy_loss(
            logp, old_logp[idx], advantages[idx], mask, cfg.cliprange
        )
        vf_loss, vf_clipfrac = value_loss(
            values, old_values[idx], returns[idx], mask, cfg.cliprange_value
        )
        loss = pg_loss + cfg.vf_coef * vf_loss
        _check_finite(step, "the loss", loss)
        self.policy_opt.zero_grad(set_to_none=True)
        self.value_opt.zero_grad(set_to_none=True)
        loss.backward()
        policy_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        value_norm = torch.nn.utils.clip_grad_norm_(self.value.parameters(), cfg.max_grad_norm)
        _check_finite(step, "the gradients", policy_norm, value_norm)
        self.policy_opt.step()
        self.value_opt.step()
        return {
            "loss/policy": pg_loss.item(),
            "loss/value": vf_loss.item(),
            "clipfrac": clipfrac.item(),
            "approxkl": approxkl.item(),
            "value/clipfrac": vf_clipfrac.item(),
            "grad_norm/policy": policy_norm.item(),
            "grad_norm/value": value_norm.item(),
        }

    def _measure(
        self, batch: Rollout
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Old log-probs, entropies, reference log-probs and values (B, T) of a rollout, without
        gradients, in chunks of ``mini_batch_size`` replies (the memory of one update pass)."""
        import torch

        parts: list[tuple[torch.Tensor, ...]] = []
        size = len(batch.prompts)
        with torch.no_grad():
            for start in range(0, size, self.cfg.mini_batch_size):
                rows = torch.arange(start, min(size, start + self.cfg.mini_batch_size))
                rows = rows.to(self.device)
                logp, entropy = self._logprobs(self.policy, batch, rows, with_entropy=True)
                ref_logp, _ = self._logprobs(self.ref, batch, rows)
                parts.append((logp, entropy, ref_logp, self._values(batch, rows)))
        old_logp, entropy, ref_logp, values = (
            torch.cat(column) for column in zip(*parts, strict=True)
        )
        return old_logp, entropy, ref_logp, values

    def _logprobs(
        self,
        model: PreTrainedModel,
        batch: Rollout,
        rows: torch.Tensor | None = None,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probabilities (B, T) of the reply tokens at the rollout temperature, and the
        entropy of each position's distribution when asked."""
        import torch

        ids, attention = batch.input_ids, batch.attention_mask
        if rows is not None:
            ids, attention = ids[rows], attention[rows]
        start = batch.prompt_length
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        # Position t predicts token t + 1: the reply's T tokens need the last T + 1 positions'
        # logits (the very last one, after the longest reply, is dropped); no (B, P, V) ones.
        keep = ids.shape[1] - start + 1
        with _autocast(self.device, self.amp):
            logits = model(
                input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=keep
            ).logits
        logits = logits[:, :-1].float() / self.cfg.temperature  # (B, T, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(2, ids[:, start:, None]).squeeze(2)  # (B, T)
        entropy = None
        if with_entropy:
            entropy = -(logprobs.exp() * logprobs).sum(dim=-1)
        return chosen, entropy

    def _values(self, batch: Rollout, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The value model's estimate (B, T) before each reply token."""
        ids, attention = batch.input_ids, batch.attention_mask
        if rows is not None:
            ids, attention = ids[rows], attention[rows]
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        with _autocast(self.device, self.amp):
            out = self.value(input_ids=ids, attention_mask=attention, position_ids=positions)
        return out.logits[:, batch.prompt_length - 1 : -1, 0].float()

    # -------------------------------------------------------------------- samples and monitor

    def record_samples(self, step: int) -> None:
        batch, scores = self.last_batch, self.last_scores
        samples = [
            {"prompt": _last_user_text(p), "reply": r, "score": s}
            for p, r, s in zip(batch.prompts, batch.replies, scores, strict=True)
        ][:SAMPLES_PER_RECORD]
        self.reporter.record("samples", {"step": step, "samples": samples}, step)

    def run_monitor(self) -> dict[str, Any] | None:
        """Score greedy replies to the monitor prompts; None when asked to stop meanwhile."""
        import torch

        prompts = self.prompts.monitor
        batch = self.rollout(prompts, greedy=True, seed=0)
        if batch is None:
            return None
        train_scores = self.scores(batch, self.rm)
        with torch.no_grad():
            logp, _ = self._logprobs(self.policy, batch)
            ref_logp, _ = self._logprobs(self.ref, batch)
        kl = ((logp - ref_logp) * batch.mask).sum(dim=1).mean().item()
        point: dict[str, Any] = {
            "step": self.step,
            "train_rm": sum(train_scores) / len(train_scores),
            "independent_rm": None,
            "kl": kl,
            "mean_length": float(sum(batch.lengths)) / len(batch.lengths),
        }
        independent = None
        if self.monitor_rm is not None:
            independent = self.scores(batch, self.monitor_rm)
            point["independent_rm"] = sum(independent) / len(independent)
        for name, value in point.items():
            if name != "step" and value is not None and not math.isfinite(value):
                raise ValueError(
                    f"training diverged at step {self.step}: the monitor's {name} is not "
                    f"finite; {DIVERGED_HINT}"
                )
        metrics = {"monitor/train_rm": point["train_rm"], "monitor/kl": kl}
        metrics["monitor/mean_length"] = point["mean_length"]
        if independent is not None:
            metrics["monitor/independent_rm"] = point["independent_rm"]
        self.reporter.metrics(metrics, self.step)
        cfg = self.cfg
        was_divergent = self.monitor.divergence_step is not None
        if self.monitor.add(point, cfg.divergence_threshold, cfg.divergence_patience):
            self.save_best()
        if not was_divergent and self.monitor.divergence_step is not None:
            self.reporter.log(
                f"reward hacking suspected: from step {self.monitor.divergence_step} the "
                "training reward model's score rose while the independent one fell by more "
                f"than {cfg.divergence_threshold} below its best (step {self.monitor.best_step})"
            )
        samples = [
            {
                "prompt": _last_user_text(p),
                "reply": r,
                "train_rm": train_scores[i],
                "independent_rm": independent[i] if independent is not None else None,
            }
            for i, (p, r) in enumerate(zip(batch.prompts, batch.replies, strict=True))
        ][:SAMPLES_PER_RECORD]
        self.reporter.record("monitor", {**point, "samples": samples}, self.step)
        return point

    # ----------------------------------------------------------------------------- saving

    def _write_policy(self, folder: Path) -> None:
        self.policy.save_pretrained(folder)
        self.tok.save_pretrained(folder)

    def save(self) -> Checkpoint:
        import torch

        def write(folder: Path) -> None:
            self._write_policy(folder / "policy")
            self.value.save_pretrained(folder / "value")
            state = {
                "step": self.step,
                "kl_coef": self.kl.value,
                "policy_optimizer": self.policy_opt.state_dict(),
                "value_optimizer": self.value_opt.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "monitor": json.dumps(self.monitor.state()),
                "reward_first": self.reward_first,
                "last_stats": json.dumps(self.last_stats),
            }
            torch.save(state, folder / TRAINER_STATE)

        meta = {"stage": "ppo", "config": self.cfg.model_dump()}
        ckpt = save_checkpoint(self.ckpt_root, self.step, write, meta)
        self.saved_step = self.step
        prune(self.ckpt_root, keep=self.cfg.keep_checkpoints, protect={ckpt.path})
        return ckpt

    def save_best(self) -> None:
        ckpt = save_checkpoint(self.best_root, self.step, self._write_policy, {"stage": "ppo"})
        prune(self.best_root, keep=1, protect={ckpt.path})

    def _load_state(self, ckpt: Checkpoint) -> None:
        import torch

        state = torch.load(ckpt.path / TRAINER_STATE, map_location="cpu", weights_only=True)
        self.policy_opt.load_state_dict(state["policy_optimizer"])
        self.value_opt.load_state_dict(state["value_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.kl.value = float(state["kl_coef"])
        self.monitor = Monitor(**json.loads(state["monitor"]))
        self.reward_first = state["reward_first"]
        self.last_stats = json.loads(state["last_stats"])
        self.step = self.resumed_from = self.saved_step = int(state["step"])


# ----------------------------------------------------------------------------------- helpers


def _one(inputs: dict[str, list[Path]], name: str, what: str) -> Path:
    paths = inputs.get(name) or []
    if len(paths) != 1:
        raise ValueError(f'the ppo stage needs exactly one {what} as input "{name}"')
    path = Path(paths[0])
    if not path.is_dir():
        raise ValueError(f'input "{name}": {path} is not a folder')
    return path


def _load_causal_lm(path: Path) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, local_files_only=True
    )


def _load_value_model(path: Path) -> PreTrainedModel:
    """A per-token value head on the reward model's body (its score weights, plus a new bias
    that transformers initialises to zero), or the value model of a checkpoint."""
    import torch
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised score.bias" is expected here
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, use_safetensors=True, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def _check_finite(step: int, what: str, *tensors: torch.Tensor) -> None:
    import torch

    for tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"training diverged at step {step}: {what} are not finite (NaN or inf); "
                f"{DIVERGED_HINT}"
            )


def _means(totals: dict[str, float], count: int) -> dict[str, float]:
    return {name: value / max(1, count) for name, value in totals.items()}


def _rollout_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _last_user_text(messages: Messages) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


def _autocast(device: torch.device, amp: torch.dtype | None) -> Any:
    import torch

    return torch.autocast(device.type, dtype=amp, enabled=amp is not None)


def _due(step: int, every: int, last: bool) -> bool:
    return last or (every > 0 and step % every == 0)


# ------------------------------------------------------------------------------- the run itself


def run(
    cfg: PPOConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the policy with PPO and save it to ``out_dir``; return statistics.

    When ``reporter.should_stop()`` turns true, a checkpoint is saved and the partial result is
    returned with ``"stopped_early": True``; ``out_dir`` then gets no model. ValueError (with a
    message for people) when the inputs cannot work or training diverges.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    own_work_dir = work_dir is None
    work = Path(work_dir) if work_dir is not None else out_dir / ".work"
    session = Session(cfg, inputs, work, reporter)
    session.start()
    outcome = train(session)
    result = _result(session, outcome, started)
    if outcome != "stopped":
        _write_output(session, out_dir, result, from_best=outcome == "diverged")
        if own_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return result


def train(session: Session) -> Literal["done", "stopped", "diverged"]:
    """Steps until ``max_steps``, a stop request, or (with ``stop_at_divergence``) divergence."""
    cfg, reporter = session.cfg, session.reporter
    monitoring = cfg.monitor_every > 0 and bool(session.prompts.monitor)
    if monitoring and not session.monitor.points and session.run_monitor() is None:
        return _stop(session)
    while session.step < cfg.max_steps:
        if reporter.should_stop():
            return _stop(session)
        stats = session.train_step()
        if stats is None:
            return _stop(session)
        session.step += 1
        step, last = session.step, session.step == cfg.max_steps
        if session.reward_first is None:
            session.reward_first = stats["reward/mean"]
        session.last_stats = stats
        reporter.metrics({k: v for k, v in stats.items() if k != "cut_short"}, step)
        reporter.progress(step, cfg.max_steps, f"step {step}")
        if cfg.sample_every and (step % cfg.sample_every == 0 or last):
            session.record_samples(step)
        if "cut_short" in stats:
            return _stop(session)
        if monitoring and _due(step, cfg.monitor_every, last):
            if session.run_monitor() is None:
                return _stop(session)
            if cfg.stop_at_divergence and session.monitor.divergence_step is not None:
                session.save()
                reporter.log(
                    f"stopped at step {step} on divergence; the output is the policy from "
                    f"step {session.monitor.best_step}"
                )
                return "diverged"
        if step % cfg.save_every == 0 or last:
            session.save()
    if session.saved_step != session.step:
        session.save()
    return "done"


def _stop(session: Session) -> Literal["stopped"]:
    if session.saved_step != session.step:
        session.save()
    session.reporter.log(f"stopped at step {session.step}; a checkpoint was saved")
    return "stopped"


def _result(session: Session, outcome: str, started: float) -> dict[str, Any]:
    from training.core.device import dtype_name

    cfg, monitor, last = session.cfg, session.monitor, session.last_stats
    return {
        "steps": session.step,
        "max_steps": cfg.max_steps,
        "stopped_early": outcome == "stopped",
        "stopped_at_divergence": outcome == "diverged",
        "resumed_from_step": session.resumed_from,
        "reward_first": session.reward_first,
        "reward_last": last.get("reward/mean"),
        "kl_last": last.get("kl"),
        "kl_coef_last": session.kl.value,
        "best_step": monitor.best_step,
        "divergence_step": monitor.divergence_step,
        "output_step": monitor.best_step if outcome == "diverged" else session.step,
        "monitor": {
            "prompts": len(session.prompts.monitor),
            "source": session.prompts.monitor_source,
            "independent": session.monitor_rm is not None,
            "best_independent_rm": monitor.best_independent,
            "divergence_threshold": cfg.divergence_threshold,
            "divergence_patience": cfg.divergence_patience,
            "points": monitor.points,
        },
        "prompts": len(session.prompts.train),
        "dropped_too_long": session.prompts.dropped_too_long,
        "device": session.device.type,
        "dtype": dtype_name(session.amp),
        "seconds": round(time.monotonic() - started, 3),
    }


def _write_output(session: Session, out_dir: Path, result: dict[str, Any], from_best: bool) -> None:
    """The policy folder; ``orchard.json`` last, since its presence means complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "orchard.json").unlink(missing_ok=True)
    best = latest_complete(session.best_root) if from_best else None
    if from_best and best is None:
        raise ValueError(f"the best checkpoint in {session.best_root} is missing or damaged")
    if best is not None:
        for item in best.path.iterdir():
            if item.is_file() and item.name != "COMPLETE":
                shutil.copy2(item, out_dir / item.name)
    else:
        session._write_policy(out_dir)
    manifest = {
        "kind": "checkpoint",
        "stage": "ppo",
        "config": session.cfg.model_dump(),
        "stats": result,
    }
    tmp = out_dir / ".orchard.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(tmp, out_dir / "orchard.json")


def rollout_throughput(
    cfg: PPOConfig,
    inputs: dict[str, list[Path]],
    steps: int = 3,
    reporter: Reporter | None = None,
) -> dict[str, float]:
    """Time ``steps`` PPO steps (rollout + update) after one warm-up step, in a throwaway work
    folder: samples per second, seconds per step and their rollout / update split."""
    import tempfile

    from training.core.reporting import RecordingReporter

    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        session = Session(cfg, inputs, Path(tmp), reporter or RecordingReporter())
        session.start()
        timings = []
        for _ in range(steps + 1):
            stats = session.train_step()
            if stats is None:
                break
            session.step += 1
            timings.append(stats)
    measured = timings[1:] or timings
    if not measured:
        return {}
    rollout = sum(s["time/rollout"] for s in measured) / len(measured)
    update = sum(s["time/update"] for s in measured) / len(measured)
    tokens = sum(s["response/mean_length"] for s in measured) / len(measured)
    return {
        "steps": float(len(measured)),
        "seconds_per_step": rollout + update,
        "rollout_seconds": rollout,
        "update_seconds": update,
        "samples_per_second": cfg.batch_size / (rollout + update),
        "reply_tokens_per_second": cfg.batch_size * tokens / (rollout + update),
    }
