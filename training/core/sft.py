"""The ``sft`` stage: supervised fine-tuning of a chat model on conversations, with TRL.

Inputs: ``inputs["base"]``, exactly one Hugging Face model folder (``config.json``,
``model.safetensors``, the tokenizer files and ``chat_template.jinja``), for example the output of
the ``pretrain`` stage or of an earlier ``sft`` run; and ``inputs["datasets"]``, one or more
dataset snapshot folders. A snapshot holds ``train.jsonl`` and ``validation.jsonl`` (which may be
empty or missing), one conversation per line::

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}

Roles are ``system``, ``user``, ``assistant`` and ``tool``; an assistant message may carry
``tool_calls`` (``[{"type": "function", "function": {"name": ..., "arguments": ...}}]``), and
then its ``content`` may be empty or null. ``card.json`` in a snapshot is not read.

Data. Every line is parsed and checked here (a bad line is reported with its file and line
number), then rendered through the model's chat template once to measure it: conversations
longer than ``max_length`` tokens are dropped and counted (``too_long="drop"``) or refused
(``"error"``); conversations without an assistant turn have nothing to learn and are dropped. With
several snapshots, ``dataset_weights`` mixes them: the training set keeps its total size and
each snapshot contributes in proportion to its weight (a random subset when it has more
conversations than its share, whole copies plus a random remainder when it has fewer), drawn
with ``seed``. The conversations go to TRL as a ``datasets.Dataset`` whose ``messages`` column is
``List(Json())``: stored as JSON text, every message comes back exactly as written (Arrow's own
struct inference would merge the keys of different tool-call ``arguments`` and add nulls).

Training. ``trl.SFTTrainer`` with ``assistant_only_loss=True``: the chat template's
``{% generation %}`` markers cover what the assistant writes and the ``<|im_end|>`` that ends its
turn, and only those tokens carry loss. ``method="full"`` trains every weight; ``"lora"`` trains
a PEFT LoRA adapter on the frozen base (``lora_target_modules`` defaults to every linear layer
except the output head) and, with ``merge_adapter``, folds it into the weights at the end.
TRL's defaults that do not suit a CPU (bf16, activation checkpointing) are set explicitly from
``device`` and ``dtype``. A :class:`transformers.TrainerCallback` forwards progress, metrics
(``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/token_accuracy``, ``val/loss``,
``stop_rate``) and log lines to the reporter, and turns ``reporter.should_stop()`` into a clean
stop with a checkpoint.

Samples and stopping. Every ``sample_every`` steps and at the end, the current model answers the
``sample_prompts`` (greedy, through the chat template with the generation prompt, with
:class:`training.core.generate.Engine`); they are recorded as ``samples``. ``stop_rate`` is the
share of replies, to the sample prompts and to up to 16 held-out conversations cut before their
last assistant turn, that end with the tokenizer's eos (``<|im_end|>``) within
``sample_max_new_tokens``: a chat model that never learned to end its turn scores 0.

Checkpoints. The Trainer writes ``checkpoint-N`` folders under ``work_dir/checkpoints``
(default ``out_dir/.work``) every ``save_every`` steps, when asked to stop, and at the last step.
It writes them in place, file by file, so a crash can leave half a folder: only after a save has
finished (the callback's ``on_save``) is a ``COMPLETE`` marker with the hash of every file
written (:mod:`training.core.checkpoints`' format). A new run in the same ``work_dir`` deletes
folders without a valid marker and resumes from the newest complete one
(``trainer.train(resume_from_checkpoint=...)``): optimizer, scheduler, RNG and data order
included, for the full model and for a LoRA adapter alike (the tests check that a stopped and
resumed LoRA run on the CPU ends with the uninterrupted run's adapter, despite the adapter-resume
bugs STACK.md lists). The newest ``keep_checkpoints`` complete ones are kept.

Output in ``out_dir``: ``config.json``, ``model.safetensors``, ``generation_config.json`` (eos
includes ``<|im_end|>``, pad is ``<|pad|>``), the tokenizer files, ``chat_template.jinja`` and
``orchard.json`` (written last: ``{"kind": "checkpoint", "stage": "sft", "method", "config",
"stats"}``). With ``method="lora"`` and ``merge_adapter=False`` the output is the adapter
instead: ``adapter_config.json``, ``adapter_model.safetensors``, the tokenizer files and
``orchard.json`` with ``"adapter": true``; :func:`load_for_generation` runs it on its base and
:func:`merge_adapter` turns it into a full model folder. Without a ``work_dir`` the stage works in
``out_dir/.work`` and deletes it after a successful run.

From the shell::

    python -m training.core sft --config cfg.json --input base=out/pretrain \\
        --input datasets=data/chat-v1 --input datasets=data/tools-v2 --out out/sft

Simplifications:

- A LoRA adapter is not accepted as ``base``: merge it first (:func:`merge_adapter`).
- Validation measures at most ``max_eval_conversations`` held-out conversations (a fixed
  selection), the same ones every time.
- ``tokens_trained`` is the number of assistant tokens in the training set times the epochs run
  (fractional when training stopped mid-epoch), not a count of the batches actually drawn.
- Conversations are measured once here and tokenized again inside TRL (it is the point that TRL
  reads the conversations itself); both use the same chat template, so the lengths agree.
- A resumed run trains on whatever the inputs are now; changing the snapshots between the stop
  and the resume changes the data order from there on.
- Mixing plain documents into the conversations (a "mid-training" mix) is not implemented.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from training.core.device import DevicePreference, DtypePreference, device_field, dtype_field
from training.core.reporting import Cancelled, Reporter
from training.core.trl_common import (
    StageRun,
    TrainerSession,
    base_dir,
    check_vocab,
    common_training_arguments,
    context_window,
    count_parameters,
    every,
    fitted_max_length,
    load_causal_lm,
    load_chat_tokenizer,
    raise_field_error,
    read_json,
    read_jsonl,
    require_eos,
    same_method,
    set_generation_defaults,
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
STOP_RATE_HELD_OUT = 16  # held-out conversations used for stop_rate, besides the sample prompts
MEASURE_BATCH = 256  # conversations rendered and tokenized per call while measuring
# Without an explicit learning rate: full fine-tuning moves every weight, so it needs a smaller
# step than LoRA, whose B matrices start at zero and whose updates are scaled by alpha / rank.
DEFAULT_LEARNING_RATE = {"full": 5e-4, "lora": 2e-3}
METRIC_NAMES = {  # TRL's log keys -> the reporter's metric names
    "loss": "train/loss",
    "learning_rate": "train/lr",
    "grad_norm": "train/grad_norm",
    "mean_token_accuracy": "train/token_accuracy",
    "entropy": "train/entropy",
    "eval_loss": "val/loss",
    "eval_mean_token_accuracy": "val/token_accuracy",
}

Prompt = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Weight = Annotated[float, Field(ge=0.0, le=1e6)]


class SFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["full", "lora"] = Field(
        "full",
        description=(
            "full trains every weight: right for Orchard's small models, where an adapter saves "
            "little. lora trains a small low-rank adapter on the frozen model: far less memory "
            "for optimizer state on large models."
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
            'output head) or a list of module names such as ["q_proj", "v_proj"].'
        ),
    )
    merge_adapter: bool = Field(
        True,
        description=(
            "LoRA: fold the trained adapter into the weights and save a full model (true), or "
            "save only the adapter, which needs its base model to run (false)."
        ),
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Peak learning rate; empty: 5e-4 for full fine-tuning, 2e-3 for LoRA.",
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="How the learning rate falls after warmup."
    )
    warmup_steps: int = Field(
        0, ge=0, le=1_000_000, description="Steps of linear warmup to the peak learning rate."
    )
    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training conversations.")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Optimizer steps to train; when set, it overrides epochs.",
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Conversations per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Micro-batches whose gradients are summed before each optimizer step: the effective "
            "batch is batch_size x gradient_accumulation_steps conversations."
        ),
    )
    packing: bool = Field(
        False,
        description=(
            "Pack several conversations into each sequence of max_length tokens (no padding); "
            "each still attends only to itself."
        ),
    )
    max_length: int = Field(
        512,
        ge=16,
        le=131_072,
        description=(
            "Longest conversation in tokens (lowered to the model's context window when that "
            "is shorter)."
        ),
    )
    too_long: Literal["drop", "error"] = Field(
        "drop",
        description="Conversations longer than max_length: drop them (and count them) or fail.",
    )
    dataset_weights: list[Weight] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description=(
            "Mixing weights, one per dataset in input order: each dataset's share of the "
            "training set. Empty: every conversation of every dataset once."
        ),
    )
    log_every: int = Field(
        5, ge=1, le=100_000, description="Report the training loss every N steps."
    )
    eval_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Measure the validation loss every N steps (0: only at the end).",
    )
    max_eval_conversations: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Validation uses at most this many held-out conversations.",
    )
    sample_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Answer the sample prompts every N steps (0: only at the end).",
    )
    sample_prompts: list[Prompt] = Field(
        default_factory=lambda: ["Hello! Who are you?", "What is 12 + 30?"],
        max_length=16,
        description="User messages the model answers at every sample point.",
    )
    system_prompt: str | None = Field(
        None, max_length=4000, description="System message placed before each sample prompt."
    )
    sample_max_new_tokens: int = Field(
        48,
        ge=1,
        le=2048,
        description="Token budget per sample reply; a reply that ends within it counts as stopped.",
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
        description="Seed for the adapter's initial weights, the data order and the mixing.",
    )
    device: DevicePreference = device_field()
    dtype: DtypePreference = dtype_field()

    @model_validator(mode="after")
    def _consistent(self) -> SFTConfig:
        if self.dataset_weights is not None and sum(self.dataset_weights) <= 0:
            raise_field_error(
                self,
                "dataset_weights",
                self.dataset_weights,
                "weights_all_zero",
                "at least one dataset weight must be above 0",
                {},
            )
        return self

    def peak_learning_rate(self) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATE[self.method]


# --------------------------------------------------------------------------------------- data


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    where: str  # "path, line N": for messages about this conversation
    length: int = 0  # tokens of the rendered conversation
    assistant_tokens: int = 0  # of which carry loss


@dataclass
class Snapshot:
    """One dataset snapshot after checking and filtering."""

    path: Path
    train: list[Conversation]
    validation: list[Conversation]
    dropped_too_long: int = 0
    dropped_no_reply: int = 0
    dropped_validation: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "train": len(self.train),
            "validation": len(self.validation),
            "dropped_too_long": self.dropped_too_long,
            "dropped_no_reply": self.dropped_no_reply,
            "dropped_validation": self.dropped_validation,
        }


@dataclass
class TrainingData:
    """What the trainer gets: the mixed training set, the validation set and the counts."""

    snapshots: list[Snapshot]
    train: list[Conversation]
    validation: list[Conversation]
    mixed_counts: list[int] = field(default_factory=list)  # training conversations per snapshot

    @property
    def assistant_tokens(self) -> int:
        return sum(c.assistant_tokens for c in self.train)

    @property
    def dropped_too_long(self) -> int:
        return sum(s.dropped_too_long for s in self.snapshots)

    @property
    def dropped_no_reply(self) -> int:
        return sum(s.dropped_no_reply for s in self.snapshots)


def read_conversations(path: Path) -> list[Conversation]:
    """Parse and check a JSONL file of conversations; ValueError names the file and line."""
    conversations = []
    for where, record in read_jsonl(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f'{where}: expected an object with a non-empty "messages" list')
        for index, message in enumerate(messages, start=1):
            _check_message(message, f"{where}, message {index}")
        conversations.append(Conversation(messages=object_arguments(messages), where=where))
    return conversations


def object_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call ``arguments`` as objects. Snapshots store them as JSON text (the OpenAI wire
    format, and one stable Parquet column); the chat template renders ``arguments | tojson``, so
    text would be quoted a second time and the model would learn escaped JSON."""
    result = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_decoded_call(call) for call in calls]}
        result.append(message)
    return result


