"""The ``reward`` stage: a reward model trained on preference pairs, with TRL's RewardTrainer.

Inputs: ``inputs["base"]``, exactly one Hugging Face model folder (a causal LM such as the output
of the ``sft`` stage, or an earlier reward model) with its tokenizer and ``chat_template.jinja``;
and ``inputs["datasets"]``, one or more preference snapshot folders. A snapshot holds
``train.jsonl`` and ``validation.jsonl`` (which may be empty or missing), one pair per line, in
TRL's explicit-prompt conversational form::

    {"prompt": [{"role": "user", "content": "Hi"}],
     "chosen": [{"role": "assistant", "content": "Hello! How can I help?"}],
     "rejected": [{"role": "assistant", "content": "What."}],
     "margin": 1.0}

The prompt may hold a whole conversation (system, user, assistant and tool turns); ``margin`` is
optional. The implicit form ``{"chosen": [messages], "rejected": [messages]}`` is accepted too:
the messages both share at the start become the prompt. ``card.json`` is not read.

Data. Every line is parsed and checked here (a bad line is reported with its file and line
number) and both sides of every pair are rendered through the chat template exactly as TRL
renders them (``apply_chat_template(prompt + reply, tokenize=True)``, no generation prompt) to
measure them. TRL silently drops pairs with a side longer than ``max_length`` tokens; here they
are counted, reported, and dropped before TRL sees them, and a snapshot with no pair left is
refused. A snapshot without validation pairs gives ``validation_fraction`` of its training pairs
(a seeded, deterministic choice) to validation.

Model. ``AutoModelForSequenceClassification`` with ``num_labels=1``: the base's transformer with
a new, seeded ``score`` head that reads the hidden state of the last non-pad token
(``config.pad_token_id`` is the tokenizer's pad token). ``method="full"`` trains every weight;
``"lora"`` trains a PEFT LoRA adapter (``task_type="SEQ_CLS"``) plus the whole ``score`` head
(``modules_to_save``), and the adapter is merged at the end: the output is always a full
sequence-classification model. Loss: ``-log sigmoid(r_chosen - r_rejected - margin)`` (the margin
only with ``use_margins`` and only where a pair has one), plus TRL's optional
``center_rewards_coefficient * mean((r_chosen + r_rejected)^2)``.

Reporting. A :class:`transformers.TrainerCallback` forwards progress and TRL's logs
(``train/loss``, ``train/accuracy``, ``train/margin``, ``train/mean_reward``, ``train/lr``,
``train/grad_norm``) to the reporter, and turns ``reporter.should_stop()`` into a clean stop with
a checkpoint. Every ``eval_every`` steps and at the end, the held-out pairs are scored here (not
by ``Trainer.evaluate``, whose accuracy is a mean of batch means): ``val/loss``,
``val/accuracy`` (the share of pairs whose chosen reply scores higher, ties half) and
``val/margin``. At the end the ``worst_pairs`` record lists the held-out pairs with the lowest
``score(chosen) - score(rejected)`` (up to 20, wrongly ordered ones first, correct ones too when
fewer than 20 are wrong).

Checkpoints, as in ``sft``: ``checkpoint-N`` folders under ``work_dir/checkpoints`` (default
``out_dir/.work``) every ``save_every`` steps, when asked to stop and at the last step; each is
marked complete (:mod:`training.core.hf_checkpoints`) once the Trainer has finished writing it;
a new run in the same ``work_dir`` deletes incomplete folders and resumes from the newest
complete one. The newest ``keep_checkpoints`` are kept.

Output in ``out_dir``: ``config.json`` (``num_labels`` 1, ``pad_token_id`` set),
``model.safetensors``, the tokenizer files, ``chat_template.jinja`` and ``orchard.json``
(written last: ``{"kind": "checkpoint", "stage": "reward", "method", "config", "stats"}``).

Helpers for the rest of Orchard: :func:`load_reward_model`, :func:`score` (renders a conversation
exactly as training did and reads the reward) and :func:`pairwise_accuracy`.

From the shell::

    python -m training.core reward --config cfg.json --input base=out/sft \\
        --input datasets=data/prefs-v1 --out out/rm

Simplifications:

- A LoRA adapter is not accepted as ``base``: merge it first (``training.core.sft.merge_adapter``).
- Validation scores at most ``max_eval_pairs`` held-out pairs (a fixed, evenly spread selection).
  ``train_accuracy`` in the result is measured the same way at the end, on at most
  ``max_eval_pairs`` training pairs, not averaged over the run.
- Snapshots are concatenated (no mixing weights).
- Pairs are measured here and tokenized again inside TRL, with the same template call; the test
  suite checks that the two agree.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from training.core.device import DevicePreference, DtypePreference, device_field, dtype_field
from training.core.reporting import Cancelled, Reporter
from training.core.trl_common import (
    StageRun,
    TrainerSession,
    base_dir,
    check_model_folder,
    check_vocab,
    common_training_arguments,
    context_window,
    count_parameters,
    every,
    fitted_max_length,
    load_chat_tokenizer,
    load_pretrained,
    read_jsonl,
    same_method,
    snapshot_dirs,
    spread,
    start_training,
    write_model_folder,
)

if TYPE_CHECKING:  # torch, transformers, datasets, trl and peft load only when a run starts
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant", "tool")
MEASURE_BATCH = 256  # conversations rendered and tokenized per call while measuring
WORST_PAIRS = 20  # held-out pairs listed in the worst_pairs record
# Without an explicit learning rate: TRL's default for full fine-tuning of a reward model (its
# head and the transformer move together), ten times that for LoRA, whose B matrices start at 0.
DEFAULT_LEARNING_RATE = {"full": 1e-4, "lora": 1e-3}
METRIC_NAMES = {  # TRL's log keys -> the reporter's metric names
    "loss": "train/loss",
    "accuracy": "train/accuracy",
    "margin": "train/margin",
    "mean_reward": "train/mean_reward",
    "learning_rate": "train/lr",
    "grad_norm": "train/grad_norm",
}
# The end of the message for a LoRA adapter given as a base, after the hint to merge it.
ADAPTER_ADVICE = " and use the merged model"

ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Messages = list[dict[str, Any]]


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["full", "lora"] = Field(
        "full",
        description=(
            "full trains every weight and the new score head; lora trains a small low-rank "
            "adapter plus the score head on the frozen model, then merges the adapter in."
        ),
    )
    lora_rank: int = Field(8, ge=1, le=1024, description="LoRA: rank of the adapter matrices.")
    lora_alpha: float = Field(
        16.0,
        gt=0,
        le=4096,
        description="LoRA: the adapter's update is scaled by lora_alpha / lora_rank.",
    )
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="LoRA: dropout on the adapter's input while training."
    )
    lora_target_modules: Literal["all-linear"] | list[ModuleName] = Field(
        "all-linear",
        description=(
            "LoRA: the layers that get an adapter: all-linear (every linear layer except the "
            'score head) or a list of module names such as ["q_proj", "v_proj"].'
        ),
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Peak learning rate; empty: 1e-4 for full fine-tuning, 1e-3 for LoRA.",
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "linear", description="How the learning rate falls after warmup."
    )
    warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Steps of linear warmup to the peak learning rate."
    )
    epochs: float = Field(
        1.0,
        gt=0,
        le=1000,
        description="Passes over the training pairs (reward models overfit after one or two).",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Optimizer steps to train; when set, it overrides epochs.",
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        description="Pairs per micro-batch (each pair is two sequences: chosen and rejected).",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Micro-batches whose gradients are summed before each optimizer step: the effective "
            "batch is batch_size x gradient_accumulation_steps pairs."
        ),
    )
    max_length: int = Field(
        512,
        ge=16,
        le=131_072,
        description=(
            "Longest prompt plus reply in tokens; pairs with a longer side are dropped and "
            "counted (lowered to the model's context window when that is shorter)."
        ),
    )
    use_margins: bool = Field(
        True,
        description=(
            "Use the optional per-pair margin: the chosen reply must then outscore the rejected "
            "one by at least that much (pairs without a margin get 0)."
        ),
    )
    center_rewards_coefficient: float | None = Field(
        None,
        ge=0.0,
        le=10.0,
        description=(
            "Pull rewards towards 0 with this weight on mean((chosen + rejected)^2); empty: off. "
            "0.01 is the usual value."
        ),
    )
    validation_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description=(
            "Share of a snapshot's training pairs held out for validation when the snapshot has "
            "no validation pairs of its own (a fixed, seeded choice; 0: none)."
        ),
    )
    max_eval_pairs: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Validation scores at most this many held-out pairs.",
    )
    log_every: int = Field(
        5, ge=1, le=100_000, description="Report the training loss and accuracy every N steps."
    )
    eval_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Measure validation loss and accuracy every N steps (0: only at the end).",
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
        1337,
        ge=0,
        le=2**31 - 1,
        description=(
            "Seed for the new score head, the adapter, the data order and the validation split."
        ),
    )
    device: DevicePreference = device_field()
    dtype: DtypePreference = dtype_field()

    def peak_learning_rate(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATE[self.method]


# --------------------------------------------------------------------------------------- data


@dataclass
class Pair:
    """One preference pair: the shared prompt and the two replies (each a list of messages)."""

    prompt: Messages
    chosen: Messages
    rejected: Messages
    where: str  # "path, line N": for messages about this pair
    margin: float | None = None
    chosen_length: int = 0  # tokens of prompt + chosen, rendered as TRL renders them
    rejected_length: int = 0

    @property
    def length(self) -> int:
        return max(self.chosen_length, self.rejected_length)

    def describe(self) -> dict[str, Any]:
        """The pair as text for people: the prompt as ``role: content`` lines, the replies."""
        return {
            "prompt": "\n".join(f"{m['role']}: {_content_text(m)}" for m in self.prompt),
            "chosen": "\n".join(_content_text(m) for m in self.chosen),
            "rejected": "\n".join(_content_text(m) for m in self.rejected),
            "where": self.where,
        }


def _content_text(message: dict[str, Any]) -> str:
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        text += f"[{fn.get('name')}({json.dumps(fn.get('arguments'), ensure_ascii=False)})]"
    return text


@dataclass
class Snapshot:
    """One preference snapshot after checking and filtering."""

    path: Path
    train: list[Pair]
    validation: list[Pair]
    dropped_too_long: int = 0
    dropped_validation: int = 0  # validation pairs longer than max_length
    split_from_train: int = 0  # validation pairs taken from train.jsonl

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "train": len(self.train),
            "validation": len(self.validation),
            "dropped_too_long": self.dropped_too_long,
            "dropped_validation": self.dropped_validation,
            "split_from_train": self.split_from_train,
        }


@dataclass
class TrainingData:
    snapshots: list[Snapshot]
    train: list[Pair]
    validation: list[Pair]  # at most max_eval_pairs

    @property
    def dropped_too_long(self) -> int:
        return sum(s.dropped_too_long + s.dropped_validation for s in self.snapshots)

    @property
    def has_margins(self) -> bool:
        return any(p.margin is not None for p in self.train + self.validation)


def read_pairs(path: Path) -> list[Pair]:
    """Parse and check a JSONL file of preference pairs; ValueError names the file and line."""
    return [_parse_pair(record, where) for where, record in read_jsonl(path)]


def _parse_pair(record: Any, where: str) -> Pair:
    from training.core.sft import object_arguments

    if not isinstance(record, dict) or "chosen" not in record or "rejected" not in record:
        raise ValueError(
            f'{where}: expected an object with "chosen" and "rejected" message lists (and '
            'optionally "prompt" and "margin")'
        )
    sides = {}
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            continue
        messages = record[key]
        if not isinstance(messages, list) or not messages:
            raise ValueError(
                f'{where}: "{key}" must be a non-empty list of messages '
                '({"role": ..., "content": ...}), not plain text'
            )
        for index, message in enumerate(messages, start=1):
            _check_message(message, f'{where}, "{key}" message {index}')
        sides[key] = object_arguments(messages)
    chosen, rejected = sides["chosen"], sides["rejected"]
    prompt = sides.get("prompt")
    if prompt is None:  # implicit prompt: the messages both sides start with
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    for key, reply in (("chosen", chosen), ("rejected", rejected)):
        if reply[-1]["role"] != "assistant":
            raise ValueError(f'{where}: "{key}" must end with an assistant message')
    margin = record.get("margin")
    if margin is not None and (
        isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin)
    ):
        raise ValueError(f'{where}: "margin" must be a number, got {margin!r}')
    return Pair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        where=where,
        margin=None if margin is None else float(margin),
    )


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"{where}: a message must be an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    calls = message.get("tool_calls")
    if calls is not None and (role != "assistant" or not isinstance(calls, list)):
        raise ValueError(f"{where}: only assistant messages may have tool_calls (a list)")
    content = message.get("content")
    if isinstance(content, str) or (content is None and calls):
        return
    raise ValueError(f"{where}: the {role} message's content must be a string")


def render_ids(tok: PreTrainedTokenizerBase, conversations: list[Messages]) -> list[list[int]]:
    """Token ids of each conversation, rendered exactly as TRL's RewardTrainer renders a side
    of a pair: ``apply_chat_template(messages, tokenize=True, return_dict=True)``, no generation
    prompt, no tools."""
    ids: list[list[int]] = []
    for start in range(0, len(conversations), MEASURE_BATCH):
        batch = conversations[start : start + MEASURE_BATCH]
        encoded = tok.apply_chat_template(batch, tokenize=True, return_dict=True)
        ids.extend(list(row) for row in encoded["input_ids"])
    return ids


def measure(tok: PreTrainedTokenizerBase, pairs: list[Pair]) -> None:
    """Fill in the token length of each pair's two sides."""
    lengths = [
        len(ids)
        for ids in render_ids(
            tok, [c for p in pairs for c in (p.prompt + p.chosen, p.prompt + p.rejected)]
        )
    ]
    for index, pair in enumerate(pairs):
        pair.chosen_length, pair.rejected_length = lengths[2 * index], lengths[2 * index + 1]


