"""Model presets and the arithmetic of model size: parameters, FLOPs, memory, data budget.

Every Orchard model is a ``transformers`` Llama (pre-norm RMSNorm, rotary positions, SwiGLU MLP,
no biases), built from a :class:`~transformers.LlamaConfig`, so TRL, PEFT and the rest of the
Hugging Face tools load it without custom code. A preset fixes the shape; the vocabulary and the
special-token ids come from the tokenizer the model is trained with (:func:`build_config`).

All presets tie the output projection to the input embedding (as GPT-2 does): with the small
vocabularies Orchard trains, an untied head would be a large share of the parameters.

This module imports neither torch nor transformers at import time (``build_config`` imports
transformers when called): the web process reads ``PRESETS`` to describe the choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import LlamaConfig

PresetName = Literal["tiny", "mini", "small", "gpt2-small", "medium"]

ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
INIT_STD = 0.02


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int  # the longest context_length the preset may be trained with
    description: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def config_shape(self, vocab_size: int, context_length: int) -> SimpleNamespace:
        """The sizes of this preset's config, which :func:`build_config` completes; the size
        formulas read them without transformers (the web process estimates sizes with them)."""
        return SimpleNamespace(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,  # plain multi-head attention: no GQA at these sizes
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            max_position_embeddings=context_length,
        )


# Parameter counts in the descriptions assume the vocabulary named there; build_config sizes the
# embedding to the actual tokenizer. Intermediate sizes follow Llama's ~8/3 x hidden (SwiGLU has
# three matrices, so this matches a 4 x hidden GELU MLP in parameters), rounded up to 128.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 4, 4, 384, 512, "~1.1M parameters at a 2k vocabulary: seconds per step"),
    "mini": Preset(256, 4, 4, 768, 1024, "~3.9M parameters at a 2k vocabulary"),
    "small": Preset(512, 6, 8, 1536, 1024, "~25M parameters at an 8k vocabulary"),
    "gpt2-small": Preset(768, 12, 12, 2048, 1024, "~124M parameters at GPT-2's 50k vocabulary"),
    "medium": Preset(1024, 24, 16, 2816, 2048, "~350M parameters at a 50k vocabulary"),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ValueError(f"unknown model preset {name!r} (expected one of {known})") from None


def build_config(
    preset: str,
    vocab_size: int,
    context_length: int,
    *,
    bos_token_id: int | None,
    eos_token_id: int | None,
    pad_token_id: int | None,
) -> LlamaConfig:
    """A LlamaConfig of ``preset`` with the tokenizer's vocabulary and special-token ids.

    ``max_position_embeddings`` is set to ``context_length``, the length the model is trained
    on: later stages read it as the longest context the model has seen. ValueError when the
    context is longer than the preset allows.
    """
    from transformers import LlamaConfig

    shape = get_preset(preset)
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if not 1 <= context_length <= shape.max_position_embeddings:
        raise ValueError(
            f"context_length {context_length} is outside what the {preset!r} preset supports "
            f"(1 to {shape.max_position_embeddings} tokens)"
        )
    return LlamaConfig(
        **vars(shape.config_shape(vocab_size, context_length)),
        rms_norm_eps=RMS_NORM_EPS,
        initializer_range=INIT_STD,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


@dataclass(frozen=True)
class ModelShape:
    """The numbers the size formulas need, read from a LlamaConfig-like object."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    attention_bias: bool
    mlp_bias: bool
    context: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        heads = config.num_attention_heads
        return cls(
            vocab=config.vocab_size,
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            attention_bias=bool(getattr(config, "attention_bias", False)),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            context=config.max_position_embeddings,
        )

    @property
    def attn_width(self) -> int:
        """Width of the concatenated heads: the hidden size unless head_dim says otherwise."""
        return self.heads * self.head_dim

    def layer_matmul_params(self) -> int:
        """Weights of one block's matrices: q, k, v, o projections and the three MLP matrices."""
        kv_width = self.kv_heads * self.head_dim
        attention = self.hidden * (2 * self.attn_width + 2 * kv_width)
        mlp = 3 * self.hidden * self.intermediate
        return attention + mlp

    def layer_other_params(self) -> int:
        """Two RMSNorm gains and any biases of one block."""
        params = 2 * self.hidden
        if self.attention_bias:
            # q, k, v biases have their projections' widths; o's is the hidden size
            params += self.attn_width + 2 * self.kv_heads * self.head_dim + self.hidden
        if self.mlp_bias:
            params += 2 * self.intermediate + self.hidden
        return params