def _decoded_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return call
    try:
        decoded = json.loads(arguments)
    except ValueError:
        return call  # free text arguments stay text
    function = {**function, "arguments": decoded}
    return {**call, "function": function} if "function" in call else function


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"{where}: a message must be an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise ValueError(f"{where}: only assistant messages may have tool_calls")
        if not isinstance(calls, list) or not all(_is_tool_call(c) for c in calls):
            raise ValueError(
                f'{where}: tool_calls must be a list of {{"type": "function", "function": '
                '{"name": ..., "arguments": ...}}'
            )
    content = message.get("content")
    if isinstance(content, str) or (content is None and role == "assistant" and calls):
        return
    raise ValueError(f"{where}: the {role} message's content must be a string")


def _is_tool_call(call: Any) -> bool:
    fn = call.get("function", call) if isinstance(call, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) and "arguments" in fn


def measure(tok: PreTrainedTokenizerBase, conversations: list[Conversation]) -> None:
    """Fill in each conversation's token length and number of assistant (loss) tokens.

    Renders with the same chat template and mask TRL uses, in batches (the tokenizer encodes a
    batch in parallel in Rust).
    """
    for start in range(0, len(conversations), MEASURE_BATCH):
        batch = conversations[start : start + MEASURE_BATCH]
        encoded = tok.apply_chat_template(
            [c.messages for c in batch],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        for conv, ids, mask in zip(
            batch, encoded["input_ids"], encoded["assistant_masks"], strict=True
        ):
            conv.length = len(ids)
            conv.assistant_tokens = int(sum(mask))


def load_snapshot(
    path: Path,
    tok: PreTrainedTokenizerBase,
    *,
    max_length: int,
    too_long: str,
    context_window: int,
) -> Snapshot:
    """Read, measure and filter one snapshot; ValueError when nothing trainable is left."""
    train_file = path / "train.jsonl"
    if not train_file.is_file():
        raise ValueError(f"{path} is not a dataset snapshot (no train.jsonl)")
    train = read_conversations(train_file)
    if not train:
        raise ValueError(
            f"The dataset snapshot {path.name} has no conversations to train on "
            f"({train_file} is empty): export the dataset again or leave it out"
        )
    val_file = path / "validation.jsonl"
    validation = read_conversations(val_file) if val_file.is_file() else []
    measure(tok, train + validation)

    snapshot = Snapshot(path=path, train=[], validation=[])
    replies = [c for c in train if c.assistant_tokens > 0]
    snapshot.dropped_no_reply = len(train) - len(replies)
    if not replies:
        raise ValueError(
            f"The dataset snapshot {path.name} has no conversations to train on: none of its "
            f"{len(train)} conversations has an assistant reply"
        )
    fitting = [c for c in replies if c.length <= max_length]
    longest = max(c.length for c in replies)
    if not fitting:
        raise ValueError(
            f"All {len(replies)} conversations in the dataset snapshot {path.name} are longer "
            f"than max_length ({max_length} tokens); the longest has {longest} tokens: raise "
            f"max_length (this model's context window allows up to {context_window})"
        )
    if len(fitting) < len(replies) and too_long == "error":
        first = next(c for c in replies if c.length > max_length)
        raise ValueError(
            f"{len(replies) - len(fitting)} of {len(replies)} conversations in the dataset "
            f"snapshot {path.name} are longer than max_length ({max_length} tokens; the longest "
            f"has {longest}, the first is at {first.where}): raise max_length or set too_long "
            "to drop"
        )
    snapshot.train = fitting
    snapshot.dropped_too_long = len(replies) - len(fitting)
    held_out = [c for c in validation if c.assistant_tokens > 0]
    snapshot.validation = [c for c in held_out if c.length <= max_length]
    snapshot.dropped_validation = len(validation) - len(snapshot.validation)
    if too_long == "error" and len(snapshot.validation) < len(held_out):
        raise ValueError(
            f"{len(held_out) - len(snapshot.validation)} validation conversations in the dataset "
            f"snapshot {path.name} are longer than max_length ({max_length} tokens): raise "
            "max_length or set too_long to drop"
        )
    return snapshot


def mix(
    sets: list[list[Conversation]], weights: list[float] | None, seed: int
) -> tuple[list[Conversation], list[int]]:
    """The training set: every conversation once, or the sets mixed by ``weights``.

    With weights the total stays the sum of the set sizes and set i contributes
    ``round(total * w_i / sum(w))`` conversations (at least one when ``w_i > 0``): a seeded random
    subset when that is fewer than it has, whole copies plus a random remainder when more.
    Returns the conversations (shuffled when mixed) and the count taken from each set.
    """
    if weights is None:
        return [c for s in sets for c in s], [len(s) for s in sets]
    total, weight_sum = sum(len(s) for s in sets), sum(weights)
    mixed: list[Conversation] = []
    counts = []
    for index, (conversations, weight) in enumerate(zip(sets, weights, strict=True)):
        share = round(total * weight / weight_sum)
        if weight > 0:
            share = max(1, share)
        rng = random.Random(seed * 1_000_003 + index)  # one stream per set: stable under edits
        copies, rest = divmod(share, len(conversations))
        mixed.extend(conversations * copies)
        mixed.extend(rng.sample(conversations, rest))
        counts.append(share)
    random.Random(seed).shuffle(mixed)
    return mixed, counts


def load_data(
    paths: list[Path],
    tok: PreTrainedTokenizerBase,
    cfg: SFTConfig,
    *,
    max_length: int,
    context_window: int,
    reporter: Reporter,
) -> TrainingData:
    """Every snapshot checked, filtered and mixed; the validation sets concatenated."""
    if cfg.dataset_weights is not None and len(cfg.dataset_weights) != len(paths):
        raise ValueError(
            f"dataset_weights has {len(cfg.dataset_weights)} weights for {len(paths)} datasets: "
            "give one weight per dataset, in input order"
        )
    snapshots = []
    for path in paths:
        snapshot = load_snapshot(
            path, tok, max_length=max_length, too_long=cfg.too_long, context_window=context_window
        )
        reporter.log(
            f"{path.name}: {len(snapshot.train)} training and {len(snapshot.validation)} "
            f"validation conversations; dropped {snapshot.dropped_too_long} longer than "
            f"{max_length} tokens, {snapshot.dropped_no_reply} without an assistant reply"
        )
        snapshots.append(snapshot)
    train, counts = mix([s.train for s in snapshots], cfg.dataset_weights, cfg.seed)
    if cfg.dataset_weights is not None:
        shares = ", ".join(f"{s.path.name} {n}" for s, n in zip(snapshots, counts, strict=True))
        reporter.log(f"mixed training set of {len(train)} conversations: {shares}")
    # A fixed, evenly spread selection: the same conversations at every evaluation.
    validation = spread([c for s in snapshots for c in s.validation], cfg.max_eval_conversations)
    return TrainingData(
        snapshots=snapshots, train=train, validation=validation, mixed_counts=counts
    )


def to_dataset(conversations: list[Conversation]) -> Dataset:
    """A ``datasets.Dataset`` with one ``messages`` column that keeps each message verbatim."""
    from datasets import Dataset, Features, Json, List

    features = Features({"messages": List(Json())})
    return Dataset.from_list([{"messages": c.messages} for c in conversations], features=features)


# ------------------------------------------------------------------------ model and tokenizer


def _base_dir(inputs: dict[str, list[Path]]) -> Path:
    return base_dir(inputs, "fine-tuning", " and fine-tune the merged model")


def _dataset_dirs(inputs: dict[str, list[Path]]) -> list[Path]:
    return snapshot_dirs(
        inputs,
        "datasets",
        purpose="fine-tuning",
        kind="dataset snapshot",
        missing="there are no conversations to train on",
    )


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from trl.chat_template_utils import has_generation_markers

    tok = load_chat_tokenizer(path)
    if not has_generation_markers(tok.chat_template):
        raise ValueError(
            f"the chat template in {path} has no {{% generation %}} markers, so the assistant's "
            "tokens cannot be told apart from the prompt: use a tokenizer made by Orchard's "
            "tokenizer stage"
        )
    require_eos(tok, path)
    return tok


# ------------------------------------------------------------------------- samples, stop rate


def _prompt_messages(cfg: SFTConfig) -> list[list[dict[str, Any]]]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return [[*system, {"role": "user", "content": p}] for p in cfg.sample_prompts]


def held_out_prompts(conversations: list[Conversation], count: int) -> list[list[dict[str, Any]]]:
    """Up to ``count`` conversations cut before their last assistant turn, evenly spread."""
    prompts = []
    for conv in conversations:
        last = max(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
        if last > 0:
            prompts.append(conv.messages[:last])
    return spread(prompts, count)


def generate_replies(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, Any]]],
    max_new_tokens: int,
) -> list[dict[str, Any] | None]:
    """Greedy replies through the chat template: ``{"prompt", "reply", "ended"}`` each.

    ``ended`` means the reply finished with the tokenizer's eos within the budget. A prompt that
    leaves no room in the context window gets None. The model's train/eval mode is restored.
    """
    from training.core.generate import Engine, SamplingParams, chat_prompt

    window = int(model.config.max_position_embeddings)
    texts = [chat_prompt(tok, messages) for messages in conversations]
    fits = [len(tok.encode(t, add_special_tokens=False)) < window for t in texts]
    replies: list[dict[str, Any] | None] = [None] * len(conversations)
    if not any(fits):
        return replies
    was_training = model.training
    try:
        engine = Engine(model, tok)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        fitting = [t for t, ok in zip(texts, fits, strict=True) if ok]
        completions = iter(engine.generate(fitting, params))
    finally:
        model.train(was_training)
    eos = tok.eos_token_id
    for index, (messages, ok) in enumerate(zip(conversations, fits, strict=True)):
        if ok:
            done = next(completions)
            replies[index] = {
                "prompt": messages[-1]["content"] or "",
                "reply": done.text,
                "ended": done.finish_reason == "eos" and done.token_ids[-1:] == [eos],
            }
    return replies