def split_validation(pairs: list[Pair], fraction: float, seed: int) -> tuple[list, list]:
    """``(train, validation)``: a seeded ``fraction`` of ``pairs`` held out (at least one when the
    fraction is above 0 and there are two or more pairs; at least one always left to train on)."""
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    count = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held = set(random.Random(seed).sample(range(len(pairs)), count))
    return (
        [p for i, p in enumerate(pairs) if i not in held],
        [p for i, p in enumerate(pairs) if i in held],
    )


def load_snapshot(
    path: Path,
    tok: PreTrainedTokenizerBase,
    cfg: RewardConfig,
    *,
    index: int,
    max_length: int,
    context_window: int,
) -> Snapshot:
    """Read, measure, filter and (when it has no validation pairs) split one snapshot."""
    train_file = path / "train.jsonl"
    if not train_file.is_file():
        raise ValueError(f"{path} is not a preference snapshot (no train.jsonl)")
    train = read_pairs(train_file)
    if not train:
        raise ValueError(
            f"The preference snapshot {path.name} has no pairs to train on ({train_file} is "
            "empty): export the dataset again or leave it out"
        )
    val_file = path / "validation.jsonl"
    validation = read_pairs(val_file) if val_file.is_file() else []
    measure(tok, train + validation)

    fitting = [p for p in train if p.length <= max_length]
    if not fitting:
        longest = max(p.length for p in train)
        raise ValueError(
            f"All {len(train)} pairs in the preference snapshot {path.name} are longer than "
            f"max_length ({max_length} tokens, prompt plus reply); the longest has {longest} "
            f"tokens: raise max_length (this model's context window allows up to "
            f"{context_window})"
        )
    snapshot = Snapshot(path=path, train=fitting, validation=[])
    snapshot.dropped_too_long = len(train) - len(fitting)
    snapshot.validation = [p for p in validation if p.length <= max_length]
    snapshot.dropped_validation = len(validation) - len(snapshot.validation)
    if not validation:
        snapshot.train, snapshot.validation = split_validation(
            fitting, cfg.validation_fraction, cfg.seed * 1_000_003 + index
        )
        snapshot.split_from_train = len(snapshot.validation)
    return snapshot


