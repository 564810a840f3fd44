"""The run kinds Orchard knows: what each validates, reads, calls and produces.

A kind is declarative: a pydantic config model and an entry point in ``training.core`` (both
imported lazily, so the web process never pays for torch), the input artifacts it needs, and the
kind of artifact its output folder becomes. Adding a stage is one entry in ``BUILTIN_KINDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string
from pydantic import BaseModel, ValidationError

from training.models import ArtifactKind


class ConfigInvalid(ValueError):
    """A launch request that must not be queued; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))


@dataclass(frozen=True)
class InputSpec:
    name: str
    artifact_kind: str
    label: str
    many: bool = False
    required: bool = True


@dataclass(frozen=True)
class RunKind:
    name: str
    label: str
    description: str
    config_path: str  # "module:Class" of a pydantic model
    entry_path: str  # "module:function" called as entry(cfg, inputs, out_dir, reporter, work_dir)
    inputs: tuple[InputSpec, ...] = ()
    output_kind: str | None = None
    result_template: str | None = None  # shown on the run page once it succeeded
    # "module:function"(config dict, inputs dict) -> rows of (label, value) for the launch page
    estimate_path: str | None = None

    def config_model(self) -> type[BaseModel]:
        return _load(self.config_path)

    def entry(self) -> Callable[..., dict]:
        return _load(self.entry_path)

    def estimate(self) -> Callable[..., list[tuple[str, str]]] | None:
        return _load(self.estimate_path) if self.estimate_path else None

    def validate_config(self, data: Any) -> BaseModel:
        if not isinstance(data, dict):
            raise ConfigInvalid({"config": ["must be a JSON object"]})
        try:
            return self.config_model().model_validate(data)
        except ValidationError as exc:
            raise ConfigInvalid(pydantic_errors(exc)) from None


def pydantic_errors(exc: ValidationError) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for err in exc.errors():
        name = ".".join(str(part) for part in err["loc"]) or "config"
        errors.setdefault(name, []).append(err["msg"])
    return errors


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