# -------------------------------------------------------------------------- trainer and bridge


@dataclass(kw_only=True)
class Session(TrainerSession):
    """A prepared fine-tuning run: data, model, trainer and what it reports to."""

    metric_names = METRIC_NAMES

    cfg: SFTConfig
    data: TrainingData
    max_length: int
    last_sampled: int | None = None
    stop_rate: float | None = None

    def on_step(self, step: int, last: bool) -> None:
        """Sample every ``sample_every`` steps (the end is sampled after training)."""
        if every(step, last, self.cfg.sample_every):
            self.sample(step)

    def sample(self, step: int) -> float | None:
        """Answer the sample prompts (recorded) and the held-out prompts; report stop_rate."""
        prompts = _prompt_messages(self.cfg)
        held_out = held_out_prompts(self.data.validation or self.data.train, STOP_RATE_HELD_OUT)
        replies = generate_replies(
            self.model, self.tok, prompts + held_out, self.cfg.sample_max_new_tokens
        )
        self.last_sampled = step
        answered = [r for r in replies if r is not None]
        if not answered:
            return None
        self.stop_rate = sum(r["ended"] for r in answered) / len(answered)
        shown = [r for r in replies[: len(prompts)] if r is not None]
        self.reporter.record(
            "samples", {"step": step, "samples": shown, "stop_rate": self.stop_rate}, step
        )
        self.reporter.metrics({"stop_rate": self.stop_rate}, step)
        return self.stop_rate