def load_data(
    paths: list[Path],
    tok: PreTrainedTokenizerBase,
    cfg: RewardConfig,
    *,
    max_length: int,
    context_window: int,
    reporter: Reporter,
) -> TrainingData:
    snapshots = []
    for index, path in enumerate(paths):
        snapshot = load_snapshot(
            path, tok, cfg, index=index, max_length=max_length, context_window=context_window
        )
        split = (
            f" ({snapshot.split_from_train} held out from train.jsonl)"
            if snapshot.split_from_train
            else ""
        )
        reporter.log(
            f"{path.name}: {len(snapshot.train)} training and {len(snapshot.validation)} "
            f"validation pairs{split}; dropped {snapshot.dropped_too_long} training and "
            f"{snapshot.dropped_validation} validation pairs longer than {max_length} tokens"
        )
        snapshots.append(snapshot)
    return TrainingData(
        snapshots=snapshots,
        train=[p for s in snapshots for p in s.train],
        validation=spread([p for s in snapshots for p in s.validation], cfg.max_eval_pairs),
    )


def to_dataset(pairs: list[Pair], with_margin: bool) -> Dataset:
    """TRL's explicit-prompt conversational rows; messages kept verbatim as JSON values."""
    from datasets import Dataset, Features, Json, List, Value

    columns: dict[str, Any] = {
        "prompt": List(Json()),
        "chosen": List(Json()),
        "rejected": List(Json()),
    }
    if with_margin:
        columns["margin"] = Value("float32")
    rows = []
    for p in pairs:
        row: dict[str, Any] = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        if with_margin:
            row["margin"] = p.margin or 0.0
        rows.append(row)
    return Dataset.from_list(rows, features=Features(columns))


