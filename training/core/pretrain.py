"""The ``pretrain`` stage: train a Llama-style transformer from scratch on a text corpus.

Inputs: ``inputs["corpus"]``, corpus files (``.txt``, ``.jsonl``, optionally ``.gz``; see
:mod:`training.core.corpus`), and ``inputs["tokenizer"]``, one tokenizer folder as written by the
``tokenizer`` stage (loaded with ``AutoTokenizer.from_pretrained``, local files only).

Data. The corpus is tokenized once into ``work_dir/data/``: ``train.bin`` and ``val.bin`` hold
the token ids back to back (uint16 when the vocabulary fits, else uint32) and are read through
``numpy.memmap``, so a corpus larger than memory is fine; ``index.json`` records what was
tokenized (file sizes and times, tokenizer digest, split) and is written last, so a folder
without it is redone and a matching one is reused on resume. Every document is preceded by the
``<|endoftext|>`` id, which therefore separates documents and marks where one starts (samples are
prompted the same way). Every Nth document, N = round(1 / val_fraction), is held out. Training
batches are random contiguous windows of ``context_length + 1`` tokens (inputs and next-token
targets), drawn by a seeded generator whose state is saved in every checkpoint.

Training. ``LlamaForCausalLM`` built from a preset (:mod:`training.core.model`) sized to the
tokenizer; AdamW (fused kernels, betas 0.9/0.95) without weight decay on embeddings and norm
gains; linear warmup then cosine decay to ``learning_rate * min_lr_ratio``; gradient clipping and
accumulation; bf16 autocast where :func:`training.core.device.autocast_dtype` says so; optional
``torch.compile`` of the loss. Validation reports ``val_loss`` (nats per token) and ``val_bpb``
(bits per UTF-8 byte of the evaluated text, comparable across tokenizers); samples from fixed
prompts are recorded with a fixed seed so they can be compared across steps.

Checkpoints (every ``checkpoint_every`` steps, at the end, and when the run is asked to stop) go
to ``work_dir/checkpoints`` through :func:`training.core.checkpoints.save_checkpoint`: the model
in Hugging Face format, the tokenizer, and ``trainer_state.pt`` with the optimizer state, the
RNG states, the sampler's generator and the step. ``trainer_state.pt`` is read back only with
``torch.load(weights_only=True)``. A run started again with the same ``work_dir`` resumes from
the newest complete checkpoint; on the CPU the result is bit-for-bit the uninterrupted run.

Output in ``out_dir``: ``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer files and ``orchard.json`` (written last: ``{"kind": "checkpoint", "stage":
"pretrain", "config", "metrics", "estimate"}``). ``AutoModelForCausalLM.from_pretrained(out_dir)``
and ``AutoTokenizer.from_pretrained(out_dir)`` load it with plain transformers. Without a
``work_dir`` the stage works in ``out_dir/.work`` and deletes it after a successful run.

From the shell::

    python -m training.core pretrain --config cfg.json --input corpus=data/a.txt \\
        --input tokenizer=out/tokenizer --out out/pretrain

Several GPUs (``processes`` above 1, or 0 for one per visible GPU): the corpus is tokenized in
the calling process, which then starts ``python -m torch.distributed.run --standalone
--nproc_per_node N -m training.core.distributed pretrain ...`` and relays the processes' reports
(see :mod:`training.core.distributed`). Each process runs :func:`run_rank`: the whole model on
its own GPU (NCCL; gloo on the CPU) wrapped in ``DistributedDataParallel``, and rows
``[r*B/N, (r+1)*B/N)`` of every batch of ``B = batch_size`` windows, which every process draws
from the same seeded generator. Gradients are averaged over the processes before clipping, so N
processes take the steps one process would take with the same config, up to floating-point
rounding. Rank 0 alone evaluates, samples, reports and writes checkpoints and the output;
checkpoints are the same as one process's, so a run may resume with another number of
processes. A stop request reaches every process at the same step (rank 0's answer is shared),
so they all stop after the same checkpoint.

Simplifications:

- Windows are sampled with replacement from the whole token stream; they may cross document
  boundaries (the model sees ``<|endoftext|>`` there) and an "epoch" has no exact meaning.
- Validation reads ``eval_batches`` fixed random windows of the held-out split, the same ones
  every time, not the whole split. If the held-out split is shorter than one window, validation
  is skipped and logged.
- ``val_bpb`` counts the bytes of the target tokens; special tokens (the document separators)
  have no bytes, so their losses are left out of ``val_bpb`` but included in ``val_loss``.
- The tokenized data is rebuilt when the corpus files or the tokenizer change; a resumed run then
  continues with the new data, which is logged.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from training.core.checkpoints import Checkpoint, latest_complete, prune, save_checkpoint
from training.core.corpus import END_OF_TEXT, CorpusError, corpus_format, iter_documents
from training.core.device import DevicePreference, DtypePreference, device_field, dtype_field
from training.core.distributed import (
    QuietReporter,
    RankGroup,
    launch,
    process_group,
    resolve_processes,
)
from training.core.model import PRESETS, PresetName
from training.core.reporting import Cancelled, Reporter

if TYPE_CHECKING:  # torch, numpy and transformers load only inside run(), never for the config
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

DATA_FORMAT_VERSION = 1
TRAINER_STATE = "trainer_state.pt"
ENCODE_BATCH_DOCUMENTS = 512  # documents per call into the Rust tokenizer
LOG_INTERVAL_SECONDS = 5.0  # pace of "tokenized N MB" log lines
ADAM_BETAS = (0.9, 0.95)  # GPT-3 / Llama: a shorter second-moment memory than 0.999 for LMs
# Above this context the T x T attention scores of the eager implementation cost more memory
# than the fused SDPA kernel saves; see choose_attention.
EAGER_ATTENTION_MAX_CONTEXT = 512


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: PresetName = Field(
        "tiny",
        description=(
            "Model shape: tiny (~1M parameters), mini (~4M), small (~25M), gpt2-small (~124M), "
            "medium (~350M). The embedding is sized to the tokenizer's vocabulary."
        ),
    )
    context_length: int = Field(
        256,
        ge=8,
        le=8192,
        description=(
            "Tokens the model sees at once (its context window). At most the preset's limit "
            "and the tokenizer's model_max_length."
        ),
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Windows per micro-batch.")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Micro-batches whose gradients are summed before each optimizer step: the effective "
            "batch is batch_size x grad_accum_steps windows, at the memory cost of one."
        ),
    )
    max_steps: int = Field(200, ge=1, le=10_000_000, description="Optimizer steps to train.")
    learning_rate: float = Field(
        3e-3,
        gt=0,
        le=1.0,
        description=(
            "Peak learning rate after warmup. 3e-3 suits the tiny and mini presets; use about "
            "1e-3 for small, 6e-4 for gpt2-small and 3e-4 for medium."
        ),
    )
    min_lr_ratio: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="The cosine schedule decays to learning_rate x this by the last step.",
    )
    warmup_steps: int = Field(
        20,
        ge=0,
        le=1_000_000,
        description="Steps of linear warmup from almost zero to learning_rate.",
    )
    weight_decay: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="AdamW weight decay on weight matrices (not on embeddings or norm gains).",
    )
    grad_clip: float = Field(
        1.0,
        ge=0.0,
        le=1000.0,
        description="Clip the global gradient norm to this value; 0 turns clipping off.",
    )
    log_every: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Report loss, learning rate, gradient norm and throughput every N steps.",
    )
    eval_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Measure validation loss and bits per byte every N steps (0: only at the end).",
    )
    eval_batches: int = Field(
        8, ge=1, le=10_000, description="Batches of held-out windows per validation."
    )
    sample_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Generate from the sample prompts every N steps (0: only at the end).",
    )
    sample_prompts: str = Field(
        "Once upon a time\nThe king said",
        max_length=4000,
        description="Prompts for the samples, one per line; empty lines are ignored.",
    )
    sample_max_new_tokens: int = Field(
        48, ge=1, le=2048, description="Tokens generated per sample."
    )
    sample_temperature: float = Field(
        0.8,
        ge=0.0,
        le=2.0,
        description="Sampling temperature; 0 picks the most likely token every time.",
    )
    checkpoint_every: int = Field(
        50,
        ge=1,
        le=1_000_000,
        description="Save a resumable checkpoint every N steps (and at the end).",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="How many of the newest checkpoints to keep."
    )
    val_fraction: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="Share of documents held out for validation (every Nth document); 0: none.",
    )
    seed: int = Field(
        1337,
        ge=0,
        le=2**31 - 1,
        description="Seed for the initial weights, the batch order and the samples.",
    )
    dtype: DtypePreference = dtype_field()
    compile: bool = Field(
        False,
        description=(
            "Compile the training step with torch.compile: faster steps after a slow first one "
            "(tens of seconds)."
        ),
    )
    device: DevicePreference = device_field()
    processes: int = Field(
        1,
        ge=0,
        le=64,
        description=(
            "Data-parallel training processes on this machine, one per GPU, started with "
            "torchrun: 1 trains in the worker itself; 0 starts one per visible CUDA GPU. "
            "batch_size stays the batch of all processes together, split evenly between them, "
            "so the result matches one process."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        limit = PRESETS[self.preset].max_position_embeddings
        if self.context_length > limit:
            _raise_field_error(
                self,
                "context_length",
                self.context_length,
                "context_too_long",
                "context_length must be at most {limit} for the {preset} preset",
                {"limit": limit, "preset": self.preset},
            )
        if self.processes > 1 and self.batch_size % self.processes:
            _raise_field_error(
                self,
                "processes",
                self.processes,
                "batch_not_divisible",
                "batch_size ({batch_size}) must split evenly between {processes} processes",
                {"batch_size": self.batch_size, "processes": self.processes},
            )
        if self.warmup_steps and self.warmup_steps >= self.max_steps:
            _raise_field_error(
                self,
                "warmup_steps",
                self.warmup_steps,
                "warmup_too_long",
                "warmup_steps must be less than max_steps ({max_steps})",
                {"max_steps": self.max_steps},
            )
        return self

    def prompts(self) -> list[str]:
        return [line.strip() for line in self.sample_prompts.splitlines() if line.strip()]


def _raise_field_error(
    model: BaseModel, field: str, value: Any, kind: str, message: str, context: dict[str, Any]
) -> None:
    """A ValidationError located at ``field``, so a web form shows it next to that field."""
    problem = PydanticCustomError(kind, message, context)
    raise ValidationError.from_exception_data(
        type(model).__name__, [InitErrorDetails(type=problem, loc=(field,), input=value)]
    )


def learning_rate_at(step: int, cfg: PretrainConfig) -> float:
    """The learning rate of optimizer update ``step`` (0-based).

    Linear warmup reaches the peak at update ``warmup_steps - 1``; a cosine then falls to
    ``learning_rate * min_lr_ratio`` exactly at the last update, ``max_steps - 1``.
    """
    peak = cfg.learning_rate
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    floor = peak * cfg.min_lr_ratio
    decay_steps = cfg.max_steps - cfg.warmup_steps - 1
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps) if decay_steps > 0 else 0.0
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- the training step


def causal_lm_loss(
    model: LlamaForCausalLM,
    window: torch.Tensor,
    amp_dtype: torch.dtype | None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross-entropy of ``window`` (B, T+1): inputs ``[:, :-1]``, targets ``[:, 1:]``.

    Calls the backbone and the head directly instead of ``model(labels=...)``: transformers'
    loss copies the logits to fp32 and shifts the labels, which materialises extra (B, T, V)
    tensors; here the fp32 upcast happens inside the cross-entropy, which torch.compile fuses.
    Returns a scalar, or (B, T) losses in nats with ``reduction="none"``.
    """
    import torch
    import torch.nn.functional as F

    inputs, targets = window[:, :-1], window[:, 1:]  # (B, T) each
    with torch.autocast(window.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state  # (B, T, h)
        logits = model.lm_head(hidden)  # (B, T, V)
    # (B*T, V) rows are contiguous: the log-softmax reads each row in one sweep.
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
    return losses.view(targets.shape) if reduction == "none" else losses  # (B, T) or ()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only.

    Embeddings (and the output head tied to them) are not decayed: rare tokens get few
    gradients, and decay would pull their vectors towards zero between updates. Norm gains
    (and biases, when a config has them) are one-dimensional scales and offsets; decaying them
    towards 0 fights the normalisation instead of regularising.
    """
    import torch

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():  # tied weights are listed once
        if not param.requires_grad:
            continue
        if param.ndim >= 2 and id(param) not in embeddings:
            decay.append(param)
        else:
            no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one (CPU, CUDA, MPS), else multi-tensor."""
    import torch

    fused = device.type in ("cpu", "cuda", "mps")
    return torch.optim.AdamW(
        param_groups(model, weight_decay),
        lr=learning_rate,
        betas=ADAM_BETAS,
        eps=1e-8,
        fused=fused or None,
        foreach=None if fused else True,
    )


def choose_attention(device: torch.device, compiled: bool, context_length: int) -> str:
    """``"sdpa"`` (fused attention) except for a compiled step on the CPU at short contexts.

    Measured on a 2-core Sapphire Rapids CPU (width 256, context 256): the CPU flash-attention
    backward kernel was the slowest part of a compiled step, while torch.compile fuses the eager
    implementation's scaling, mask and softmax into one loop between two batched matmuls
    (0.21 s against 0.33 s per step). Uncompiled, SDPA is the faster of the two.
    """
    if device.type == "cpu" and compiled and context_length <= EAGER_ATTENTION_MAX_CONTEXT:
        return "eager"
    return "sdpa"


TrainStep = Callable[[list["torch.Tensor"], float], tuple["torch.Tensor", "torch.Tensor"]]


def make_train_step(
    model: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
    *,
    amp_dtype: torch.dtype | None,
    grad_clip: float,
    compile: bool,
    data_parallel: torch.nn.parallel.DistributedDataParallel | None = None,
) -> TrainStep:
    """One optimizer update over a list of micro-batches: ``step(windows, lr) -> (loss, norm)``.

    Gradients of the micro-batches are accumulated (each loss divided by their number, so the
    update equals one on the concatenated batch); the global norm is measured before clipping.
    Loss and norm come back as device tensors: reading them (``.item()``) waits for the device,
    so the caller does that only when it reports.

    With ``data_parallel`` (the model's loss wrapped by :func:`data_parallel_loss`) each process
    passes its share of every micro-batch; the gradients are averaged over the processes in the
    last micro-batch's backward pass (the earlier ones accumulate locally, under ``no_sync``),
    so every process clips and updates with the gradient of the whole batch. The loss returned
    is this process's share; the caller averages it when it reports.
    """
    import torch

    params = [p for group in optimizer.param_groups for p in group["params"]]
    if data_parallel is None:
        loss_fn = torch.compile(causal_lm_loss) if compile else causal_lm_loss

        def forward(window: torch.Tensor) -> torch.Tensor:
            return loss_fn(model, window, amp_dtype)

    else:
        forward = torch.compile(data_parallel) if compile else data_parallel

    def accumulate(windows: list[torch.Tensor], index: int) -> Any:
        """No gradient exchange before the last micro-batch: one all-reduce per update."""
        if data_parallel is None or index == len(windows) - 1:
            return nullcontext()
        return data_parallel.no_sync()

    def step(windows: list[torch.Tensor], lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=windows[0].device)
        for index, window in enumerate(windows):  # (B, T+1) each
            with accumulate(windows, index):
                loss = forward(window)
                (loss / len(windows)).backward()
            total += loss.detach()
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total / len(windows), norm

    return step


def data_parallel_loss(
    model: LlamaForCausalLM, amp_dtype: torch.dtype | None, device: torch.device
) -> torch.nn.parallel.DistributedDataParallel:
    """``causal_lm_loss`` as a module wrapped in DistributedDataParallel.

    DDP prepares its gradient exchange in its own ``forward``; the loss calls the backbone and
    the head directly (see causal_lm_loss), so the wrapped module is the loss, not the model.
    Its buffers (the rotary frequencies) are constants: no need to broadcast them every step.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class CausalLMLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, window: torch.Tensor) -> torch.Tensor:
            return causal_lm_loss(self.model, window, amp_dtype)

    return DistributedDataParallel(
        CausalLMLoss(),
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
    )


# --------------------------------------------------------------------------------------- data


@dataclass
class TokenData:
    """The tokenized corpus: memory-mapped splits and what ``index.json`` says about them."""

    train: np.ndarray | None
    val: np.ndarray | None
    index: dict[str, Any]


class WindowSampler:
    """Random contiguous windows of ``window`` tokens from a token array, from a seeded generator.

    The generator is a CPU ``torch.Generator``: its state is a tensor, saved in checkpoints and
    loaded with ``weights_only=True``, so a resumed run draws exactly the windows the
    uninterrupted run would have drawn.
    """

    def __init__(self, tokens: np.ndarray, window: int, generator: torch.Generator) -> None:
        if len(tokens) < window:
            raise ValueError(f"{len(tokens)} tokens are fewer than one window of {window}")
        self.tokens = tokens
        self.window = window
        self.generator = generator

    def batch(self, batch_size: int, share: slice | None = None) -> torch.Tensor:
        """(batch_size, window) int64 token ids on the CPU, or only the ``share`` of those rows.

        Every process of a data-parallel run draws the whole batch from the same generator,
        so the generators stay in step, and reads only its rows.
        """
        import numpy as np
        import torch

        high = len(self.tokens) - self.window + 1
        starts = torch.randint(0, high, (batch_size,), generator=self.generator).tolist()
        if share is not None:
            starts = starts[share]
        rows = np.stack([self.tokens[s : s + self.window] for s in starts])
        return torch.from_numpy(rows.astype(np.int64))


def prepare_data(
    paths: list[Path],
    tok: PreTrainedTokenizerBase,
    data_dir: Path,
    *,
    val_fraction: float,
    eot_id: int,
    fingerprint: dict[str, Any],
    reporter: Reporter,
) -> TokenData:
    """Tokenize the corpus into ``data_dir`` unless a matching tokenization is already there."""
    index_path = data_dir / "index.json"
    index = _read_json(index_path)
    if (
        index is None
        or index.get("fingerprint") != fingerprint
        or not _splits_intact(data_dir, index)
    ):
        if index is not None:
            reporter.log("the tokenized corpus is stale or damaged: tokenizing again")
        index = _tokenize_corpus(paths, tok, data_dir, val_fraction, eot_id, fingerprint, reporter)
    else:
        reporter.log(f"reusing the tokenized corpus in {data_dir}")
    return TokenData(
        train=_open_split(data_dir, index, "train"),
        val=_open_split(data_dir, index, "val"),
        index=index,
    )


def _tokenize_corpus(
    paths: list[Path],
    tok: PreTrainedTokenizerBase,
    data_dir: Path,
    val_fraction: float,
    eot_id: int,
    fingerprint: dict[str, Any],
    reporter: Reporter,
) -> dict[str, Any]:
    import numpy as np

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "index.json").unlink(missing_ok=True)  # until the new one exists, nothing is valid
    dtype = np.uint16 if len(tok) <= 2**16 else np.uint32
    hold_out_every = round(1 / val_fraction) if val_fraction > 0 else 0
    splits = {name: _SplitWriter(data_dir, name, dtype) for name in ("train", "val")}
    encoder = tok.backend_tokenizer
    documents = 0
    last_log = time.monotonic()
    try:
        for batch in _document_batches(paths):
            encoded = encoder.encode_batch(batch, add_special_tokens=False)
            for text, encoding in zip(batch, encoded, strict=True):
                documents += 1
                held_out = hold_out_every > 0 and documents % hold_out_every == 0
                splits["val" if held_out else "train"].add(encoding.ids, eot_id, text)
            if reporter.should_stop():  # nothing worth keeping yet: leave by raising
                raise Cancelled()
            if time.monotonic() - last_log >= LOG_INTERVAL_SECONDS:
                last_log = time.monotonic()
                done = sum(s.bytes for s in splits.values()) / 1e6
                reporter.log(f"tokenized {documents} documents ({done:.1f} MB of text)")
        if documents == 0:
            raise CorpusError("the corpus contains no documents")
        index = {
            "version": DATA_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "dtype": np.dtype(dtype).name,
            "eot_id": eot_id,
            "hold_out_every": hold_out_every,
            "splits": {name: split.finish() for name, split in splits.items()},
        }
    finally:
        for split in splits.values():
            split.discard()
    _write_json_atomic(data_dir / "index.json", index)
    train, val = index["splits"]["train"], index["splits"]["val"]
    reporter.log(
        f"tokenized {documents} documents: {train['tokens']} training tokens, "
        f"{val['tokens']} held-out tokens ({val['documents']} documents)"
    )
    return index


class _SplitWriter:
    """Appends documents' token ids to ``<name>.bin.tmp``; ``finish`` renames it into place."""

    FLUSH_TOKENS = 1 << 20

    def __init__(self, data_dir: Path, name: str, dtype: Any) -> None:
        self.final = data_dir / f"{name}.bin"
        self.tmp = data_dir / f"{name}.bin.tmp"
        self.dtype = dtype
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish() or discard()
        self.pending: list[int] = []
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: list[int], eot_id: int, text: str) -> None:
        self.pending.append(eot_id)  # every document starts after an <|endoftext|>
        self.pending.extend(ids)
        self.tokens += len(ids) + 1
        self.documents += 1
        self.bytes += len(text.encode("utf-8"))
        if len(self.pending) >= self.FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        np.asarray(self.pending, dtype=self.dtype).tofile(self.fh)
        self.pending = []

    def finish(self) -> dict[str, Any]:
        import os

        self._flush()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.final)
        return {
            "file": self.final.name,
            "tokens": self.tokens,
            "documents": self.documents,
            "bytes": self.bytes,
        }

    def discard(self) -> None:
        """Close and delete the temporary file if ``finish`` did not run."""
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


