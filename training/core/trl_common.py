"""The plumbing the stages that train through a TRL trainer share (``sft``, ``reward``, ``grpo``).

Each of those stages loads one base model folder and its tokenizer (safetensors only, local files
only, no remote code), refuses a LoRA adapter as the base, reads the context window from
``config.json``, picks the device and autocast dtype, builds a TRL config with every default that
does not suit a CPU overridden, forwards the Trainer's progress and logs to a
:class:`~training.core.reporting.Reporter` through a :class:`ReporterBridge` (which also turns
``reporter.should_stop()`` into a clean stop with a checkpoint and marks finished saves complete,
see :mod:`training.core.hf_checkpoints`), resumes from the newest complete checkpoint, and writes
its output folder with ``orchard.json`` last. What differs between the stages is passed in (the
messages naming what the stage needs) or set on the stage's ``Session``, a
:class:`TrainerSession` (the metric names, what happens at a step, the checkpoint's metadata,
the bridge class). A stage's ``run`` follows :class:`StageRun`: ``begin``, ``prepare``,
``find_resume``, ``session.train``, then its own measurements and result between
``result_head`` and ``result_tail``, and the output folder (:func:`write_model_folder`).

torch, transformers and trl are imported inside the functions: the stages' configs import this
module while the web process builds its forms.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from training.core.checkpoints import read_complete
from training.core.hf_checkpoints import (
    CHECKPOINT_PREFIX,
    latest_checkpoint,
    mark_complete,
    prune_checkpoints,
)
from training.core.reporting import Reporter

if TYPE_CHECKING:
    import torch
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )

WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
MERGE_FIRST = "training.core.sft.merge_adapter"


class TrainerStageConfig(Protocol):
    """The fields of a stage config that :func:`common_training_arguments` reads."""

    batch_size: int
    gradient_accumulation_steps: int
    lr_schedule: str
    warmup_steps: int
    max_steps: int | None
    log_every: int
    save_every: int
    keep_checkpoints: int
    seed: int
    device: str
    dtype: str


def raise_field_error(
    model: BaseModel, field_name: str, value: Any, kind: str, message: str, context: dict[str, Any]
) -> None:
    """A ValidationError located at ``field_name``, so a web form shows it next to that field."""
    problem = PydanticCustomError(kind, message, context)
    raise ValidationError.from_exception_data(
        type(model).__name__, [InitErrorDetails(type=problem, loc=(field_name,), input=value)]
    )


# ----------------------------------------------------------------------------------- inputs


def check_model_folder(path: Path, adapter_advice: str = "") -> None:
    """ValueError unless ``path`` is a full model folder with safetensors weights.

    ``adapter_advice`` ends the message for a LoRA adapter folder, after the hint to merge it.
    """
    if (path / "adapter_config.json").is_file():
        raise ValueError(
            f"{path} is a LoRA adapter, not a full model: merge the adapter first "
            f"({MERGE_FIRST}){adapter_advice}"
        )
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a model folder (no config.json)")
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise ValueError(
            f"{path} has no model.safetensors: only safetensors weights are loaded (pickled "
            "pytorch_model.bin files are refused)"
        )


def base_dir(inputs: dict[str, list[Path]], purpose: str, adapter_advice: str = "") -> Path:
    """The one model folder of input ``base``, checked; ``purpose`` starts the messages
    ("fine-tuning needs exactly one model folder ...")."""
    dirs = [Path(p) for p in inputs.get("base") or []]
    if len(dirs) != 1:
        raise ValueError(
            f'{purpose} needs exactly one model folder as input "base", got {len(dirs)}'
        )
    check_model_folder(dirs[0], adapter_advice)
    return dirs[0]


def snapshot_dirs(
    inputs: dict[str, list[Path]], key: str, *, purpose: str, kind: str, missing: str
) -> list[Path]:
    """The folders of input ``key`` (at least one, each existing): ``kind`` names one of them
    ("dataset snapshot"), ``missing`` says what is lacking without them."""
    paths = [Path(p) for p in inputs.get(key) or []]
    if not paths:
        raise ValueError(f'{purpose} needs at least one {kind} as input "{key}": {missing}')
    for path in paths:
        if not path.is_dir():
            raise ValueError(f"{kind} not found: {path}")
    return paths


def context_window(base: Path) -> int:
    """The model's context window in tokens, from its ``config.json``."""
    config = json.loads((base / "config.json").read_text())
    window = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(window, int) or window <= 0:
        raise ValueError(f"{base}/config.json does not say the model's context window")
    return window