def count_parameters(config: Any) -> dict[str, int]:
    """Exact parameter counts of ``LlamaForCausalLM(config)`` (equal to summing ``numel()``).

    ``embedding`` is the token embedding plus an untied output head; ``non_embedding`` is the
    rest (attention, MLP, norms), the N of scaling-law papers.
    """
    s = ModelShape.of(config)
    embedding = s.vocab * s.hidden * (1 if s.tied else 2)
    blocks = s.layers * (s.layer_matmul_params() + s.layer_other_params())
    final_norm = s.hidden
    non_embedding = blocks + final_norm
    return {
        "parameters": embedding + non_embedding,
        "embedding_parameters": embedding,
        "non_embedding_parameters": non_embedding,
    }


def flops_per_token(config: Any, context_length: int | None = None) -> int:
    """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B:

        6 * N_matmul + 12 * n_layers * attn_width * context_length

    ``N_matmul`` counts every weight that takes part in a matmul: the blocks' seven matrices and
    the output projection (``vocab x hidden``, counted even when tied to the embedding, since the
    logits are a real matmul; the embedding lookup itself is not). Each such weight costs 2 FLOPs
    per token forward and 4 backward. The attention term is the ``Q K^T`` and ``A V`` products:
    ``2 * 2 * context * attn_width`` per layer forward, x3 with the backward; causal masking is
    ignored, as in the usual MFU convention. Norms, softmax and the optimizer are left out.
    """
    s = ModelShape.of(config)
    context = context_length or s.context
    matmul_params = s.layers * s.layer_matmul_params() + s.vocab * s.hidden
    return 6 * matmul_params + 12 * s.layers * s.attn_width * context


def training_memory(
    config: Any, *, batch_size: int, context_length: int | None = None, dtype: str = "fp32"
) -> dict[str, int]:
    """Rough bytes needed to train with AdamW at this batch size, by component.

    Parameters, gradients and both Adam moments are fp32 in either precision (bf16 autocast only
    lowers matmul inputs): 16 bytes per parameter, plus a bf16 copy of the weights that autocast
    casts once per forward. Activations kept for the backward pass, per token and layer (in
    elements): residual stream and both norm outputs (3h), q, k, v and the attention output
    (4 x attn width), the softmax probabilities (heads x context; fused attention keeps less),
    gate, up, their SiLU product and the o-projection input (4 x intermediate + h). The logits
    add ``vocab`` elements per token in the activation dtype, an fp32 copy for the loss, and its
    gradient. Allocator overhead, workspace and fragmentation are not included: treat this as a
    lower bound, good for orders of magnitude.
    """
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    s = ModelShape.of(config)
    context = context_length or s.context
    params = count_parameters(config)["parameters"]
    act_bytes = 4 if dtype == "fp32" else 2
    per_token_layer = (
        4 * s.hidden + 4 * s.attn_width + 4 * s.intermediate + s.heads * context
    ) * act_bytes
    per_token_logits = s.vocab * (act_bytes + 4 + 4)
    tokens = batch_size * context
    parts = {
        "weights": 4 * params + (2 * params if dtype == "bf16" else 0),
        "gradients": 4 * params,
        "optimizer": 8 * params,
        "activations": tokens * (s.layers * per_token_layer + per_token_logits),
    }
    parts["total"] = sum(parts.values())
    return parts


def tokens_per_parameter(tokens: int | float, parameters: int | float) -> float:
    """Training tokens per parameter; Chinchilla's compute-optimal ratio is about 20."""
    if parameters <= 0:
        raise ValueError("parameters must be positive")
    return float(tokens) / float(parameters)


def estimate(config: Any, *, batch_size: int = 16, context_length: int | None = None) -> dict:
    """Size, compute and memory of training ``config``; JSON-serialisable.

    ``context_length`` defaults to the config's ``max_position_embeddings``.
    """
    context = context_length or ModelShape.of(config).context
    counts = count_parameters(config)
    flops = flops_per_token(config, context)
    return {
        **counts,
        "flops_per_token": flops,
        "flops_formula": "6 * N_matmul + 12 * n_layers * attn_width * context_length",
        "context_length": context,
        "batch_size": batch_size,
        "memory_bytes": {
            dtype: training_memory(
                config, batch_size=batch_size, context_length=context, dtype=dtype
            )
            for dtype in ("fp32", "bf16")
        },
        "chinchilla_tokens": 20 * counts["parameters"],
    }


def format_count(n: int | float) -> str:
    """``1234567`` -> ``"1.23M"``: parameter and token counts for logs."""
    if n == 0:
        return "0"
    units = ["", "K", "M", "B", "T"]
    power = min(int(math.log10(abs(n)) // 3), len(units) - 1)
    return f"{n / 1000**power:.3g}{units[power]}"