def _document_batches(paths: list[Path]) -> Iterator[list[str]]:
    batch: list[str] = []
    for path in paths:
        for text in iter_documents(path):
            batch.append(text)
            if len(batch) >= ENCODE_BATCH_DOCUMENTS:
                yield batch
                batch = []
    if batch:
        yield batch


def _splits_intact(data_dir: Path, index: dict[str, Any]) -> bool:
    """Whether every split file the index names exists with the size its token count implies."""
    import numpy as np

    try:
        itemsize = np.dtype(index["dtype"]).itemsize
        return all(
            (data_dir / split["file"]).stat().st_size == split["tokens"] * itemsize
            for split in index["splits"].values()
        )
    except (KeyError, TypeError, OSError):
        return False


def _open_split(data_dir: Path, index: dict[str, Any], name: str) -> np.ndarray | None:
    import numpy as np

    split = index["splits"][name]
    if split["tokens"] == 0:  # numpy cannot map an empty file
        return None
    return np.memmap(data_dir / split["file"], dtype=index["dtype"], mode="r")


def token_byte_lengths(tok: PreTrainedTokenizerBase) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte.

    Byte-level BPE tokens map character by character to bytes; a token holding part of a
    multi-byte character counts the bytes it holds, so the lengths of a token sequence add up to
    the bytes of its text exactly. Tokens outside that alphabet (other tokenizer families) count
    the bytes of their decoded text.
    """
    import numpy as np

    from training.core.tokenizer import token_bytes

    lengths = np.zeros(len(tok), dtype=np.int64)
    special = set(tok.all_special_ids)
    for token, token_id in tok.get_vocab().items():
        if token_id in special or token_id >= len(lengths):
            continue
        try:
            lengths[token_id] = len(token_bytes(token))
        except KeyError:
            lengths[token_id] = len(tok.convert_tokens_to_string([token]).encode("utf-8"))
    return lengths


# ------------------------------------------------------------------------------- the run itself


def run(
    cfg: PretrainConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Pretrain, checkpoint, and save the final model to ``out_dir``; return its statistics.

    When ``reporter.should_stop()`` turns true during training, a checkpoint is saved and the
    partial result is returned with ``"stopped_early": True``; ``out_dir`` then gets no model.
    While the corpus is being tokenized there is nothing to save, and Cancelled is raised.
    ValueError (with a message for people) when the inputs cannot work; CorpusError, a
    ValueError too, for unreadable or empty corpora.

    With ``processes`` above 1 the corpus is tokenized here, then :func:`run_rank` runs in that
    many processes started with torchrun (:func:`training.core.distributed.launch`), whose
    reports reach ``reporter``; ProcessesFailed when one of them fails.
    """
    import torch
    from transformers.utils import logging as hf_logging

    from training.core.device import autocast_dtype, pick_device

    hf_logging.disable_progress_bar()  # tqdm bars from save/load would clutter the run log
    out_dir = Path(out_dir)
    device = pick_device(cfg.device)  # refuse a missing GPU before tokenizing anything
    processes = resolve_processes(cfg.processes, device)
    _check_batch_split(cfg.batch_size, processes)
    # The processes choose their precision on their own GPUs; asking CUDA here would give this
    # process a context (and memory) on the first GPU for nothing.
    amp_dtype = autocast_dtype(device, cfg.dtype) if processes == 1 else None
    own_work_dir = work_dir is None
    work = Path(work_dir) if work_dir is not None else out_dir / ".work"
    prepared = _prepare(cfg, inputs, work, reporter, RankGroup())
    if processes > 1:
        return _launch(cfg, inputs, out_dir, work, own_work_dir, processes, reporter)

    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA; no effect on CPU
    trainer = _Trainer(
        cfg,
        prepared.tok,
        prepared.data,
        prepared.eot_id,
        device,
        amp_dtype,
        work / "checkpoints",
        reporter,
    )
    trainer.start(prepared.resume)
    finished = trainer.train()
    result = trainer.result(stopped_early=not finished)
    if finished:
        _write_output(trainer, out_dir, result, work if own_work_dir else None)
    return result