def fitted_max_length(max_length: int, window: int, reporter: Reporter) -> int:
    """``max_length`` lowered to the context window (and said so in the log) when longer."""
    fitted = min(max_length, window)
    if fitted < max_length:
        reporter.log(
            f"max_length lowered from {max_length} to the model's context window ({window} tokens)"
        )
    return fitted


def spread(items: list[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``: a fixed, evenly spread selection (all when fewer)."""
    if len(items) <= count:
        return items
    stride = len(items) / count
    return [items[int(i * stride)] for i in range(count)]


# ------------------------------------------------------------------------ model and tokenizer


def load_chat_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer (local files only, no remote code); it must have a chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if not tok.chat_template:
        raise ValueError(f"the tokenizer in {path} has no chat template (chat_template.jinja)")
    return tok


def require_eos(tok: PreTrainedTokenizerBase, path: Path) -> None:
    if tok.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no eos token to end the assistant's turn")


def load_pretrained(auto_class: Any, path: Path, **kwargs: Any) -> PreTrainedModel:
    """``auto_class.from_pretrained`` in fp32 from safetensors, local files only, no remote code.

    fp32 weights: with dtype bf16 the Trainer autocasts the matmuls, the master weights stay.
    """
    import torch

    return auto_class.from_pretrained(
        path,
        **kwargs,
        dtype=torch.float32,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=False,
    )


def load_causal_lm(path: Path) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, path)


def check_vocab(tok: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """ValueError when the tokenizer has more tokens than the model's embedding."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise ValueError(
            f"the tokenizer has {len(tok)} tokens but the model's embedding only {rows}: use the "
            "tokenizer the model was trained with"
        )


def set_generation_defaults(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Make ``generate`` stop at the end of a turn: eos ids include the tokenizer's eos.

    The ids the base already stops at (a pretrained model's ``<|endoftext|>``) are kept.
    """
    gen = model.generation_config
    current = gen.eos_token_id
    current = [] if current is None else [current] if isinstance(current, int) else list(current)
    gen.eos_token_id = sorted({*current, tok.eos_token_id})
    gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; tied weights count once."""
    params = list(model.parameters())  # a shared tensor is listed once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- trainer settings


def start_training(cfg: TrainerStageConfig) -> tuple[torch.device, torch.dtype | None]:
    """Quiet the progress bars (tqdm would clutter the run log) and pick the device and the
    autocast dtype; a missing GPU is refused here, before anything is read."""
    import datasets
    from transformers.utils import logging as hf_logging

    from training.core.device import autocast_dtype, pick_device

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    device = pick_device(cfg.device)
    return device, autocast_dtype(device, cfg.dtype)


def common_training_arguments(
    cfg: TrainerStageConfig,
    checkpoints_dir: Path,
    *,
    learning_rate: float,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, Any]:
    """The arguments every stage passes to its TRL config, with the defaults that do not suit us
    overridden: TRL turns on bf16 (fails or crawls on most CPUs) and activation checkpointing
    (saves memory small models do not need), and reports to every installed tracker. Checkpoints
    are pruned by the bridge, which knows which folders are complete."""
    import torch

    return {
        "output_dir": str(checkpoints_dir),
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "lr_scheduler_type": cfg.lr_schedule,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": 0.0,
        "max_steps": cfg.max_steps or -1,
        "logging_steps": cfg.log_every,
        "logging_first_step": True,  # train_loss_first is the loss before any update
        "save_strategy": "steps",
        "save_steps": cfg.save_every,
        "save_total_limit": None,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": amp_dtype == torch.bfloat16,
        "fp16": False,
        "activation_checkpointing": False,
        "use_cpu": device.type == "cpu",
        "dataloader_pin_memory": False,
        "report_to": "none",
        "disable_tqdm": True,
        "push_to_hub": False,
    }


# -------------------------------------------------------------------------------- the bridge


def metric_values(logs: Mapping[str, Any] | None, names: Mapping[str, str]) -> dict[str, float]:
    """The numbers in a Trainer log under the reporter's names (``names``: log key -> name)."""
    return {
        name: float(logs[key])
        for key, name in names.items()
        if logs and isinstance(logs.get(key), int | float)
    }


class ReporterBridge:
    """Forwards a Trainer's progress and logs to a Reporter; stops on request; marks checkpoints.

    Make it a ``TrainerCallback`` with :func:`make_bridge` (transformers loads only then).
    ``on_step_end`` runs before the Trainer decides whether to log, evaluate and save at that
    step: ``on_step(step, last)`` runs there (samples, validation), and setting
    ``control.should_save`` makes the Trainer save at this step; ``on_save`` runs once the save
    is written, and marks the folder complete with ``checkpoint_meta()``.
    """

    def __init__(
        self,
        *,
        reporter: Reporter,
        checkpoints_dir: Path,
        keep_checkpoints: int,
        metric_names: Mapping[str, str],
        checkpoint_meta: Callable[[], dict[str, Any]],
        on_step: Callable[[int, bool], object] | None = None,
    ) -> None:
        self.reporter = reporter
        self.checkpoints_dir = checkpoints_dir
        self.keep_checkpoints = keep_checkpoints
        self.metric_names = metric_names
        self.checkpoint_meta = checkpoint_meta
        self.on_step = on_step
        self.stopped = False

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        step, total = state.global_step, state.max_steps
        self.reporter.progress(step, total)
        last = step >= total
        if self.on_step is not None:
            self.on_step(step, last)
        if last:
            control.should_save = True  # the end is a resume point too
        elif self.reporter.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        folder = self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if folder.is_dir():
            mark_complete(folder, state.global_step, self.checkpoint_meta())
            prune_checkpoints(self.checkpoints_dir, self.keep_checkpoints)
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> TrainerControl:
        values = metric_values(logs, self.metric_names)
        if values:
            self.reporter.metrics(values, state.global_step)
        return control


B = TypeVar("B", bound=ReporterBridge)


@functools.cache
def _callback_class(bridge_class: type[B]) -> type[B]:
    from transformers import TrainerCallback

    return type(bridge_class.__name__, (bridge_class, TrainerCallback), {})


def make_bridge(bridge_class: type[B], **kwargs: Any) -> B:
    """An instance of ``bridge_class`` (:class:`ReporterBridge` or a subclass) that is also a
    ``transformers.TrainerCallback``; ``kwargs`` go to its constructor."""
    return _callback_class(bridge_class)(**kwargs)


def every(step: int, last: bool, interval: int) -> bool:
    """Whether something done every ``interval`` steps (0: never during training) is due at
    ``step``; the last step is left to the end of the run."""
    return bool(interval) and step % interval == 0 and not last


# ---------------------------------------------------------------------------------- the session


@dataclass(kw_only=True)
class TrainerSession:
    """What every stage's prepared run holds: its config, the base model's folder and tokenizer,
    where its checkpoints go, the reporter, the device and precision, and (once built) the TRL
    trainer and its bridge. Each stage's ``Session`` adds its data and measurements, and sets
    what its bridge does: ``metric_names`` (TRL's log keys -> the reporter's names),
    ``bridge_class``, :meth:`on_step` and :meth:`checkpoint_meta`."""

    metric_names: ClassVar[Mapping[str, str]] = {}
    bridge_class: ClassVar[type[ReporterBridge]] = ReporterBridge

    cfg: TrainerStageConfig
    base_dir: Path
    tok: PreTrainedTokenizerBase
    checkpoints_dir: Path
    reporter: Reporter
    device: torch.device
    amp_dtype: torch.dtype | None
    trainer: Any = None
    bridge: ReporterBridge | None = None

    @property
    def model(self) -> PreTrainedModel:
        return self.trainer.model

    def on_step(self, step: int, last: bool) -> None:
        """The bridge calls this at the end of every step (``last``: the final one), before it
        turns a stop request into a stop: samples, validation. Nothing by default."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """What each checkpoint's ``COMPLETE`` marker records; by default the training method,
        which :func:`same_method` checks on resume."""
        return {"method": getattr(self.cfg, "method", None)}

    def attach_bridge(self) -> None:
        """Build the bridge (see :class:`ReporterBridge`) and put it on the trainer in place of
        TRL's PrinterCallback (which prints every log to stdout)."""
        from transformers import PrinterCallback

        self.bridge = make_bridge(
            self.bridge_class,
            reporter=self.reporter,
            checkpoints_dir=self.checkpoints_dir,
            keep_checkpoints=self.cfg.keep_checkpoints,
            metric_names=self.metric_names,
            checkpoint_meta=self.checkpoint_meta,
            on_step=self.on_step,
        )
        self.trainer.remove_callback(PrinterCallback)
        self.trainer.add_callback(self.bridge)

    def where(self) -> str:
        """``on cpu in fp32``: for the line a run logs before training."""
        from training.core.device import dtype_name

        return f"on {self.device.type} in {dtype_name(self.amp_dtype)}"

    def train(self, resume: tuple[int, Path] | None) -> tuple[TrainerState, bool]:
        """Train (from the ``resume`` checkpoint when there is one); ``(state, stopped)``, where
        ``stopped`` means it stopped on request before its end (and said so in the log)."""
        self.trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
        state = self.trainer.state
        if self.bridge is not None and self.bridge.stopped:
            self.reporter.log(f"stopped at step {state.global_step}; a checkpoint was saved")
            return state, True
        return state, False


# ------------------------------------------------------------------------------- the run


@dataclass
class StageRun:
    """One run of a stage: where it works, when it started, the checkpoint it resumes from.

    Checkpoints go to ``work_dir/checkpoints``; without a ``work_dir`` the run works in
    ``out_dir/.work`` and deletes it after a successful run (:meth:`clean_up`).
    """

    out_dir: Path
    work: Path
    owned: bool
    started: float = field(default_factory=time.monotonic)
    resume: tuple[int, Path] | None = None

    @classmethod
    def begin(cls, out_dir: Path, work_dir: Path | None) -> StageRun:
        out_dir = Path(out_dir)
        work = Path(work_dir) if work_dir is not None else out_dir / ".work"
        return cls(out_dir=out_dir, work=work, owned=work_dir is None)

    @property
    def checkpoints(self) -> Path:
        return self.work / "checkpoints"

    def find_resume(self, reporter: Reporter, check: Callable[[Path, int], object]) -> None:
        """Resume from the newest complete checkpoint, after ``check(folder, step)`` (which
        raises ValueError for one this run cannot continue); none: start afresh."""
        self.resume = latest_checkpoint(self.checkpoints, reporter)
        if self.resume is not None:
            check(self.resume[1], self.resume[0])
            reporter.log(f"resuming from the checkpoint at step {self.resume[0]}")

    def result_head(self, state: TrainerState, stopped: bool) -> dict[str, Any]:
        """The first entries of every stage's result."""
        return {
            "steps": state.global_step,
            "max_steps": state.max_steps,
            "stopped_early": stopped,
            "resumed_from_step": self.resume[0] if self.resume else None,
        }

    def result_tail(self, session: TrainerSession) -> dict[str, Any]:
        """The last entries of every stage's result: where, in what precision and how long."""
        from training.core.device import dtype_name

        return {
            "device": session.device.type,
            "dtype": dtype_name(session.amp_dtype),
            "seconds": round(time.monotonic() - self.started, 3),
        }

    def clean_up(self) -> None:
        """Delete the work folder when the run made it itself."""
        if self.owned:
            shutil.rmtree(self.work, ignore_errors=True)


def same_method(method: str) -> Callable[[Path, int], None]:
    """A check for :meth:`StageRun.find_resume`: ValueError when the checkpoint was trained with
    another ``method`` (full or lora) than this run's, as its ``checkpoint_meta`` recorded."""

    def check(folder: Path, step: int) -> None:
        ckpt = read_complete(folder, verify=False)
        recorded = ckpt.meta.get("method") if ckpt else None
        if recorded != method:
            raise ValueError(
                f"the checkpoint at step {step} in {folder.parent} was trained with method "
                f"{recorded!r}, not {method!r}: resume with the same method, or start in a "
                "fresh work folder"
            )

    return check


# ---------------------------------------------------------------------------------- output


def write_model_folder(
    out_dir: Path, model: Any, tok: PreTrainedTokenizerBase, manifest: dict[str, Any]
) -> None:
    """The output folder: the model (or adapter), the tokenizer, and ``orchard.json`` last, since
    it means complete (an old one is removed first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "orchard.json").unlink(missing_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    write_json_atomic(out_dir / "orchard.json", manifest)


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for every non-blank line of a JSONL file, ``where`` being
    ``"path, line N"`` for messages; ValueError (naming the line) for a line that is not JSON."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            yield where, record


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    os.replace(tmp, path)
