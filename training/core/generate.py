"""Orchard's generation engine: batched, KV-cached sampling for the playground, chat and RL.

:class:`Engine` wraps a causal language model (any transformers architecture) and its tokenizer.
:meth:`Engine.generate` turns a batch of prompts into :class:`Completion` objects, ``n`` samples
per prompt, in one batch:

1. prompts are left-padded to a common length and run through the model once (prefill) with an
   ``attention_mask`` and ``position_ids = cumsum(mask) - 1``, so padding changes nothing;
2. then one token per step: the model sees only the new token, the keys and values of everything
   before it come from the cache, and the 2D attention mask grows by one column;
3. each step's logits are sampled in torch (temperature, top-k, top-p) with a ``torch.Generator``
   seeded per request, so the same seed repeats exactly;
4. a sequence stops at the tokenizer's eos (and the model's ``generation_config`` eos ids), at
   ``stop_token_ids``, at a stop string, at its token budget, or for everyone when
   ``should_stop()`` turns true. Finished sequences keep a slot in the batch but are fed padding
   and their tokens are ignored.

``on_token`` receives a :class:`TokenEvent` per generated token, with the text it added. Text is
decoded incrementally (a window of recent tokens is decoded and diffed) and held back while it
ends in an incomplete UTF-8 character or could be the start of a stop string, so the streamed
pieces always concatenate to the final ``Completion.text``.

:class:`SamplingParams` is a light pydantic model: importing this module loads neither torch
nor transformers, so the web process can validate requests with it.

Run it from Python::

    engine = Engine.load("path/to/checkpoint")  # model.safetensors + tokenizer files
    prompt = chat_prompt(engine.tokenizer, [{"role": "user", "content": "Hi"}])
    [completion] = engine.generate([prompt], SamplingParams(max_new_tokens=40, seed=1))

Speed: at batch 1 on a CPU, a small model's decode step costs more in per-call overhead (module
calls, keyword parsing, cache and mask objects, output containers) than in arithmetic. Each
model gets one of three decoders:

- Llama-architecture models (Orchard's own, and LoRA adapters on them) decode eagerly through
  ``_LlamaDecoder``: the prompt goes through the model's forward once, then each token runs the
  layers' own submodules directly, op for op as transformers does, over key and value buffers
  allocated once per call, with the padding mask and the rotary cos/sin built once per call
  too. The logits are bit for bit those of the model's forward (tests compare them), so greedy
  output is ``model.generate``'s, token for token.
- Other architectures (sliding windows included) decode with a ``DynamicCache`` and the model's
  own forward and mask code at every step.
- With ``compile=True``: a ``StaticCache`` with a length rounded up to a power of two, a
  full-length mask updated in place and a ``torch.compile``'d decode step: shapes never change
  inside a request, so the step compiles once per (batch size, cache length) bucket.

``python -m training.core.bench generate`` measures them against ``model.generate``: on its
4M-parameter Llama at batch 1 on a shared 2-core CPU, eager decoding ran about 2.25x as fast
as ``model.generate`` greedy and 2.4x sampled with torch's default two threads (medians; single
runs 1.9-2.3x and 2.2-2.7x), and about 1.9x greedy with one thread, where the matrix products
take a larger share. The generic eager path ran 1.0-1.2x, compiled decoding 2.2-2.4x.

Simplifications:

- No continuous batching: a call's batch runs until its last sequence finishes; finished
  sequences are masked, not evicted, so they still cost compute.
- Strings are tokenized exactly as written (``add_special_tokens=False``): chat prompts from
  :func:`chat_prompt` already hold every special token; callers wanting a BOS put it in.
- ``Completion.logprobs`` and the top alternatives come from the model's raw distribution
  (temperature 1, before top-k/top-p), not from the tempered and filtered one the token was
  drawn from; RL code that trains on tempered log-probabilities recomputes them. Alternatives
  show each token decoded alone (a partial UTF-8 character shows as U+FFFD).
- Text is decoded while generating only when it is streamed or checked for stop strings;
  otherwise once at the end.
- ``token_ids`` hold every sampled token, including the eos or stop token that ended the
  sequence; ``text`` holds neither that token nor a matched stop string. Other special tokens
  stay in ``text`` (tool calls need them). A sample ended by ``should_stop`` keeps the text
  already released: held-back text (an incomplete character, the start of a possible stop
  string) has no token event left to carry it and is dropped.
- Samples of one request depend on everything in its batch (the same generator draws for every
  row), so the same seed repeats only for the same prompts, ``n`` and parameters.
- Compiled decoding recompiles for each new (batch size, cache length) bucket, and the first
  call pays the compile (seconds to tens of seconds on CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from training.core.device import pick_device

if TYPE_CHECKING:  # torch and transformers take seconds to import: only inside functions
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FinishReason = Literal["eos", "stop", "length", "stopped"]
Prompt = str | Sequence[int]

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
REPLACEMENT_CHAR = "\ufffd"  # what a decoder yields for an incomplete UTF-8 character
MIN_CACHE_BUCKET = 64


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(
        64,
        ge=1,
        le=4096,
        description=(
            "Most tokens to generate per sample; fewer when the prompt leaves less room in the "
            "model's context window."
        ),
    )
    temperature: float = Field(
        0.8,
        ge=0.0,
        le=5.0,
        description=(
            "Divides the logits before sampling: below 1 sharper, above 1 flatter; 0 is greedy "
            "(always the most likely token, ignoring top_k, top_p and seed)."
        ),
    )
    top_k: int = Field(
        0,
        ge=0,
        le=262144,
        description="Sample only among the k most likely tokens; 0 turns the filter off.",
    )
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description=(
            "Nucleus sampling: sample among the most likely tokens whose probabilities add up "
            "to top_p; 1 turns the filter off."
        ),
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Random seed: the same seed, prompts and settings give the same samples.",
    )
    stop_strings: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=16,
        description="Stop a sample when its text contains one of these; the string is not kept.",
    )
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list,
        max_length=64,
        description="Token ids that end a sample (the tokenizer's eos always does).",
    )
    n: int = Field(1, ge=1, le=16, description="Samples generated per prompt.")
    return_top_logprobs: int = Field(
        0,
        ge=0,
        le=10,
        description="Also return this many most likely tokens (with probabilities) per token.",
    )


Alternatives = list[tuple[str, float]]  # (token text, probability), most likely first


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, as streamed to ``on_token``."""

    index: int  # row in the batch: prompt_index * n + sample_index
    prompt_index: int
    sample_index: int
    token_id: int
    text: str  # text this token released; the pieces of a sequence concatenate to its text
    logprob: float
    alternatives: Alternatives | None  # None unless return_top_logprobs > 0


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float]  # natural log, one per token id
    alternatives: list[Alternatives] | None  # one list per token id when requested
    prompt_tokens: int
    time_to_first_token: float | None  # seconds from the call; None if nothing was generated
    tokens_per_second: float  # generated tokens / seconds from the call to this sample's end


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> str:
    """The text the assistant's next turn continues: the chat page and the playground share it."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class _IncrementalText:
    """Text of a growing token sequence, extended one token at a time.

    Decoding each token alone breaks multi-byte characters and, for some tokenizers, spaces
    that depend on the previous token; decoding everything each step is quadratic. Like vLLM's
    detokenizer, this decodes a short window twice (with and without the new tokens) and keeps
    the difference once it no longer ends in an incomplete character.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: decoded with the new tokens to give them context
        self._read = 0  # tokens before this one are already in self.text
        self._prefix_text = ""

    def add(self, token_id: int) -> None:
        self.ids.append(token_id)
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(self._prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self._advance(new_text)

    def flush(self) -> None:
        """At the end, keep what pending tokens decode to, incomplete characters included."""
        if self._read < len(self.ids):
            self._advance(self._decode(self.ids[self._prefix :]))

    def _advance(self, new_text: str) -> None:
        self.text += new_text[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self._prefix_text = self._decode(self.ids[self._prefix : self._read])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


@dataclass
class _Sequence:
    """One row of the batch: a sample of one prompt, and everything generated for it."""

    prompt_index: int
    sample_index: int
    prompt_tokens: int
    budget: int  # max_new_tokens, clamped to the context window
    detok: _IncrementalText | None  # only when text is needed while generating
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    alternatives: list[Alternatives] = field(default_factory=list)
    text: str = ""  # final text once finished
    emitted: int = 0  # characters of text already streamed
    finish_reason: FinishReason | None = None
    first_token_at: float | None = None
    finished_at: float | None = None

    def record(
        self, token_id: int, logprob: float, alternatives: Alternatives | None, now: float
    ) -> None:
        self.ids.append(token_id)
        self.logprobs.append(logprob)
        if alternatives is not None:
            self.alternatives.append(alternatives)
        if self.first_token_at is None:
            self.first_token_at = now

    def completion(self, started: float, with_alternatives: bool) -> Completion:
        assert self.finish_reason is not None and self.finished_at is not None
        elapsed = self.finished_at - started
        first = self.first_token_at
        return Completion(
            prompt_index=self.prompt_index,
            sample_index=self.sample_index,
            token_ids=self.ids,
            text=self.text,
            finish_reason=self.finish_reason,
            logprobs=self.logprobs,
            alternatives=self.alternatives if with_alternatives else None,
            prompt_tokens=self.prompt_tokens,
            time_to_first_token=None if first is None else first - started,
            tokens_per_second=len(self.ids) / elapsed if elapsed > 0 else 0.0,
        )


class _StopStrings:
    """Finds stop strings in a growing text, and how much of its end must stay unreleased."""

    def __init__(self, strings: list[str]) -> None:
        self.strings = strings
        self.longest = max((len(s) for s in strings), default=0)

    def find(self, text: str, old_length: int) -> int | None:
        """Start of the first stop string in ``text``; only a match that ends after
        ``old_length`` can be new, since every step checks."""
        start = max(0, old_length - self.longest + 1)
        hits = [i for s in self.strings if (i := text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def holdback(self, text: str) -> int:
        """Length of the longest end of ``text`` that could still grow into a stop string."""
        for size in range(min(len(text), self.longest - 1), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self.strings):
                return size
        return 0


class _Sampler:
    """Picks the next token of every row from its logits, in torch.

    Sampling avoids what is slow on a CPU: ``torch.sort`` and ``torch.multinomial`` over a
    4096-token vocabulary cost about 150 and 90 us per row, a fifth of a compiled decode step of
    the benchmark's 4M-parameter model. A token is drawn by inverse CDF (one uniform number per
    row), and top-p looks only at the ``CANDIDATES`` most likely tokens when they hold the
    nucleus; when they do not (a flat distribution: their topk is skipped when even the largest
    probability times their number falls short), a draw from the whole distribution is repeated
    until it lands in the nucleus, which it does with probability at least ``top_p``. Only
    after ``MAX_REDRAWS`` misses is the vocabulary sorted.
    """

    CANDIDATES = 256
    MAX_REDRAWS = 16

    def __init__(
        self, params: SamplingParams, generator: torch.Generator | None, vocab_size: int
    ) -> None:
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.generator = generator
        self.vocab_size = vocab_size
        self.top_k = min(params.top_k, vocab_size)
        self.alternatives = min(params.return_top_logprobs, vocab_size)

    def __call__(
        self, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``logits`` (B, V) float → next ids (B,), their logprobs (B,), and the top
        alternatives' ids and probabilities (B, k) when requested."""
        import torch

        logprobs = torch.log_softmax(logits, dim=-1)  # (B, V): the model's raw distribution
        if self.temperature == 0:
            next_ids = logits.argmax(dim=-1)
        else:
            next_ids = self._sample(logits / self.temperature)
        chosen = logprobs.gather(1, next_ids[:, None]).squeeze(1)  # (B,)
        if not self.alternatives:
            return next_ids, chosen, None, None
        top = logprobs.topk(self.alternatives, dim=-1)  # sorted, most likely first
        return next_ids, chosen, top.indices, top.values.exp()

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        """Draw one token id per row from ``scores`` (B, V) after top-k and top-p."""
        import torch

        if self.top_k:
            values, ids = scores.topk(self.top_k, dim=-1)
            # top-p applies to the distribution top-k left, as in transformers.
            return self._from_sorted(torch.softmax(values, dim=-1), ids)
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        if self.top_p == 1.0:
            return _draw(probs, self.generator)
        candidates = min(self.CANDIDATES, self.vocab_size)
        # The candidates hold at most candidates * the largest probability: in a flat
        # distribution that is short of the nucleus, and their topk would be wasted.
        if bool((probs.amax(dim=-1) * candidates >= self.top_p).all()):
            values, ids = probs.topk(candidates, dim=-1)
            if bool((values.sum(dim=-1) >= self.top_p).all()):
                return self._from_sorted(values, ids)
        picks = self._draw_in_nucleus(probs)
        if picks is not None:
            return picks
        return self._from_sorted(*probs.sort(dim=-1, descending=True))

    def _from_sorted(self, probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Draw from ``probs`` (B, K), most likely first, after top-p; map to ``ids`` (B, K)."""
        if self.top_p < 1.0:
            mass_before = probs.cumsum(dim=-1) - probs
            drop = mass_before >= self.top_p
            drop[:, 0] = False  # the most likely token always stays, whatever top_p is
            probs = probs.masked_fill(drop, 0.0)
        return ids.gather(1, _draw(probs, self.generator)[:, None]).squeeze(1)

    def _draw_in_nucleus(self, probs: torch.Tensor) -> torch.Tensor | None:
        """Top-p by rejection: draw from ``probs`` (B, V) and redraw the rows whose token is
        outside the nucleus (the tokens more likely than it hold top_p or more; tokens tied at
        the edge stay or go together). What is kept is distributed exactly as the renormalised
        nucleus. None after too many misses."""
        import torch

        picks = _draw(probs, self.generator)  # (B,)
        for _ in range(self.MAX_REDRAWS):
            picked = probs.gather(1, picks[:, None])  # (B, 1)
            above = torch.where(probs > picked, probs, 0.0).sum(dim=-1)  # (B,)
            outside = above >= self.top_p
            if not bool(outside.any()):
                return picks
            picks = torch.where(outside, _draw(probs, self.generator), picks)
        return None


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (B, K), in proportion to its (unnormalised) weights."""
    import torch

    cumulative = probs.cumsum(dim=-1)  # (B, K)
    total = cumulative[:, -1:]
    uniform = torch.rand(
        total.shape, generator=generator, device=probs.device, dtype=cumulative.dtype
    )
    picks = torch.searchsorted(cumulative, uniform * total, right=True)  # (B, 1)
    # uniform < 1, but rounding of uniform * total can reach total, one past the last token
    # with any weight: that token is where the cumulative sum first reaches the total.
    last = (cumulative < total).sum(dim=-1, keepdim=True)
    return torch.minimum(picks, last).squeeze(1)


class _Decoder:
    """Prefill and one-token steps over a left-padded batch, with a KV cache.

    ``mask`` (B, capacity) holds the prompt's padding mask followed by one column per step;
    ``positions`` (B, 1) the position of each row's next token.
    """

    def __init__(
        self,
        engine: Engine,
        input_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        steps: int,
    ) -> None:
        import torch
        from transformers import DynamicCache, StaticCache

        self.engine = engine
        self.input_ids = input_ids  # (B, T)
        batch, self.prompt_length = input_ids.shape
        needed = self.prompt_length + steps
        capacity = _bucket(needed) if engine.compiled else needed
        config = engine.model.config
        self.cache = (
            StaticCache(config=config, max_cache_len=capacity)
            if engine.compiled
            else DynamicCache(config=config)
        )
        self.mask = torch.zeros(batch, capacity, dtype=torch.long, device=input_ids.device)
        self.mask[:, : self.prompt_length] = prompt_mask
        self.positions = prompt_mask.sum(dim=1, keepdim=True)  # (B, 1): first new token's
        self.step_index = 0

    def prefill(self) -> torch.Tensor:
        """Logits (B, V) for each row's first new token."""
        prompt_mask = self.mask[:, : self.prompt_length]
        # Real tokens get positions 0.. after any padding; padding's positions are never seen.
        positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        # A static cache is as long as the whole mask; a dynamic one as what it holds.
        mask = self.mask if self.engine.compiled else prompt_mask
        out = self.engine.model(
            input_ids=self.input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (B,) and return the logits (B, V) for the token after them."""
        column = self.prompt_length + self.step_index
        self.mask[:, column] = 1
        mask = self.mask if self.engine.compiled else self.mask[:, : column + 1]
        logits = self.engine._decode_step(tokens[:, None], self.positions, mask, self.cache)
        # Finished rows keep being fed; clamping keeps their positions inside the window.
        self.positions.add_(1).clamp_(max=self.engine.context_window - 1)
        self.step_index += 1
        return logits


def _bucket(length: int) -> int:
    """Cache length for compiled decoding: a power of two, so few shapes need compiling."""
    return max(MIN_CACHE_BUCKET, 1 << (length - 1).bit_length())


class _LlamaLayer:
    """One decoder layer of a Llama-architecture model, run for one new token per row.

    It runs the layer's own submodules and attention implementation, op for op as
    ``LlamaDecoderLayer`` does, so the logits are bit for bit those of ``model.forward``
    (tests/core/test_generate.py checks it); LoRA layers, which replace the linear ones, still
    apply. What it leaves out is the generic forward's per-call work (keyword plumbing, output
    containers, cache objects, mask building), which at batch 1 on a CPU costs more than the
    arithmetic of a small model.
    """

    def __init__(self, layer: Any, dtype: torch.dtype) -> None:
        attention, mlp = layer.self_attn, layer.mlp
        config = attention.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.attend = _attention_function(attention)
        self.input_norm = _norm_function(layer.input_layernorm, dtype)
        self.post_norm = _norm_function(layer.post_attention_layernorm, dtype)
        self.q = _linear_function(attention.q_proj)
        self.k = _linear_function(attention.k_proj)
        self.v = _linear_function(attention.v_proj)
        self.o = _linear_function(attention.o_proj)
        self.gate = _linear_function(mlp.gate_proj)
        self.up = _linear_function(mlp.up_proj)
        self.down = _linear_function(mlp.down_proj)
        self.act = _activation_function(mlp.act_fn)

    def __call__(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        signed_sin: torch.Tensor,
        new_key: torch.Tensor,
        new_value: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``hidden`` (B, hidden) → the layer's output (B, hidden). The new token's key and
        value are written to ``new_key`` and ``new_value`` (B, kv_heads, 1, head_dim), the
        cache's column for it; attention reads ``keys`` and ``values`` (B, kv_heads, n,
        head_dim), the cache up to that column."""
        import torch

        batch, heads, kv_heads, head_dim = hidden.shape[0], self.heads, self.kv_heads, self.head_dim
        x = self.input_norm(hidden)
        # Queries and keys take the same rotation: one pass over both instead of two.
        qk = torch.cat((self.q(x), self.k(x)), -1).view(batch, heads + kv_heads, 1, head_dim)
        # Llama's rotate_half(t) * sin is t rolled by half a head times sin with its first half
        # negated: the same products (negation is exact) in 2 ops instead of 5.
        qk = qk * cos + qk.roll(head_dim // 2, -1) * signed_sin
        q, k = qk.split((heads, kv_heads), 1)
        new_key.copy_(k)
        new_value.copy_(self.v(x).view(batch, kv_heads, 1, head_dim))
        hidden = hidden + self.o(self.attend(q, keys, values, mask))
        x = self.post_norm(hidden)
        return hidden + self.down(self.act(self.gate(x)) * self.up(x))


# The functions below return a module's computation as a plain function where that is exactly
# what calling the module does: a module call costs 2-5 us on a CPU and keyword arguments to a
# torch function about 3 us more, as much as the small model's matrix-vector products, and a
# decode step makes about 30 such calls per layer. Anything else (a LoRA or quantised layer, a
# module with hooks) is returned as is, and runs as the model's forward would run it.

Function = Callable[["torch.Tensor"], "torch.Tensor"]


def _linear_function(module: Any) -> Function:
    """For inputs (B, in): ``F.linear`` on them is ``mm`` (``addmm`` with a bias) with the
    transposed weight, which its layers of dispatch rebuild at every call."""
    import torch

    if type(module) is not torch.nn.Linear or _has_hooks(module):
        return module
    weight_t, bias = module.weight.t(), module.bias  # a view: the weight stays shared
    if bias is None:
        return lambda x: x.mm(weight_t)
    addmm = torch.addmm
    return lambda x: addmm(bias, x, weight_t)


def _norm_function(module: Any, dtype: torch.dtype) -> Function:
    """In float32, torch's ``rms_norm`` runs the ops of Llama's RMSNorm (square, mean, add eps,
    rsqrt, two products) with the same results in one call; other dtypes round between the
    products in Llama's version, so the module runs."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if type(module) is not LlamaRMSNorm or _has_hooks(module):
        return module
    weight, eps = module.weight, module.variance_epsilon
    if not dtype == weight.dtype == torch.float32:
        return module
    rms_norm, shape = torch.rms_norm, tuple(weight.shape)
    return lambda x: rms_norm(x, shape, weight, eps)


def _activation_function(module: Any) -> Function:
    import torch
    from transformers.activations import SiLUActivation

    if type(module) in (SiLUActivation, torch.nn.SiLU) and not _has_hooks(module):
        return torch.nn.functional.silu
    return module


def _embedding_function(module: Any) -> Function:
    import torch

    if type(module) is not torch.nn.Embedding or _has_hooks(module) or module.max_norm:
        return module
    embedding, weight = torch.nn.functional.embedding, module.weight
    return lambda ids: embedding(ids, weight)


def _attention_function(
    attention: Any,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``attend(q, keys, values, mask)``: queries (B, heads, 1, head_dim) against the cached
    keys and values (B, kv_heads, n, head_dim) → (B, heads * head_dim), with the model's
    attention implementation."""
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    implementation, scaling = attention.config._attn_implementation, attention.scaling
    if implementation == "sdpa" and attention.num_key_value_groups == 1:
        # The call transformers' sdpa_attention_forward makes for one query token without
        # grouped heads, minus its argument checks and a transpose that one token can skip.
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def attend_sdpa(
            q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
        ) -> torch.Tensor:
            out = sdpa(q, keys, values, mask, 0.0, False, scale=scaling)  # (B, heads, 1, D)
            return out.reshape(q.shape[0], -1)

        return attend_sdpa
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)

    def attend(
        q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        out, _ = interface(attention, q, keys, values, mask, dropout=0.0, scaling=scaling)
        return out.reshape(q.shape[0], -1)  # (B, 1, heads, D) → (B, heads * D)

    return attend


def _hooked(model: PreTrainedModel) -> bool:
    """Whether any module of ``model`` has a forward hook. The Llama path skips the modules'
    ``forward`` calls, so it would skip the hooks, which may have been added at any time."""
    return any(_has_hooks(module) for module in model.modules())


def _has_hooks(module: Any) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _llama_model(model: PreTrainedModel) -> Any:
    """The ``LlamaForCausalLM`` that :class:`_LlamaDecoder` runs for ``model`` (itself, or the
    base under a LoRA wrapper), or None for the generic path: other architectures, subclasses
    (they may compute something else), prompt-learning adapters (they change the inputs),
    attention implementations other than sdpa and eager, and dynamic rope types."""
    from transformers.models.llama.modeling_llama import (
        LlamaAttention,
        LlamaDecoderLayer,
        LlamaForCausalLM,
        LlamaMLP,
        LlamaModel,
        LlamaRotaryEmbedding,
    )

    base = model
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None:
        if peft_config.is_prompt_learning:
            return None
        base = model.get_base_model()
    if type(base) is not LlamaForCausalLM or type(base.model) is not LlamaModel:
        return None
    if base.config._attn_implementation not in ("sdpa", "eager"):
        return None
    rotary = base.model.rotary_emb
    if type(rotary) is not LlamaRotaryEmbedding or _has_hooks(rotary):
        return None
    # These rescale with the longest position in the call, so positions have no fixed table.
    if "dynamic" in rotary.rope_type or rotary.rope_type == "longrope":
        return None
    for layer in base.model.layers:
        if (
            type(layer) is not LlamaDecoderLayer
            or type(layer.self_attn) is not LlamaAttention
            or type(layer.mlp) is not LlamaMLP
            or _has_hooks(layer)
        ):
            return None
    return base


class _LlamaDecoder(_Decoder):
    """Eager decoding for Llama-architecture models, without the generic forward's overhead.

    Prefill is the generic one (the model's own forward, once). Its cache is then copied into
    preallocated key and value buffers, one pair per layer, and each step runs the layers
    directly (:class:`_LlamaLayer`): no cache object, mask or output container is built per
    token. What transformers recomputes at every step is computed once per call instead: the
    padding mask (None without padding, as in transformers) and the rotary cos and sin of every
    position the call can reach, from the model's own rotary module (its rope types here are
    pure functions of the position).
    """

    def __init__(
        self,
        engine: Engine,
        input_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        steps: int,
    ) -> None:
        import torch

        super().__init__(engine, input_ids, prompt_mask, steps)
        self.llama = llama = engine._llama
        model = llama.model
        dtype, device = model.embed_tokens.weight.dtype, input_ids.device
        self.embed = _embedding_function(model.embed_tokens)
        self.layers = [_LlamaLayer(layer, dtype) for layer in model.layers]
        self.norm = _norm_function(model.norm, dtype)
        self.lm_head = _linear_function(llama.lm_head)
        self.length = self.prompt_length  # cache columns filled
        batch, capacity = self.mask.shape
        head_dim = model.layers[0].self_attn.head_dim
        shape = (len(self.layers), batch, llama.config.num_key_value_heads, capacity, head_dim)
        # One tensor for all layers, so that a step takes its views of every layer's cache in
        # one op. Columns are read only once written: no need to zero them.
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.attention_mask = self._attention_mask(prompt_mask, capacity, dtype)
        self._rotations(model.rotary_emb, steps, dtype)
        # Without padding every row is at the same position: one index for all of them.
        self.position = self.prompt_length

    def _attention_mask(
        self, prompt_mask: torch.Tensor, capacity: int, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """(B, 1, 1, capacity) mask for one new token, as transformers builds it: None without
        padding (every key is visible), boolean for sdpa, additive for eager."""
        import torch

        if bool(prompt_mask.all()):
            return None
        visible = torch.ones(
            prompt_mask.shape[0], capacity, dtype=torch.bool, device=prompt_mask.device
        )
        visible[:, : self.prompt_length] = prompt_mask.bool()
        visible = visible[:, None, None, :]
        if self.llama.config._attn_implementation == "sdpa":
            return visible
        zero = torch.zeros((), dtype=dtype, device=visible.device)
        return torch.where(visible, zero, torch.finfo(dtype).min)

    def _rotations(self, rotary: Any, steps: int, dtype: torch.dtype) -> None:
        """``cos`` and ``signed_sin`` (P, 1, head_dim): the rotary module's cos and sin for
        positions 0..P-1, the sin with its first half negated (see :class:`_LlamaLayer`)."""
        import torch

        device = self.positions.device
        last = min(int(self.positions.max()) + steps, self.engine.context_window - 1)
        positions = torch.arange(last + 1, device=device)[None]  # (1, P)
        # cos and sin are elementwise: a position's values are those transformers computes at
        # its step (tests compare the logits bit for bit).
        cos, sin = rotary(torch.empty(0, dtype=dtype, device=device), positions)  # (1, P, D)
        sign = torch.ones(cos.shape[-1], dtype=dtype, device=device)
        sign[: cos.shape[-1] // 2] = -1
        self.cos, self.signed_sin = cos[0, :, None], (sin * sign)[0, :, None]
        self.last_position = last

    def prefill(self) -> torch.Tensor:
        # The model's own forward, once per call. (Run through the layers directly, a whole
        # prompt's matrix products get inputs with other strides than transformers gives them,
        # and a CPU matrix-product kernel can round differently for those.)
        logits = super().prefill()
        for layer, keys, values in zip(self.cache.layers, self.keys, self.values, strict=True):
            keys[:, :, : self.length] = layer.keys  # (B, kv_heads, T, head_dim)
            values[:, :, : self.length] = layer.values
        self.cache = None  # the buffers hold it now
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (B,) and return the logits (B, V) for the token after them."""
        slot = self.length
        if self.attention_mask is None:
            mask = None
            position = min(self.position, self.last_position)
            cos, signed_sin = self.cos[position], self.signed_sin[position]  # (1, head_dim)
            self.position += 1
        else:
            mask = self.attention_mask[..., : slot + 1]
            cos, signed_sin = self.cos[self.positions], self.signed_sin[self.positions]
            # Finished rows keep being fed; clamping keeps their positions in the table.
            self.positions.add_(1).clamp_(max=self.last_position)
        # Per layer: the cache column of the new token, and the cache up to it.
        new_keys = self.keys.narrow(3, slot, 1).unbind(0)
        new_values = self.values.narrow(3, slot, 1).unbind(0)
        keys = self.keys.narrow(3, 0, slot + 1).unbind(0)
        values = self.values.narrow(3, 0, slot + 1).unbind(0)
        hidden = self.embed(tokens)  # (B, hidden)
        for layer, *cache in zip(self.layers, new_keys, new_values, keys, values, strict=True):
            hidden = layer(hidden, cos, signed_sin, *cache, mask)
        self.length = slot + 1
        return self.lm_head(self.norm(hidden)).float()


class Engine:
    """A causal LM and its tokenizer, ready to generate."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        compile: bool = False,
    ) -> None:
        import torch

        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token: generation could never end a turn")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.device
        self.context_window = int(model.config.max_position_embeddings)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id  # padding is masked out: any valid id does
        self.eos_ids = frozenset({tokenizer.eos_token_id, *_generation_eos(model)})
        self.compiled = compile
        if compile:
            _check_compilable(model)
        # Eager decoding of Llama-architecture models skips the model's per-call overhead.
        self._llama = None if compile else _llama_model(model)
        self._decode_step = (
            torch.compile(self._forward_one, dynamic=False, **_compile_options(self.device))
            if compile
            else self._forward_one
        )
        self._pieces: dict[int, str] = {}  # token id → text, for alternatives

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
        *,
        compile: bool = False,
        base_path: str | Path | None = None,
    ) -> Engine:
        """Load a local transformers folder (``model.safetensors`` + tokenizer files), or a LoRA
        adapter folder (``adapter_model.safetensors``) on top of the model in ``base_path``.

        Only safetensors weights are read: pickled ``pytorch_model.bin`` files can run code when
        loaded. Nothing is downloaded and no code from the folder is run. ``device`` as in
        :func:`training.core.device.pick_device`; ``dtype`` ``auto`` is bf16 on a GPU that
        supports it and fp32 elsewhere. An adapter stays separate from its base (PEFT applies it
        on the fly), so the same base folder serves every adapter trained from it.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        target = pick_device(device)
        if (folder / "adapter_config.json").is_file():
            from training.core.sft import load_for_generation

            model, tokenizer = load_for_generation(
                folder, Path(base_path) if base_path is not None else None
            )
            model = model.to(dtype=_resolve_dtype(dtype, target))
            return cls(model.to(target), tokenizer, compile=compile)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not any((folder / name).is_file() for name in SAFETENSORS_FILES):
            raise FileNotFoundError(
                f"{folder} has no model.safetensors: only safetensors weights are loaded "
                "(pickled pytorch_model.bin files are refused)"
            )
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=_resolve_dtype(dtype, target),
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
        return cls(model.to(target), tokenizer, compile=compile)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        *,
        on_token: Callable[[TokenEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Completion]:
        """Complete every prompt ``params.n`` times, in one batch; results in row order
        (prompt 0's samples first).

        Raises ``ValueError`` for an empty prompt, an unknown token id, or a prompt that leaves
        no room for a new token in the context window; ``max_new_tokens`` is clamped to the room
        left. ``should_stop`` is checked before every forward pass: once true, every unfinished
        sample ends with ``finish_reason="stopped"`` and what it has so far.
        """
        import torch

        started = time.perf_counter()
        encoded = [self._encode(i, p) for i, p in enumerate(prompts)]
        rows = self._plan(encoded, params, stream=on_token is not None)
        if rows:
            with torch.inference_mode():
                self._run(rows, encoded, params, on_token, should_stop or _never)
        keep = params.return_top_logprobs > 0
        return [row.completion(started, keep) for row in rows]

    # -- preparing a batch ------------------------------------------------------------------

    def _encode(self, index: int, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            # verbose=False: the context-window check below gives the useful error.
            ids = self.tokenizer.encode(prompt, add_special_tokens=False, verbose=False)
        else:
            ids = [int(i) for i in prompt]
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise ValueError(
                    f"prompt {index} holds token ids outside the vocabulary "
                    f"(0..{self.vocab_size - 1}): {bad[:5]}"
                )
        if not ids:
            raise ValueError(f"prompt {index} is empty")
        return ids

    def _plan(
        self, encoded: list[list[int]], params: SamplingParams, stream: bool
    ) -> list[_Sequence]:
        """One row per sample, each with its token budget inside the context window."""
        needs_text = stream or bool(params.stop_strings)
        rows = []
        for index, ids in enumerate(encoded):
            room = self.context_window - len(ids)
            if room <= 0:
                raise ValueError(
                    f"prompt {index} is {len(ids)} tokens long; the model's context window is "
                    f"{self.context_window} tokens, which leaves no room to generate: shorten "
                    "the prompt"
                )
            for sample in range(params.n):
                detok = _IncrementalText(self.tokenizer) if needs_text else None
                budget = min(params.max_new_tokens, room)
                rows.append(_Sequence(index, sample, len(ids), budget, detok))
        return rows

    def _llama_path_usable(self) -> bool:
        """Whether this call may run the Llama decoding path (checked per call: hooks added
        after the engine was made count too)."""
        return self._llama is not None and not _hooked(self.model)

    def _batch(self, encoded: list[list[int]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` (B, T), each prompt ``n`` times."""
        import torch

        length = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, prompt in enumerate(encoded):
            ids[row, length - len(prompt) :] = torch.tensor(prompt)
            mask[row, length - len(prompt) :] = 1
        # (P, T) → (P * n, T): the n samples of a prompt are adjacent rows.
        return (
            ids.repeat_interleave(n, dim=0).to(self.device),
            mask.repeat_interleave(n, dim=0).to(self.device),
        )

    def _generator(self, seed: int | None) -> torch.Generator:
        import torch

        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()  # fresh entropy, independent of the global RNG
        else:
            generator.manual_seed(seed)
        return generator

    # -- the decoding loop ------------------------------------------------------------------

    def _run(
        self,
        rows: list[_Sequence],
        encoded: list[list[int]],
        params: SamplingParams,
        on_token: Callable[[TokenEvent], None] | None,
        should_stop: Callable[[], bool],
    ) -> None:
        import torch

        generator = None if params.temperature == 0 else self._generator(params.seed)
        sampler = _Sampler(params, generator, self.vocab_size)
        stops = _StopStrings(params.stop_strings)
        stop_ids = frozenset(params.stop_token_ids) - self.eos_ids
        input_ids, prompt_mask = self._batch(encoded, params.n)
        decoder_type = _LlamaDecoder if self._llama_path_usable() else _Decoder
        decoder = decoder_type(self, input_ids, prompt_mask, max(row.budget for row in rows))
        active = torch.ones(len(rows), dtype=torch.bool, device=self.device)  # (B,)
        some_finished = False

        if should_stop():
            return self._stop_all(rows)
        logits = decoder.prefill()
        while True:
            next_ids, logprobs, alt_ids, alt_probs = sampler(logits)
            # One transfer per step for everything the host needs.
            host_ids, host_logprobs = next_ids.tolist(), logprobs.tolist()
            host_alts = None if alt_ids is None else (alt_ids.tolist(), alt_probs.tolist())
            now = time.perf_counter()
            for r, row in enumerate(rows):
                if row.finish_reason is not None:
                    continue
                alternatives = None if host_alts is None else self._alternatives(host_alts, r)
                token_id, logprob = host_ids[r], host_logprobs[r]
                row.record(token_id, logprob, alternatives, now)
                delta = self._advance(row, token_id, stop_ids, stops, now)
                if row.finish_reason is not None:
                    active[r], some_finished = False, True
                if on_token is not None:
                    event = TokenEvent(
                        index=r,
                        prompt_index=row.prompt_index,
                        sample_index=row.sample_index,
                        token_id=token_id,
                        text=delta,
                        logprob=logprob,
                        alternatives=alternatives,
                    )
                    on_token(event)
            if all(row.finish_reason is not None for row in rows):
                return
            if should_stop():
                return self._stop_all(rows)
            if some_finished:  # fed padding: their logits are computed and ignored
                next_ids = next_ids.masked_fill(~active, self.pad_id)
            logits = decoder.step(next_ids)

    def _advance(
        self,
        row: _Sequence,
        token_id: int,
        stop_ids: frozenset[int],
        stops: _StopStrings,
        now: float,
    ) -> str:
        """Apply the token just recorded to ``row``'s text and state; return the text it
        releases for streaming."""
        if token_id in self.eos_ids:
            return self._finish(row, "eos", now)
        if token_id in stop_ids:
            return self._finish(row, "stop", now)
        cut = None
        if row.detok is not None:
            old_length = len(row.detok.text)
            row.detok.add(token_id)
            # Earlier text was checked at earlier steps: a new match ends in the new text.
            cut = stops.find(row.detok.text, old_length) if stops.strings else None
        if cut is not None:
            return self._finish(row, "stop", now, cut=cut)
        if len(row.ids) >= row.budget:
            return self._finish(row, "length", now)
        if row.detok is None:
            return ""
        # Keep back an end that may still become a stop string (it would have to be unsaid).
        safe = len(row.detok.text) - stops.holdback(row.detok.text)
        delta = row.detok.text[row.emitted : safe]
        row.emitted += len(delta)
        return delta

    def _finish(
        self, row: _Sequence, reason: FinishReason, now: float, cut: int | None = None
    ) -> str:
        """End ``row``: settle its final text and return the part not streamed yet."""
        row.finish_reason, row.finished_at = reason, now
        row.text = self._final_text(row, cut)
        rest = row.text[row.emitted :]
        row.emitted = len(row.text)
        return rest

    def _final_text(self, row: _Sequence, cut: int | None) -> str:
        """The completion's text: up to a stop string, without an eos or stop token."""
        if row.detok is not None:  # the ending token was never added to it
            if cut is not None:
                return row.detok.text[:cut]
            if row.finish_reason == "stopped":
                # No token event is left to carry held-back text: keep what was released.
                return row.detok.text[: row.emitted]
            row.detok.flush()
            return row.detok.text
        ended_by_token = row.finish_reason in ("eos", "stop")
        ids = row.ids[:-1] if ended_by_token else row.ids
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _stop_all(self, rows: list[_Sequence]) -> None:
        now = time.perf_counter()
        for row in rows:
            if row.finish_reason is None:
                self._finish(row, "stopped", now)

    def _alternatives(self, host_alts: tuple[list[list[int]], list[list[float]]], r: int):
        ids, probs = host_alts[0][r], host_alts[1][r]
        return [(self._piece(i), p) for i, p in zip(ids, probs, strict=True)]

    def _piece(self, token_id: int) -> str:
        if token_id not in self._pieces:
            self._pieces[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._pieces[token_id]

    def _forward_one(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """One decode step: ``tokens`` and ``positions`` (B, 1) → next-token logits (B, V)."""
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1].float()


def _never() -> bool:
    return False


def _generation_eos(model: PreTrainedModel) -> set[int]:
    """The model's own end-of-sequence ids (``model.generate`` stops at them too)."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def _check_compilable(model: PreTrainedModel) -> None:
    from transformers import StaticCache

    name = type(model).__name__
    if not getattr(model, "_can_compile_fullgraph", False):
        raise ValueError(f"{name} does not support a static cache: use compile=False")
    # A static sliding-window layer tracks its fill level in a Python int, so a compiled step
    # would be recompiled at every token.
    if any(StaticCache(config=model.config, max_cache_len=1).is_sliding):
        raise ValueError(f"{name} has sliding-window layers: use compile=False")


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype in named:
        return named[dtype]
    if dtype != "auto":
        raise ValueError(f"unknown dtype {dtype!r} (expected auto, fp32, bf16 or fp16)")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _compile_options(device: torch.device) -> dict[str, Any]:
    # CUDA graphs remove the per-kernel launch cost that dominates small models on a GPU. On a
    # CPU, a C++ wrapper around inductor's kernels saves the Python one: +15 % tokens/s for the
    # benchmark's 4M-parameter Llama (compiling takes about twice as long).
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}
    return {"options": {"cpp_wrapper": True}}