def run_rank(
    config: dict[str, Any],
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """One process of a data-parallel run, started by torchrun (see training.core.distributed).

    Every process holds the whole model and takes ``batch_size / processes`` rows of every
    batch; DistributedDataParallel averages the gradients, so the updates are those of one
    process with the whole batch. Rank 0 alone evaluates, samples, writes checkpoints and the
    output folder, and reports (``reporter`` is silent on the others). It tokenizes the corpus
    if that is still needed while the others wait, and picks the checkpoint all resume from.
    The config's ``processes`` is not read here: torchrun decided how many there are.
    """
    import torch
    from transformers.utils import logging as hf_logging

    from training.core.device import autocast_dtype, pick_device

    cfg = PretrainConfig.model_validate(config)
    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    with process_group(pick_device(cfg.device)) as group:
        _check_batch_split(cfg.batch_size, group.world_size)
        amp_dtype = autocast_dtype(group.device, cfg.dtype)
        own_work_dir = work_dir is None
        work = Path(work_dir) if work_dir is not None else out_dir / ".work"
        prepared = _prepare(cfg, inputs, work, reporter, group)
        torch.set_float32_matmul_precision("high")
        trainer = _Trainer(
            cfg,
            prepared.tok,
            prepared.data,
            prepared.eot_id,
            group.device,
            amp_dtype,
            work / "checkpoints",
            reporter,
            group=group,
        )
        trainer.start(prepared.resume)
        finished = trainer.train()
        result = trainer.result(stopped_early=not finished)
        group.barrier()  # all are done with the data before rank 0 may delete the work folder
        if finished and group.is_main:
            _write_output(trainer, out_dir, result, work if own_work_dir else None)
    return result


@dataclass
class _Prepared:
    """What training needs from the inputs, checked, with the corpus tokenized."""

    tok: PreTrainedTokenizerBase
    eot_id: int
    resume: Checkpoint | None
    data: TokenData


def _prepare(
    cfg: PretrainConfig,
    inputs: dict[str, list[Path]],
    work: Path,
    reporter: Reporter,
    group: RankGroup,
) -> _Prepared:
    """Check the inputs, find the checkpoint to resume from and tokenize the corpus.

    Among several processes rank 0 checks the checkpoint's hashes and tokenizes (or finds the
    tokenization current) first; the others then open what it wrote.
    """
    paths = _corpus_paths(inputs)
    tok_dir = _tokenizer_dir(inputs)
    tok = _load_tokenizer(tok_dir)
    eot_id = _end_of_text_id(tok)
    _check_context(cfg, tok)

    resume = group.broadcast(latest_complete(work / "checkpoints") if group.is_main else None)
    if resume is not None:
        _check_resumable(resume, cfg, len(tok))

    fingerprint = _data_fingerprint(paths, tok_dir, cfg.val_fraction, eot_id)

    def tokenized(speaker: Reporter) -> TokenData:
        return prepare_data(
            paths,
            tok,
            work / "data",
            val_fraction=cfg.val_fraction,
            eot_id=eot_id,
            fingerprint=fingerprint,
            reporter=speaker,
        )

    data = tokenized(reporter) if group.is_main else None
    group.barrier()
    if data is None:
        data = tokenized(QuietReporter())
    _check_windows(data, cfg, reporter)
    return _Prepared(tok=tok, eot_id=eot_id, resume=resume, data=data)


def _check_batch_split(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly between {processes} processes: "
            "each takes an equal share of every batch"
        )


def _launch(
    cfg: PretrainConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    work: Path,
    own_work_dir: bool,
    processes: int,
    reporter: Reporter,
) -> dict[str, Any]:
    """Train in ``processes`` processes; the work folder goes after success, as in one."""
    if reporter.should_stop():  # cancelled while the corpus was checked: start nothing
        raise Cancelled()
    # The processes get the work folder explicitly, so they keep it; deleting it is ours.
    result = launch(
        "pretrain",
        processes=processes,
        config=cfg.model_dump(mode="json"),
        inputs=inputs,
        out_dir=out_dir,
        work_dir=work,
        reporter=reporter,
    )
    if own_work_dir and not result.get("stopped_early"):
        shutil.rmtree(work, ignore_errors=True)
    return result


def _corpus_paths(inputs: dict[str, list[Path]]) -> list[Path]:
    paths = [Path(p) for p in inputs.get("corpus") or []]
    if not paths:
        raise CorpusError('pretraining needs at least one corpus file as input "corpus"')
    for path in paths:
        corpus_format(path)
        if not path.exists():  # a file, or a corpus version's folder
            raise CorpusError(f"corpus file not found: {path}")
    return paths


def _tokenizer_dir(inputs: dict[str, list[Path]]) -> Path:
    dirs = [Path(p) for p in inputs.get("tokenizer") or []]
    if len(dirs) != 1:
        raise ValueError(
            f'pretraining needs exactly one tokenizer folder as input "tokenizer", got {len(dirs)}'
        )
    if not (dirs[0] / "tokenizer.json").is_file():
        raise ValueError(f"{dirs[0]} is not a tokenizer folder (no tokenizer.json)")
    return dirs[0]


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if getattr(tok, "backend_tokenizer", None) is None:
        raise ValueError(f"the tokenizer in {path} is not a fast (tokenizer.json) tokenizer")
    return tok


def _end_of_text_id(tok: PreTrainedTokenizerBase) -> int:
    token_id = tok.get_vocab().get(END_OF_TEXT)
    if token_id is None:
        raise ValueError(
            f"the tokenizer has no {END_OF_TEXT} token, which pretraining puts between "
            "documents: use a tokenizer trained by Orchard's tokenizer stage"
        )
    return token_id


def _check_context(cfg: PretrainConfig, tok: PreTrainedTokenizerBase) -> None:
    limit = PRESETS[cfg.preset].max_position_embeddings
    if cfg.context_length > limit:
        raise ValueError(
            f"context_length {cfg.context_length} is longer than the {cfg.preset} preset allows "
            f"({limit} tokens)"
        )
    if cfg.context_length > tok.model_max_length:
        raise ValueError(
            f"context_length {cfg.context_length} is longer than the tokenizer's "
            f"model_max_length ({tok.model_max_length} tokens): lower it or retrain the "
            "tokenizer with a larger model_max_length"
        )


def _check_resumable(ckpt: Checkpoint, cfg: PretrainConfig, vocab_size: int) -> None:
    """Refuse a checkpoint whose model cannot continue with this tokenizer and config."""
    config = _read_json(ckpt.path / "config.json") or {}
    if config.get("vocab_size") != vocab_size:
        raise ValueError(
            f"the checkpoint at step {ckpt.step} in {ckpt.path.parent} has a vocabulary of "
            f"{config.get('vocab_size')} tokens, but the tokenizer has {vocab_size}: resume with "
            "the tokenizer it was trained with, or start in a fresh work folder"
        )
    for key in ("preset", "context_length"):
        if ckpt.meta.get(key) != getattr(cfg, key):
            raise ValueError(
                f"the checkpoint at step {ckpt.step} was trained with {key} "
                f"{ckpt.meta.get(key)!r}, not {getattr(cfg, key)!r}: resume with the same model "
                "shape, or start in a fresh work folder"
            )


def _check_windows(data: TokenData, cfg: PretrainConfig, reporter: Reporter) -> None:
    """Refuse a training split shorter than one window; drop a held-out split that is."""
    window = cfg.context_length + 1
    tokens = 0 if data.train is None else len(data.train)
    if tokens < window:
        raise ValueError(
            f"the corpus has {tokens} training tokens, fewer than one window of "
            f"context_length + 1 = {window}: add text or lower context_length"
        )
    if data.val is not None and len(data.val) < window:
        reporter.log(
            f"the held-out split has {len(data.val)} tokens, fewer than one window: validation "
            "is skipped (raise val_fraction or add documents)"
        )
        data.val = None


def _data_fingerprint(
    paths: list[Path], tok_dir: Path, val_fraction: float, eot_id: int
) -> dict[str, Any]:
    """What the tokenized data depends on; a stored index with another fingerprint is stale."""
    from training.core.checkpoints import sha256_file

    files = []
    for path in paths:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return {
        "version": DATA_FORMAT_VERSION,
        "files": files,
        "tokenizer": sha256_file(tok_dir / "tokenizer.json"),
        "val_fraction": val_fraction,
        "eot_id": eot_id,
    }


class _Trainer:
    """The model, optimizer, sampler and counters of one run, and the loop over them."""

    def __init__(
        self,
        cfg: PretrainConfig,
        tok: PreTrainedTokenizerBase,
        data: TokenData,
        eot_id: int,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        ckpt_root: Path,
        reporter: Reporter,
        *,
        group: RankGroup | None = None,
    ) -> None:
        import torch

        self.cfg = cfg
        self.group = group or RankGroup(device=device)
        self.tok = tok
        self.data = data
        self.eot_id = eot_id
        self.ckpt_root = ckpt_root
        self.reporter = reporter
        self.device = device
        self.amp_dtype = amp_dtype
        self.model_config = self._model_config()
        self.byte_lengths = torch.from_numpy(token_byte_lengths(tok)).to(self.device)
        self.step = 0
        self.tokens_seen = 0
        self.resumed_from: int | None = None
        self.last_loss: float | None = None
        self.last_eval: dict[str, float] = {}
        self.saved_step: int | None = None
        self.started = time.monotonic()
        self.rows = self.group.rows(cfg.batch_size)  # this process's share of every batch
        self.data_parallel: Any = None

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum_steps * self.cfg.context_length

    def _model_config(self) -> LlamaConfig:
        from training.core.model import build_config

        return build_config(
            self.cfg.preset,
            len(self.tok),
            self.cfg.context_length,
            bos_token_id=self.eot_id,  # documents start after <|endoftext|>
            eos_token_id=self.tok.eos_token_id,
            pad_token_id=self.tok.pad_token_id,
        )

    # ------------------------------------------------------------------------ setup and resume

    def start(self, resume: Checkpoint | None) -> None:
        import torch

        from training.core.device import describe_device, dtype_name
        from training.core.model import count_parameters, format_count

        self.model = self._load_model(resume) if resume else self._new_model()
        self.model.set_attn_implementation(
            choose_attention(self.device, self.cfg.compile, self.cfg.context_length)
        )
        self.model.train()
        self.optimizer = make_optimizer(
            self.model, self.cfg.learning_rate, self.cfg.weight_decay, self.device
        )
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.sampler = WindowSampler(self.data.train, self.cfg.context_length + 1, self.generator)
        if resume:
            self._load_trainer_state(resume)
        if self.group.distributed:  # after loading: DDP starts from rank 0's weights
            self.data_parallel = data_parallel_loss(self.model, self.amp_dtype, self.device)
        self.train_step = make_train_step(
            self.model,
            self.optimizer,
            amp_dtype=self.amp_dtype,
            grad_clip=self.cfg.grad_clip,
            compile=self.cfg.compile,
            data_parallel=self.data_parallel,
        )
        params = count_parameters(self.model_config)["parameters"]
        where = describe_device(self.device)
        processes = self.group.world_size
        self.reporter.log(
            f"{self.cfg.preset} model, {format_count(params)} parameters, vocabulary "
            f"{len(self.tok)}, context {self.cfg.context_length}; training on "
            f"{where['type']} ({where.get('name', '')}) in {dtype_name(self.amp_dtype)}"
            + (", compiled" if self.cfg.compile else "")
            + (
                f"; {processes} processes, {self.cfg.batch_size // processes} windows each "
                "per micro-batch"
                if processes > 1
                else ""
            )
        )
        if resume:
            self.reporter.log(f"resumed from the checkpoint at step {resume.step}")

    def _new_model(self) -> LlamaForCausalLM:
        import torch
        from transformers import LlamaForCausalLM

        # Seed the initial weights without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = LlamaForCausalLM(self.model_config)
        self._set_generation_defaults(model)
        return model.to(self.device)

    def _load_model(self, ckpt: Checkpoint) -> LlamaForCausalLM:
        import torch
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(
            ckpt.path, dtype=torch.float32, local_files_only=True
        )
        return model.to(self.device)

    def _set_generation_defaults(self, model: LlamaForCausalLM) -> None:
        """A base model's text ends at <|endoftext|>; a chat model's turn at the tokenizer's eos.

        Stopping at either makes ``generate`` on the saved folder behave for both.
        """
        gen = model.generation_config
        gen.bos_token_id = self.eot_id
        gen.eos_token_id = sorted({self.eot_id, self.tok.eos_token_id} - {None})
        gen.pad_token_id = self.tok.pad_token_id

    def _load_trainer_state(self, ckpt: Checkpoint) -> None:
        import torch

        state = torch.load(ckpt.path / TRAINER_STATE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            if self.group.distributed:  # each process has one GPU: the first state is its own
                torch.cuda.set_rng_state(state["cuda_rng"][0], self.device)
            else:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = self.resumed_from = self.saved_step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.last_loss = state["last_loss"]

    # --------------------------------------------------------------------------------- the loop

    def train(self) -> bool:
        """Run steps until ``max_steps`` (True) or until asked to stop (False)."""
        cfg = self.cfg
        main = self.group.is_main  # evaluation, samples and checkpoints are rank 0's
        window = _Interval(self.device, self.group)
        while self.step < cfg.max_steps:
            lr = learning_rate_at(self.step, cfg)
            batches = [
                self.sampler.batch(cfg.batch_size, self.rows).to(self.device)
                for _ in range(cfg.grad_accum_steps)
            ]
            loss, norm = self.train_step(batches, lr)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            window.add(loss, norm, self.tokens_per_step)
            self.reporter.progress(self.step, cfg.max_steps)
            last = self.step == cfg.max_steps
            if self.step % cfg.log_every == 0 or last:
                self.last_loss = window.report(self.reporter, self.step, lr)
            with window.paused():  # evaluation, samples and saving are not training throughput
                if main and _due(self.step, cfg.eval_every, last) and self.data.val is not None:
                    self.evaluate()
                if main and _due(self.step, cfg.sample_every, last) and cfg.prompts():
                    self.sample()
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save()
                # Every process must leave the loop at the same step, or the others would wait
                # for its gradients for ever: rank 0's answer is shared.
                if not last and self.group.any(self.reporter.should_stop()):
                    self._stop(window)
                    return False
        if main and self.step == cfg.max_steps and self.data.val is not None and not self.last_eval:
            self.evaluate()  # resumed from the final checkpoint: measure once more for the result
        return True

    def _stop(self, window: _Interval) -> None:
        """Checkpoint the current step (unless just done) so that a later run resumes here."""
        if self.saved_step != self.step:
            unreported = window.flush_loss()
            if unreported is not None:
                self.last_loss = unreported
            self.save()
        self.reporter.log(f"stopped at step {self.step}; a checkpoint was saved")

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        import torch

        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train()

    def evaluate(self) -> dict[str, float]:
        """Validation loss (nats per token) and bits per byte on fixed held-out windows."""
        import torch

        cfg = self.cfg
        # The same windows every time (a fresh generator), so evaluations compare across steps.
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        sampler = WindowSampler(self.data.val, cfg.context_length + 1, generator)
        nats = torch.zeros((), dtype=torch.float64, device=self.device)
        text_nats = torch.zeros_like(nats)
        text_bytes = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        with self._eval_mode():
            for _ in range(cfg.eval_batches):
                window = sampler.batch(cfg.batch_size).to(self.device)
                losses = causal_lm_loss(self.model, window, self.amp_dtype, reduction="none")
                nbytes = self.byte_lengths[window[:, 1:]]  # (B, T) bytes of each target token
                nats += losses.sum()
                text_nats += (losses * (nbytes > 0)).sum()  # a mask, not indexing: no sync
                text_bytes += nbytes.sum()
                count += losses.numel()
        val_loss = nats.item() / count
        val_bpb = text_nats.item() / (math.log(2) * max(1, text_bytes.item()))
        self.last_eval = {"val_loss": val_loss, "val_bpb": val_bpb}
        self.reporter.metrics(self.last_eval, self.step)
        return self.last_eval

    def sample(self) -> list[dict[str, str]]:
        """Continue each prompt with a fixed seed and record the texts."""
        samples = []
        with self._eval_mode(), _forked_rng(self.device, self.cfg.seed):
            for prompt in self.cfg.prompts():
                samples.append({"prompt": prompt, "text": self._continue(prompt)})
        self.reporter.record("samples", {"samples": samples}, self.step)
        return samples

    def _continue(self, prompt: str) -> str:
        import torch

        cfg = self.cfg
        ids = [self.eot_id, *self.tok.encode(prompt, add_special_tokens=False)]
        ids = ids[-(cfg.context_length - 1) :]  # leave room for at least one new token
        input_ids = torch.tensor([ids], device=self.device)
        greedy = cfg.sample_temperature == 0
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=min(cfg.sample_max_new_tokens, cfg.context_length - len(ids)),
            do_sample=not greedy,
            temperature=None if greedy else cfg.sample_temperature,
            top_k=None if greedy else 0,  # sample from the whole distribution
            top_p=None,
        )
        return self.tok.decode(out[0, len(ids) :], skip_special_tokens=True)

    def save(self) -> Checkpoint | None:
        """A checkpoint of this step (None on the processes other than rank 0, which saves)."""
        import torch

        cfg = self.cfg
        if not self.group.is_main:
            self.saved_step = self.step
            return None

        def write(folder: Path) -> None:
            self.model.save_pretrained(folder)
            self.tok.save_pretrained(folder)
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "last_loss": self.last_loss,
                "optimizer": self.optimizer.state_dict(),
                "data_rng": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": self._cuda_rng_states(),
            }
            torch.save(state, folder / TRAINER_STATE)

        meta = {
            "preset": cfg.preset,
            "context_length": cfg.context_length,
            "vocab_size": len(self.tok),
            "tokens_seen": self.tokens_seen,
            "loss": self.last_loss,
        }
        ckpt = save_checkpoint(self.ckpt_root, self.step, write, meta)
        self.saved_step = self.step
        prune(self.ckpt_root, keep=cfg.keep_checkpoints, protect={ckpt.path})
        return ckpt

    def _cuda_rng_states(self) -> list[torch.Tensor]:
        """Every GPU's generator state; among several processes only this process's GPU's
        (asking the others would open a CUDA context on each of them)."""
        import torch

        if self.device.type != "cuda":
            return []
        if self.group.distributed:
            return [torch.cuda.get_rng_state(self.device)]
        return torch.cuda.get_rng_state_all()

    # ------------------------------------------------------------------------------- results

    def result(self, *, stopped_early: bool) -> dict[str, Any]:
        from training.core.device import dtype_name
        from training.core.model import count_parameters, tokens_per_parameter

        params = count_parameters(self.model_config)["parameters"]
        splits = self.data.index["splits"]
        processes = {"processes": self.group.world_size} if self.group.distributed else {}
        return {
            "steps": self.step,
            "max_steps": self.cfg.max_steps,
            "stopped_early": stopped_early,
            "resumed_from_step": self.resumed_from,
            "final_loss": self.last_loss,
            "val_loss": self.last_eval.get("val_loss"),
            "val_bpb": self.last_eval.get("val_bpb"),
            "parameters": params,
            "tokens_seen": self.tokens_seen,
            "tokens_per_parameter": tokens_per_parameter(self.tokens_seen, params),
            "train_tokens": splits["train"]["tokens"],
            "val_tokens": splits["val"]["tokens"],
            "device": self.device.type,
            "dtype": dtype_name(self.amp_dtype),
            "seconds": round(time.monotonic() - self.started, 3),
            **processes,
        }