# ------------------------------------------------------------------------ model and tokenizer


def _base_dir(inputs: dict[str, list[Path]]) -> Path:
    return base_dir(inputs, "a reward model", ADAPTER_ADVICE)


def _dataset_dirs(inputs: dict[str, list[Path]]) -> list[Path]:
    return snapshot_dirs(
        inputs,
        "datasets",
        purpose="a reward model",
        kind="preference snapshot",
        missing="there are no pairs to train on",
    )


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    tok = load_chat_tokenizer(path)
    if tok.pad_token is None:  # what TRL does too; then the eos ending a turn counts as padding
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        raise ValueError(f"the tokenizer in {path} has neither a pad token nor an eos token")
    tok.padding_side = "right"
    return tok


def _load_seq_cls(path: Path, seed: int | None = None) -> PreTrainedModel:
    """The folder as a one-output sequence classifier in fp32; a new head is seeded."""
    from transformers import AutoModelForSequenceClassification, set_seed

    try:  # quiets "score.weight newly initialized" and "lm_head.weight unexpected"
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:  # an internal of TRL's: only the warnings depend on it
        suppress_seqcls_warning = contextlib.nullcontext

    if seed is not None:
        set_seed(seed)
    with suppress_seqcls_warning():
        return load_pretrained(AutoModelForSequenceClassification, path, num_labels=1)