def training_arguments(
    cfg: SFTConfig,
    checkpoints_dir: Path,
    *,
    max_length: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    has_validation: bool,
) -> Any:
    """TRL's ``SFTConfig`` for this run, with every default that does not suit us overridden.

    TRL turns on bf16 and activation checkpointing by default: the first fails or crawls on most
    CPUs, the second only saves memory that small models do not need.
    """
    from trl import SFTConfig as TRLConfig

    evaluating = has_validation and cfg.eval_every > 0
    return TRLConfig(
        **common_training_arguments(
            cfg,
            checkpoints_dir,
            learning_rate=cfg.peak_learning_rate(),
            device=device,
            amp_dtype=amp_dtype,
        ),
        max_length=max_length,
        assistant_only_loss=True,
        packing=cfg.packing,
        per_device_eval_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=cfg.eval_every if evaluating else None,
    )


def _lora_config(cfg: SFTConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def prepare(
    cfg: SFTConfig,
    inputs: dict[str, list[Path]],
    checkpoints_dir: Path,
    reporter: Reporter,
) -> Session:
    """Check the inputs, load and mix the data, load the model and build the SFTTrainer.

    ValueError with a message for people when the inputs cannot work. Nothing is trained yet:
    ``session.trainer.train_dataset`` is the tokenized training set TRL will use.
    """
    from trl import SFTTrainer

    device, amp_dtype = start_training(cfg)  # refuses a missing GPU before reading anything
    base = _base_dir(inputs)
    paths = _dataset_dirs(inputs)
    tok = _load_tokenizer(base)
    window = context_window(base)
    max_length = fitted_max_length(cfg.max_length, window, reporter)
    data = load_data(
        paths, tok, cfg, max_length=max_length, context_window=window, reporter=reporter
    )
    if reporter.should_stop():  # nothing worth keeping yet: leave by raising
        raise Cancelled()

    model = load_causal_lm(base)
    check_vocab(tok, model)
    set_generation_defaults(model, tok)
    args = training_arguments(
        cfg,
        checkpoints_dir,
        max_length=max_length,
        device=device,
        amp_dtype=amp_dtype,
        has_validation=bool(data.validation),
    )
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
    session.trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(data.train),
        eval_dataset=to_dataset(data.validation) if data.validation else None,
        processing_class=tok,
        peft_config=_lora_config(cfg) if cfg.method == "lora" else None,
    )
    session.attach_bridge()
    return session