BUILTIN_KINDS = (
    RunKind(
        name="corpus",
        label="Corpus (web data pipeline)",
        description=(
            "Filter raw web pages into a clean pretraining corpus as FineWeb does: URL filter, "
            "text extraction, language ID, repetition and quality filters, exact and MinHash "
            "dedup, PII removal. Every dropped page keeps the stage and the reason."
        ),
        config_path="training.core.pipeline.run:CorpusConfig",
        entry_path="training.core.pipeline.run:run",
        inputs=(
            InputSpec("sources", ArtifactKind.WEBDATA, "Web data", many=True),
            InputSpec(
                "url_blocklists",
                ArtifactKind.BLOCKLIST,
                "Extra domain blocklists",
                many=True,
                required=False,
            ),
        ),
        output_kind=ArtifactKind.CORPUS,
        result_template="training/results/corpus.html",
    ),
    RunKind(
        name="tokenizer",
        label="Tokenizer",
        description=(
            "Train a byte-level BPE tokenizer on a text corpus, with the special tokens for "
            "documents, padding, ChatML turns and tool calls, and a chat template that marks "
            "the assistant tokens a fine-tune learns from."
        ),
        config_path="training.core.tokenizer:TokenizerConfig",
        entry_path="training.core.tokenizer:run",
        inputs=(InputSpec("corpus", ArtifactKind.CORPUS, "Corpus files", many=True),),
        output_kind=ArtifactKind.TOKENIZER,
        result_template="training/results/tokenizer.html",
    ),
    RunKind(
        name="pretrain",
        label="Pretraining",
        description=(
            "Train a Transformer (Llama architecture, saved in Hugging Face format) from scratch "
            "to predict the next token of a corpus; watch the loss fall and the samples from "
            "fixed prompts improve."
        ),
        config_path="training.core.pretrain:PretrainConfig",
        entry_path="training.core.pretrain:run",
        inputs=(
            InputSpec("corpus", ArtifactKind.CORPUS, "Corpus", many=True),
            InputSpec("tokenizer", ArtifactKind.TOKENIZER, "Tokenizer"),
        ),
        output_kind=ArtifactKind.CHECKPOINT,
        result_template="training/results/pretrain.html",
        estimate_path="training.estimates:pretrain_estimate",
    ),
    RunKind(
        name="sft",
        label="Supervised fine-tuning",
        description=(
            "Fine-tune a checkpoint on conversations exported from labeling, with TRL's "
            "SFTTrainer: loss on the assistant's tokens only, full fine-tuning or a LoRA adapter, "
            "validation loss, sample replies to fixed prompts, and the share of replies that end "
            "their turn with <|im_end|>."
        ),
        config_path="training.core.sft:SFTConfig",
        entry_path="training.core.sft:run",
        inputs=(
            InputSpec("base", ArtifactKind.CHECKPOINT, "Base checkpoint"),
            InputSpec("datasets", ArtifactKind.DATASET, "Dataset snapshots", many=True),
        ),
        output_kind=ArtifactKind.CHECKPOINT,
        result_template="training/results/sft.html",
    ),
    RunKind(
        name="reward",
        label="Reward model",
        description=(
            "Train a reward model on people's preferences with TRL's RewardTrainer: a score head "
            "on a checkpoint learns to rank the chosen reply above the rejected one; held-out "
            "pairwise accuracy is shown next to the labelers' own agreement ceiling."
        ),
        config_path="training.core.reward:RewardConfig",
        entry_path="training.core.reward:run",
        inputs=(
            InputSpec("base", ArtifactKind.CHECKPOINT, "Base checkpoint"),
            InputSpec("datasets", ArtifactKind.DATASET, "Preference snapshots", many=True),
        ),
        output_kind=ArtifactKind.CHECKPOINT,
        result_template="training/results/reward.html",
    ),
    RunKind(
        name="ppo",
        label="PPO against a reward model",
        description=(
            "Reinforcement learning from human feedback: the policy answers prompts, the reward "
            "model scores the answers, and PPO (clipped policy and value losses, GAE, a KL "
            "penalty to the starting model) makes high-scoring answers likelier. An independent "
            "reward model watches for reward hacking."
        ),
        config_path="training.core.ppo:PPOConfig",
        entry_path="training.core.ppo:run",
        inputs=(
            InputSpec("policy", ArtifactKind.CHECKPOINT, "Policy (an SFT checkpoint)"),
            InputSpec("reward", ArtifactKind.CHECKPOINT, "Reward model"),
            InputSpec("prompts", ArtifactKind.DATASET, "Prompts", many=True),
            InputSpec(
                "monitor",
                ArtifactKind.CHECKPOINT,
                "Independent reward model (monitor)",
                required=False,
            ),
        ),
        output_kind=ArtifactKind.CHECKPOINT,
        result_template="training/results/ppo.html",
    ),
    RunKind(
        name="grpo",
        label="GRPO on problems with checkable answers",
        description=(
            "Reinforcement learning with verifiable rewards: the model samples several solutions "
            "per problem, Orchard's checker marks the correct ones, and GRPO (TRL) makes them "
            "likelier. Watch the reward, the held-out pass@1 and the answer length grow."
        ),
        config_path="training.core.grpo:GRPOConfig",
        entry_path="training.core.grpo:run",
        inputs=(
            InputSpec("base", ArtifactKind.CHECKPOINT, "Starting checkpoint"),
            InputSpec("problems", ArtifactKind.DATASET, "Problem snapshots", many=True),
        ),
        output_kind=ArtifactKind.CHECKPOINT,
        result_template="training/results/grpo.html",
    ),
    RunKind(
        name="evaluate",
        label="Evaluate checkpoints",
        description=(
            "Measure one or more checkpoints side by side on held-out data: pass@1 and pass@k "
            "on problems, multiple-choice accuracy, the share of confident wrong answers and of "
            '"I don\'t know", validation loss and bits per byte on text, SFT loss and the share '
            "of replies that end their turn, reward-model accuracy, and the win rate against a "
            "baseline judged by a reward model. Runs by itself after every training run."
        ),
        config_path="training.core.evaluate:EvaluateConfig",
        entry_path="training.core.evaluate:run",
        inputs=(
            InputSpec("checkpoints", ArtifactKind.CHECKPOINT, "Checkpoints", many=True),
            InputSpec(
                "problems", ArtifactKind.DATASET, "Problem snapshots", many=True, required=False
            ),
            InputSpec(
                "text", ArtifactKind.CORPUS, "Held-out text (corpus)", many=True, required=False
            ),
            InputSpec(
                "conversations",
                ArtifactKind.DATASET,
                "SFT dataset snapshots (held-out conversations)",
                many=True,
                required=False,
            ),
            InputSpec(
                "preferences",
                ArtifactKind.DATASET,
                "Preference snapshots (for reward models)",
                many=True,
                required=False,
            ),
            InputSpec(
                "judge", ArtifactKind.CHECKPOINT, "Judge reward model (win rate)", required=False
            ),
            InputSpec(
                "baseline",
                ArtifactKind.CHECKPOINT,
                "Baseline checkpoint (win rate)",
                required=False,
            ),
            InputSpec(
                "prompts", ArtifactKind.DATASET, "Prompts (win rate)", many=True, required=False
            ),
        ),
        output_kind=ArtifactKind.OUTPUT,
        result_template="training/results/evaluate.html",
    ),
    RunKind(
        name="factuality",
        label="Factuality probe (I don't know)",
        description=(
            "Ask a checkpoint questions with known answers several times, find the ones it gets "
            "consistently wrong, and draft replies that say it does not know, for labelers to "
            "review: the field's remedy for confident made-up answers."
        ),
        config_path="training.core.factuality:FactualityConfig",
        entry_path="training.core.factuality:run",
        inputs=(
            InputSpec("checkpoint", ArtifactKind.CHECKPOINT, "Checkpoint"),
            InputSpec(
                "questions", ArtifactKind.DATASET, "Questions (problem snapshots)", many=True
            ),
        ),
        output_kind=ArtifactKind.OUTPUT,
        result_template="training/results/factuality.html",
    ),
    RunKind(
        name="responses",
        label="Responses to rank",
        description=(
            "Sample several replies per prompt from one or more checkpoints, for people to rank "
            "or compare in the arena; their preferences train a reward model."
        ),
        config_path="training.core.respond:ResponsesConfig",
        entry_path="training.core.respond:run",
        inputs=(
            InputSpec("checkpoints", ArtifactKind.CHECKPOINT, "Checkpoints", many=True),
            InputSpec("prompts", ArtifactKind.DATASET, "Prompts"),
        ),
        output_kind=ArtifactKind.OUTPUT,
    ),
    RunKind(
        name="merge",
        label="Merge a LoRA adapter",
        description=(
            "Fold a LoRA adapter into its base checkpoint, making a full checkpoint that serves "
            "faster and can be trained further."
        ),
        config_path="training.core.sft:MergeConfig",
        entry_path="training.core.sft:merge_run",
        inputs=(
            InputSpec("base", ArtifactKind.CHECKPOINT, "Base checkpoint"),
            InputSpec("adapter", ArtifactKind.CHECKPOINT, "LoRA adapter"),
        ),
        output_kind=ArtifactKind.CHECKPOINT,
    ),
)


@cache
def _registry() -> dict[str, RunKind]:
    kinds = {kind.name: kind for kind in BUILTIN_KINDS}
    for dotted in settings.ORCHARD_EXTRA_RUN_KINDS:
        extra = import_string(dotted)
        kinds[extra.name] = extra
    return kinds


def all_kinds() -> list[RunKind]:
    return list(_registry().values())


def get_kind(name: str) -> RunKind | None:
    return _registry().get(name)