# ---------------------------------------------------------------------------- scoring helpers


def load_reward_model(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of a reward model folder, in eval mode (safetensors, local only)."""
    path = Path(path)
    check_model_folder(path, ADAPTER_ADVICE)
    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or config.get("num_labels")
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or labels != 1:
        raise ValueError(
            f"{path} is not a reward model (a sequence classifier with one output): train one "
            "with the reward stage"
        )
    tok = _load_tokenizer(path)
    model = _load_seq_cls(path)
    text_config = model.config.get_text_config()
    if text_config.pad_token_id is None:
        text_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def score_ids(model: PreTrainedModel, ids: list[list[int]], *, batch_size: int = 16) -> list[float]:
    """The reward of each token sequence: right-padded batches (sorted by length to waste
    little padding), the score read at the last non-pad token. Order follows ``ids``."""
    import torch

    if not ids:
        return []
    pad_id = model.config.get_text_config().pad_token_id
    if pad_id is None:
        raise ValueError("the reward model's config has no pad_token_id")
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = [0.0] * len(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = model(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False
                ).logits
                for row, value in zip(chunk, logits.float().squeeze(-1).tolist(), strict=True):
                    scores[row] = float(value)
    finally:
        model.train(was_training)
    return scores


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    batch_size: int = 16,
    *,
    truncate_left: bool = False,
) -> list[float]:
    """The reward of each conversation (prompt messages followed by the assistant's reply),
    rendered through the chat template exactly as the reward stage trained on it.

    A conversation longer than the model's context window is a ValueError, or with
    ``truncate_left`` loses its oldest tokens (the reply's end, where the score is read, stays).
    """
    if not conversations:
        return []
    ids = render_ids(tokenizer, [list(c) for c in conversations])
    window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    for index, row in enumerate(ids):
        if window and len(row) > window:
            if not truncate_left:
                raise ValueError(
                    f"conversation {index} has {len(row)} tokens, more than the reward model's "
                    f"context window ({window}): shorten it"
                )
            ids[index] = row[-window:]
    return score_ids(model, ids, batch_size=batch_size)


def pairwise_accuracy(chosen_scores: list[float], rejected_scores: list[float]) -> float:
    """Share of pairs whose chosen reply scores higher than the rejected one; ties count half."""
    if len(chosen_scores) != len(rejected_scores):
        raise ValueError(
            f"{len(chosen_scores)} chosen scores but {len(rejected_scores)} rejected scores"
        )
    if not chosen_scores:
        raise ValueError("no pairs to measure accuracy on")
    points = sum(
        1.0 if c > r else 0.5 if c == r else 0.0
        for c, r in zip(chosen_scores, rejected_scores, strict=True)
    )
    return points / len(chosen_scores)


@dataclass
class PairScores:
    """Scores of a list of pairs and what they add up to."""

    pairs: list[Pair]
    chosen: list[float]
    rejected: list[float]
    loss: float
    accuracy: float
    margin: float

    def worst(self, count: int = WORST_PAIRS) -> list[dict[str, Any]]:
        order = sorted(range(len(self.pairs)), key=lambda i: self.chosen[i] - self.rejected[i])
        return [
            {
                **self.pairs[i].describe(),
                "chosen_score": self.chosen[i],
                "rejected_score": self.rejected[i],
                "margin": self.chosen[i] - self.rejected[i],
            }
            for i in order[:count]
        ]


def score_pairs(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    pairs: list[Pair],
    *,
    batch_size: int,
    use_margins: bool,
    center_coefficient: float | None,
    amp_dtype: torch.dtype | None = None,
) -> PairScores:
    """Score both sides of every pair; the loss is the training loss (margins, centering)."""
    import torch

    conversations = [c for p in pairs for c in (p.prompt + p.chosen, p.prompt + p.rejected)]
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        scores = score_ids(model, render_ids(tok, conversations), batch_size=2 * batch_size)
    chosen, rejected = scores[0::2], scores[1::2]
    c, r = torch.tensor(chosen), torch.tensor(rejected)
    margins = torch.tensor([(p.margin or 0.0) if use_margins else 0.0 for p in pairs])
    loss = -torch.nn.functional.logsigmoid(c - r - margins).mean()
    if center_coefficient is not None:
        loss = loss + center_coefficient * torch.mean((c + r) ** 2)
    return PairScores(
        pairs=pairs,
        chosen=chosen,
        rejected=rejected,
        loss=float(loss),
        accuracy=pairwise_accuracy(chosen, rejected),
        margin=float((c - r).mean()),
    )


# -------------------------------------------------------------------------- trainer and bridge


@dataclass(kw_only=True)
class Session(TrainerSession):
    """A prepared reward-model run: data, model, trainer and what it reports to."""

    metric_names = METRIC_NAMES

    cfg: RewardConfig
    data: TrainingData
    max_length: int
    validated: dict[int, PairScores] = field(default_factory=dict)  # by step

    def measure(self, pairs: list[Pair]) -> PairScores:
        return score_pairs(
            self.model,
            self.tok,
            pairs,
            batch_size=self.cfg.batch_size,
            use_margins=self.cfg.use_margins,
            center_coefficient=self.cfg.center_rewards_coefficient,
            amp_dtype=self.amp_dtype,
        )

    def on_step(self, step: int, last: bool) -> None:
        """Validate every ``eval_every`` steps (the end is validated after training)."""
        if every(step, last, self.cfg.eval_every):
            self.validate(step)

    def validate(self, step: int) -> PairScores | None:
        """Score the held-out pairs and report ``val/loss``, ``val/accuracy``, ``val/margin``."""
        if not self.data.validation:
            return None
        measured = self.measure(self.data.validation)
        self.validated[step] = measured
        self.reporter.metrics(
            {
                "val/loss": measured.loss,
                "val/accuracy": measured.accuracy,
                "val/margin": measured.margin,
            },
            step,
        )
        return measured


def training_arguments(
    cfg: RewardConfig,
    checkpoints_dir: Path,
    *,
    max_length: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> Any:
    """TRL's ``RewardConfig`` for this run, with every default that does not suit us overridden
    (bf16 and activation checkpointing are on by default in TRL)."""
    from trl import RewardConfig as TRLConfig

    return TRLConfig(
        **common_training_arguments(
            cfg,
            checkpoints_dir,
            learning_rate=cfg.peak_learning_rate(),
            device=device,
            amp_dtype=amp_dtype,
        ),
        max_length=max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        per_device_eval_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        eval_strategy="no",  # validation is scored by the bridge (exact pairwise accuracy)
        # TRL would also zero the LoRA dropout (it disables dropout after wrapping the model):
        # prepare() zeroes the base model's dropout itself, before the adapter is added.
        disable_dropout=False,
    )


def _lora_config(cfg: RewardConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="SEQ_CLS",
        modules_to_save=["score"],  # the new head must train in full
    )


def prepare(
    cfg: RewardConfig,
    inputs: dict[str, list[Path]],
    checkpoints_dir: Path,
    reporter: Reporter,
) -> Session:
    """Check the inputs, load the pairs, load the model and build the RewardTrainer.

    ValueError with a message for people when the inputs cannot work. Nothing is trained yet:
    ``session.trainer.train_dataset`` is the tokenized training set TRL will use.
    """
    import torch
    from trl import RewardTrainer

    device, amp_dtype = start_training(cfg)
    base = _base_dir(inputs)
    paths = _dataset_dirs(inputs)
    tok = _load_tokenizer(base)
    window = context_window(base)
    max_length = fitted_max_length(cfg.max_length, window, reporter)
    if tok.pad_token == tok.eos_token:
        reporter.log(
            "the tokenizer has no pad token of its own: its eos token pads, so the reward is read "
            "before a final eos"
        )
    data = load_data(
        paths, tok, cfg, max_length=max_length, context_window=window, reporter=reporter
    )
    if reporter.should_stop():
        raise Cancelled()

    model = _load_seq_cls(base, seed=cfg.seed)
    check_vocab(tok, model)
    model.config.get_text_config().pad_token_id = tok.pad_token_id
    for module in model.modules():  # chosen and rejected must see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    session = Session(
        cfg=cfg,
        base_dir=base,
        tok=tok,
        data=data,
        checkpoints_dir=checkpoints_dir,
        reporter=reporter,
        max_length=max_length,
        device=device,
        amp_dtype=amp_dtype,
    )
    with_margin = cfg.use_margins and data.has_margins
    session.trainer = trainer = RewardTrainer(
        model=model,
        args=training_arguments(
            cfg, checkpoints_dir, max_length=max_length, device=device, amp_dtype=amp_dtype
        ),
        train_dataset=to_dataset(data.train, with_margin),
        processing_class=tok,
        peft_config=_lora_config(cfg) if cfg.method == "lora" else None,
    )
    if len(trainer.train_dataset) != len(data.train):  # same template call: should never happen
        reporter.log(
            f"TRL kept {len(trainer.train_dataset)} of the {len(data.train)} training pairs "
            "measured here"
        )
    session.attach_bridge()
    return session


# ------------------------------------------------------------------------------- the run itself


def run(
    cfg: RewardConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the reward model, checkpoint, and save it to ``out_dir``; return statistics.

    When ``reporter.should_stop()`` turns true during training, a checkpoint is saved and the
    partial result is returned with ``"stopped_early": True``; ``out_dir`` then gets no model.
    ValueError (with a message for people) when the inputs cannot work.
    """
    stage = StageRun.begin(out_dir, work_dir)
    session = prepare(cfg, inputs, stage.checkpoints, reporter)
    stage.find_resume(reporter, same_method(cfg.method))
    trainable, total = count_parameters(session.model)
    reporter.log(
        f"{cfg.method} reward model: {trainable:,} of {total:,} parameters trainable; "
        f"{len(session.data.train)} training and {len(session.data.validation)} validation "
        f"pairs, max_length {session.max_length}; {session.where()}"
    )
    state, stopped = session.train(stage.resume)
    validation = train_scores = None
    if not stopped:
        step = state.global_step
        validation = session.validated.get(step) or session.validate(step)
        sample = spread(session.data.train, cfg.max_eval_pairs)
        train_scores = session.measure(sample)
        if validation is not None:
            worst = validation.worst()
            reporter.record(
                "worst_pairs",
                {
                    "step": step,
                    "validation_pairs": len(validation.pairs),
                    "accuracy": validation.accuracy,
                    "wrong": sum(
                        c <= r for c, r in zip(validation.chosen, validation.rejected, strict=True)
                    ),
                    "pairs": worst,
                },
                step,
            )

    logged = [e for e in state.log_history if "loss" in e]
    result = {
        **stage.result_head(state, stopped),
        "method": cfg.method,
        "train_loss_first": logged[0]["loss"] if logged else None,
        "train_loss_last": logged[-1]["loss"] if logged else None,
        "train_accuracy": train_scores.accuracy if train_scores else None,
        "val_loss": validation.loss if validation else None,
        "val_accuracy": validation.accuracy if validation else None,
        "val_margin": validation.margin if validation else None,
        "pairs": len(session.data.train),
        "validation_pairs": len(session.data.validation),
        "dropped_too_long": session.data.dropped_too_long,
        "used_margins": cfg.use_margins and session.data.has_margins,
        "trainable_params": trainable,
        "total_params": total,
        "epochs": round(state.epoch or 0.0, 4),
        "max_length": session.max_length,
        **stage.result_tail(session),
    }
    if not stopped:
        _write_output(session, stage.out_dir, result)
        stage.clean_up()
    return result


def _write_output(session: Session, out_dir: Path, result: dict[str, Any]) -> None:
    """The final reward model folder; ``orchard.json`` last, since it means complete."""
    cfg = session.cfg
    manifest: dict[str, Any] = {
        "kind": "checkpoint",
        "stage": "reward",
        "method": cfg.method,
        "config": cfg.model_dump(),
        "stats": {
            **result,
            "base": str(session.base_dir),
            "datasets": [s.describe() for s in session.data.snapshots],
        },
    }
    model = session.model
    if cfg.method == "lora":
        model = model.merge_and_unload()  # the trained score head replaces the original
        manifest["merged"] = True
    model.config.get_text_config().pad_token_id = session.tok.pad_token_id
    write_model_folder(out_dir, model, session.tok, manifest)