class _Interval:
    """Loss, gradient norm and throughput since the last report, kept on the device.

    Summing device tensors avoids a host-device sync per step; the sync happens once per report.
    """

    def __init__(self, device: torch.device, group: RankGroup) -> None:
        self.device = device
        self.group = group  # the loss is averaged over the processes: each saw part of a batch
        self._reset()

    def _reset(self) -> None:
        self.loss_sum: Any = 0.0
        self.norm_sum: Any = 0.0
        self.steps = 0
        self.tokens = 0
        self.paused_seconds = 0.0
        self.began = time.perf_counter()

    def add(self, loss: torch.Tensor, norm: torch.Tensor, tokens: int) -> None:
        self.loss_sum = self.loss_sum + loss
        self.norm_sum = self.norm_sum + norm
        self.steps += 1
        self.tokens += tokens

    def flush_loss(self) -> float | None:
        """The mean loss of the steps not reported yet (None if there are none)."""
        return float(self.group.mean(self.loss_sum)) / self.steps if self.steps else None

    def report(self, reporter: Reporter, step: int, lr: float) -> float:
        loss = float(self.group.mean(self.loss_sum)) / self.steps  # the sync point
        seconds = max(1e-9, time.perf_counter() - self.began - self.paused_seconds)
        reporter.metrics(
            {
                "loss": loss,
                "lr": lr,
                "grad_norm": float(self.norm_sum) / self.steps,
                "tokens_per_sec": self.tokens / seconds,
            },
            step,
        )
        self._reset()
        return loss

    @contextmanager
    def paused(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - began


def _due(step: int, every: int, last: bool) -> bool:
    return last or (every > 0 and step % every == 0)


@contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG (which ``generate`` samples from) and restore it afterwards.

    Sampling therefore gives the same text for the same weights, and does not change the
    random state of training.
    """
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _write_output(
    trainer: _Trainer, out_dir: Path, result: dict[str, Any], own_work_dir: Path | None
) -> None:
    """The final model folder; ``orchard.json`` last, since its presence means complete."""
    from training.core.model import estimate

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "orchard.json").unlink(missing_ok=True)
    trainer.model.save_pretrained(out_dir)
    trainer.tok.save_pretrained(out_dir)
    if own_work_dir is not None:
        shutil.rmtree(own_work_dir, ignore_errors=True)
    manifest = {
        "kind": "checkpoint",
        "stage": "pretrain",
        "config": trainer.cfg.model_dump(),
        "metrics": result,
        "estimate": estimate(
            trainer.model_config,
            batch_size=trainer.cfg.batch_size,
            context_length=trainer.cfg.context_length,
        ),
    }
    _write_json_atomic(out_dir / "orchard.json", manifest)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    os.replace(tmp, path)