# ------------------------------------------------------------------------------- the run itself


def run(
    cfg: SFTConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune, checkpoint, and save the model (or adapter) to ``out_dir``; return statistics.

    When ``reporter.should_stop()`` turns true during training, a checkpoint is saved and the
    partial result is returned with ``"stopped_early": True``; ``out_dir`` then gets no model.
    ValueError (with a message for people) when the inputs cannot work.
    """
    stage = StageRun.begin(out_dir, work_dir)
    session = prepare(cfg, inputs, stage.checkpoints, reporter)
    stage.find_resume(reporter, same_method(cfg.method))
    trainable, total = count_parameters(session.model)
    reporter.log(
        f"{cfg.method} fine-tuning: {trainable:,} of {total:,} parameters trainable; "
        f"{len(session.data.train)} training conversations, max_length {session.max_length}; "
        f"{session.where()}"
    )
    state, stopped = session.train(stage.resume)
    if not stopped:
        _finish_measurements(session)

    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in state.log_history if "eval_loss" in entry]
    result = {
        **stage.result_head(state, stopped),
        "method": cfg.method,
        "adapter": cfg.method == "lora" and not cfg.merge_adapter,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "val_loss": evals[-1] if evals else None,
        "stop_rate": None if stopped else session.stop_rate,
        "trainable_params": trainable,
        "total_params": total,
        "conversations": len(session.data.train),
        "validation_conversations": len(session.data.validation),
        "dropped_too_long": session.data.dropped_too_long,
        "dropped_no_reply": session.data.dropped_no_reply,
        "tokens_trained": round(session.data.assistant_tokens * (state.epoch or 0.0)),
        "epochs": round(state.epoch or 0.0, 4),
        "max_length": session.max_length,
        **stage.result_tail(session),
    }
    if not stopped:
        _write_output(session, stage.out_dir, result)
        stage.clean_up()
    return result


def _finish_measurements(session: Session) -> None:
    """Validation loss at the last step (unless just measured) and the final samples."""
    state = session.trainer.state
    step = state.global_step
    if session.data.validation:
        measured = [e["step"] for e in state.log_history if "eval_loss" in e]
        if not measured or measured[-1] != step:
            session.trainer.evaluate()
    if session.last_sampled != step or session.stop_rate is None:
        session.sample(step)


def _write_output(session: Session, out_dir: Path, result: dict[str, Any]) -> None:
    """The final model (or adapter) folder; ``orchard.json`` last, since it means complete."""
    cfg = session.cfg
    manifest: dict[str, Any] = {
        "kind": "checkpoint",
        "stage": "sft",
        "method": cfg.method,
        "config": cfg.model_dump(),
        "stats": {**result, "datasets": _dataset_stats(session.data)},
    }
    model = session.model
    if cfg.method == "lora" and not cfg.merge_adapter:
        # The PEFT model saves adapter_config.json + adapter_model.safetensors.
        manifest.update(adapter=True, base=str(session.base_dir))
    else:
        if cfg.method == "lora":
            model = model.merge_and_unload()
            manifest["merged"] = True
        set_generation_defaults(model, session.tok)
    write_model_folder(out_dir, model, session.tok, manifest)


def _dataset_stats(data: TrainingData) -> list[dict[str, Any]]:
    return [
        {**s.describe(), "mixed_train": n}
        for s, n in zip(data.snapshots, data.mixed_counts, strict=True)
    ]


# --------------------------------------------------------------------------- adapters: merge, load


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Fold a LoRA adapter into its base and save a full model folder with ``orchard.json``."""
    from peft import PeftModel

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    _check_adapter(adapter_dir)
    tok = _load_tokenizer(adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_dir)
    model = PeftModel.from_pretrained(load_causal_lm(base_dir), adapter_dir).merge_and_unload()
    set_generation_defaults(model, tok)
    adapter_manifest = read_json(adapter_dir / "orchard.json") or {}
    manifest = {
        "kind": "checkpoint",
        "stage": "sft",
        "method": "lora",
        "merged": True,
        "merged_from": {"base": str(base_dir), "adapter": str(adapter_dir)},
        "config": adapter_manifest.get("config"),
        "stats": adapter_manifest.get("stats"),
    }
    write_model_folder(out_dir, model, tok, manifest)


def load_for_generation(
    path: Path, base_path: Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` in eval mode from a model folder or a LoRA adapter folder.

    An adapter runs on its base without merging: ``base_path``, or the base recorded in
    ``adapter_config.json``. The generation config stops at the tokenizer's eos.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if (path / "adapter_config.json").is_file():
        _check_adapter(path)
        if base_path is None:
            recorded = (read_json(path / "adapter_config.json") or {}).get(
                "base_model_name_or_path"
            )
            if not recorded or not Path(recorded).is_dir():
                raise ValueError(
                    f"the adapter in {path} names no base model folder that exists here "
                    f"({recorded!r}): pass base_path"
                )
            base_path = Path(recorded)
        model = PeftModel.from_pretrained(load_causal_lm(Path(base_path)), path)
    else:
        model = load_causal_lm(path)
    set_generation_defaults(model, tok)
    return model.eval(), tok


def _check_adapter(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ValueError(
            f"{adapter_dir} has no adapter_model.safetensors: only safetensors weights are loaded"
        )


# ------------------------------------------------------------------------------------- merge


class MergeConfig(BaseModel):
    """Merging has nothing to choose: the base and the adapter are the run's inputs."""

    model_config = ConfigDict(extra="forbid")


def merge_run(
    cfg: MergeConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """The ``merge`` stage: fold ``inputs["adapter"]`` into ``inputs["base"]`` as a new full
    checkpoint (faster to serve, and a base for further training)."""
    bases, adapters = inputs.get("base") or [], inputs.get("adapter") or []
    if len(bases) != 1 or len(adapters) != 1:
        raise ValueError("merging needs exactly one base checkpoint and one LoRA adapter")
    reporter.progress(0, 1, "merging the adapter into its base")
    merge_adapter(bases[0], adapters[0], out_dir)
    reporter.progress(1, 1, "merged")
    return {"merged": True}
