"""The ``tokenizer`` stage: train a byte-level BPE tokenizer with Orchard's special tokens.

Input: ``inputs["corpus"]``, a list of corpus files (``.txt``, ``.jsonl``, optionally ``.gz``; see
:mod:`training.core.corpus`). Every 100th document (up to about 1 MB) is held out and used to
measure how well the trained tokenizer compresses unseen text.

Output in ``out_dir``: a transformers v5 tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja``) that ``AutoTokenizer.from_pretrained(out_dir)`` loads, plus
``orchard.json`` (``{"kind": "tokenizer", "config": ..., "stats": ...}``).

Vocabulary layout: ids 0-3 are ``SPECIAL_TOKENS``, 4-7 ``TOOL_TOKENS``, then
``num_reserved_tokens`` tokens ``<|reserved_N|>`` for later use without resizing a model; the
256 byte tokens and the learned merges follow. The chat template is ChatML with
``{% generation %}`` markers around what the assistant writes, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` and TRL's ``assistant_only_loss``
train on exactly those tokens.

From the shell::

    python -m training.core tokenizer --config cfg.json \\
        --input corpus=data/a.txt --input corpus=data/b.jsonl.gz --out out/tokenizer

Simplifications:

- Training is in memory, like every ``tokenizers`` trainer: word counts for a very large corpus
  need a lot of RAM; ``max_corpus_mb`` caps how much is read.
- Cancelling is checked while the corpus is read. The merge computation that follows runs inside
  the Rust trainer and cannot be interrupted; it is short next to reading on realistic corpora.
- Every special token, including the tool tokens, is a *special* token in the transformers sense:
  ``decode(..., skip_special_tokens=True)`` drops them, so tool-call parsing must decode without it.
- No normaliser: text is tokenised exactly as written (byte-level, lossless).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from training.core.corpus import (
    CorpusError,
    corpus_format,
    iter_documents_with_offsets,
    stored_size,
)
from training.core.reporting import Cancelled, Reporter

if TYPE_CHECKING:  # transformers takes seconds to import: only inside run(), never for the config
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<|tool_call|>", "<|/tool_call|>", "<|tool_result|>", "<|/tool_result|>"]
BOS_TOKEN, PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|pad|>", "<|im_end|>"
BYTE_ALPHABET_SIZE = 256

# ChatML. What the assistant writes (its text, any tool calls, and the <|im_end|> that ends its
# turn) sits inside {% generation %} so the assistant-token mask covers exactly that. Tool results
# come back in a "tool" turn wrapped in <|tool_result|> ... <|/tool_result|>.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}"
    "{{- message['content'] or '' }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '<|tool_call|>' + {'name': fn['name'], 'arguments': fn['arguments']} | tojson"
    " + '<|/tool_call|>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|tool_result|>' + message['content'] + '<|/tool_result|><|im_end|>' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' }}"
    "{%- endif %}"
    "{{- '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

HOLD_OUT_EVERY = 100  # every 100th document is held out for evaluation ...
HOLD_OUT_MAX_BYTES = 1_000_000  # ... until about 1 MB of them is collected
BATCH_DOCUMENTS = 1000  # documents handed to the Rust trainer at a time
BATCH_CHARS = 4_000_000
HISTOGRAM_MAX_LENGTH = 16

CHAT_SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5."},
]


def reserved_tokens(count: int) -> list[str]:
    return [f"<|reserved_{i}|>" for i in range(count)]


def all_special_tokens(num_reserved_tokens: int) -> list[str]:
    """Every special token in id order: they take ids 0 .. len - 1."""
    return SPECIAL_TOKENS + TOOL_TOKENS + reserved_tokens(num_reserved_tokens)


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(
        8192,
        ge=512,
        le=262144,
        description=(
            "Total number of tokens, including the 256 byte tokens and the special tokens. "
            "Larger vocabularies compress text better but need a bigger embedding table."
        ),
    )
    min_frequency: int = Field(
        2,
        ge=1,
        le=1000,
        description="A pair of tokens must occur at least this often to be merged.",
    )
    num_reserved_tokens: int = Field(
        8,
        ge=0,
        le=256,
        description=(
            "Unused special tokens <|reserved_N|> kept for later stages, so new control tokens "
            "need no change to the model's embedding size."
        ),
    )
    model_max_length: int = Field(
        2048,
        ge=16,
        le=1048576,
        description="Longest sequence (in tokens) models using this tokenizer are meant for.",
    )
    max_corpus_mb: int = Field(
        0,
        ge=0,
        le=1000000,
        description=(
            "Stop reading the corpus after this many megabytes of files (compressed size for "
            ".gz); 0 reads everything."
        ),
    )
    sample_text: str = Field(
        "The quick brown fox didn't jump over the 3 lazy dogs.",
        max_length=2000,
        description="Text shown split into tokens on the run page.",
    )

    @model_validator(mode="after")
    def _vocab_fits_fixed_tokens(self) -> TokenizerConfig:
        fixed = BYTE_ALPHABET_SIZE + len(all_special_tokens(self.num_reserved_tokens))
        if self.vocab_size > fixed:
            return self
        # Raised as a ValidationError located at vocab_size (a plain ValueError here would have
        # no field), so a web form shows the message next to the field.
        problem = PydanticCustomError(
            "vocab_too_small",
            "vocab_size must be greater than {fixed} (256 byte tokens + {special} special, tool "
            "and reserved tokens) to leave room for merges",
            {"fixed": fixed, "special": fixed - BYTE_ALPHABET_SIZE},
        )
        raise ValidationError.from_exception_data(
            type(self).__name__,
            [InitErrorDetails(type=problem, loc=("vocab_size",), input=self.vocab_size)],
        )


def run(
    cfg: TokenizerConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
    progress_interval: float = 0.25,
) -> dict[str, Any]:
    """Train, save and check the tokenizer; return JSON-serialisable statistics.

    ``work_dir`` is accepted for the common stage signature and not used: training is a single
    pass with nothing to resume. ``progress_interval`` (seconds) paces progress reports and cancel
    checks; tests shorten it.
    """
    paths = _corpus_paths(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    feed = _DocumentFeed(paths, cfg.max_corpus_mb * 1_000_000, reporter, progress_interval)
    reporter.log(
        f"training a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on {len(paths)} file(s), "
        f"{feed.total_bytes / 1e6:.1f} MB"
    )
    started = time.monotonic()
    backend = _train(cfg, feed)
    if feed.documents == 0:
        raise CorpusError("the corpus contains no documents")
    if reporter.should_stop():  # a cancel that arrived during the merge computation
        raise Cancelled()
    reporter.log(
        f"learned {backend.get_vocab_size()} tokens from {feed.documents} documents "
        f"in {time.monotonic() - started:.1f} s"
    )

    _save(backend, cfg, out_dir)
    tok = _reload_and_check(out_dir, cfg.num_reserved_tokens)

    eval_source = "held_out" if feed.held_out else "training_sample"
    eval_docs = feed.held_out or feed.train_sample
    compression = _compression(tok, eval_docs)
    reporter.metrics(compression, step=feed.bytes_done)

    result: dict[str, Any] = {
        "vocab_size": len(tok),
        "num_merges": _num_merges(backend),
        "documents": feed.documents,
        "bytes_read": feed.bytes_done,
        "eval_source": eval_source,
        "eval_documents": len(eval_docs),
        **compression,
        "special_tokens": {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + TOOL_TOKENS},
        **_vocab_stats(tok),
        "sample": {"text": cfg.sample_text, "tokens": _pieces(tok, tok.encode(cfg.sample_text))},
        "chat_sample": _chat_sample(tok),
    }
    if result["vocab_size"] < cfg.vocab_size:
        reporter.log(
            f"the corpus only supports {result['vocab_size']} tokens (asked for {cfg.vocab_size}):"
            f" no remaining pair occurs {cfg.min_frequency} times or more"
        )
    # orchard.json is written last: its presence means the folder is complete.
    manifest = {"kind": "tokenizer", "config": cfg.model_dump(), "stats": result}
    (out_dir / "orchard.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return result


def _corpus_paths(inputs: dict[str, list[Path]]) -> list[Path]:
    paths = [Path(p) for p in inputs.get("corpus") or []]
    if not paths:
        raise CorpusError('the tokenizer needs at least one corpus file as input "corpus"')
    for path in paths:
        corpus_format(path)  # refuse unsupported files before spending time on the others
        if not path.exists():
            raise CorpusError(f"corpus not found: {path}")
    return paths


class _DocumentFeed:
    """Documents from all corpus files, in batches for the Rust trainer.

    While the trainer pulls batches, this reports progress (bytes of the stored files read), checks
    for cancellation, holds out evaluation documents and stops at the byte budget.
    """

    def __init__(
        self, paths: list[Path], budget_bytes: int, reporter: Reporter, interval: float
    ) -> None:
        self.paths = paths
        self.reporter = reporter
        self.interval = interval
        sizes = sum(stored_size(p) for p in paths)
        self.budget_bytes = budget_bytes
        self.total_bytes = min(sizes, budget_bytes) if budget_bytes else sizes
        self.bytes_done = 0
        self.documents = 0
        self.held_out: list[str] = []
        self.held_out_bytes = 0
        self.train_sample: list[str] = []  # the first training documents, if nothing is held out
        self.train_sample_bytes = 0
        self._last_tick = float("-inf")

    def batches(self) -> Iterator[list[str]]:
        batch: list[str] = []
        chars = 0
        for text in self._training_documents():
            batch.append(text)
            chars += len(text)
            if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
        if batch:
            yield batch
        # Reading is done; the trainer now computes merges, which reports nothing until it ends.
        self.reporter.progress(self.total_bytes, self.total_bytes, "corpus read, computing merges")

    def _training_documents(self) -> Iterator[str]:
        for path in self.paths:
            done_before = self.bytes_done
            for text, offset in iter_documents_with_offsets(path):
                self.bytes_done = done_before + offset
                self.documents += 1
                self._tick()
                if not self._hold_out(text):
                    self._keep_sample(text)
                    yield text
                if self.budget_bytes and self.bytes_done >= self.budget_bytes:
                    return
            self.bytes_done = done_before + stored_size(path)

    def _tick(self) -> None:
        """Report progress and honour a cancel at most every ``interval`` seconds."""
        now = time.monotonic()
        if now - self._last_tick < self.interval:
            return
        self._last_tick = now
        done_mb, total_mb = self.bytes_done / 1e6, self.total_bytes / 1e6
        self.reporter.progress(
            min(self.bytes_done, self.total_bytes),
            self.total_bytes,
            f"read {done_mb:.1f} of {total_mb:.1f} MB ({self.documents} documents)",
        )
        if self.reporter.should_stop():
            # The Rust trainer is pulling from this generator; raising is the only way out,
            # and the exception reaches run()'s caller unchanged.
            raise Cancelled()

    def _hold_out(self, text: str) -> bool:
        if self.documents % HOLD_OUT_EVERY or self.held_out_bytes >= HOLD_OUT_MAX_BYTES:
            return False
        self.held_out.append(text)
        self.held_out_bytes += len(text.encode())
        return True

    def _keep_sample(self, text: str) -> None:
        if self.train_sample_bytes < HOLD_OUT_MAX_BYTES:
            self.train_sample.append(text)
            self.train_sample_bytes += len(text.encode())


def _train(cfg: TokenizerConfig, feed: _DocumentFeed) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # Byte-level BPE as in GPT-2: any string maps to tokens without <unk>, and decoding is
    # lossless. No prefix space: ChatML puts text right after a newline.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=all_special_tokens(cfg.num_reserved_tokens),  # ids 0.. in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(feed.batches(), trainer=trainer)
    return tok


def _save(backend: Tokenizer, cfg: TokenizerConfig, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,  # generation stops at the end of the assistant's turn
        pad_token=PAD_TOKEN,  # distinct from eos: sequence classifiers pool the last non-pad token
        unk_token=None,  # byte-level: nothing is unknown
        additional_special_tokens=["<|im_start|>"]
        + TOOL_TOKENS
        + reserved_tokens(cfg.num_reserved_tokens),
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.model_max_length = cfg.model_max_length
    hf.save_pretrained(out_dir)


def _reload_and_check(out_dir: Path, num_reserved_tokens: int) -> PreTrainedTokenizerBase:
    """Load the saved folder the way every later stage will, and check the special tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    for expected_id, token in enumerate(all_special_tokens(num_reserved_tokens)):
        ids = tok.encode(token, add_special_tokens=False)
        if ids != [expected_id]:
            raise RuntimeError(f"special token {token} encodes to {ids}, expected [{expected_id}]")
    return tok


def _compression(tok: PreTrainedTokenizerBase, docs: list[str]) -> dict[str, float]:
    encoded = tok(docs, add_special_tokens=False)["input_ids"]
    tokens = max(1, sum(len(ids) for ids in encoded))
    return {
        "bytes_per_token": sum(len(d.encode()) for d in docs) / tokens,
        "chars_per_token": sum(len(d) for d in docs) / tokens,
    }


def _num_merges(backend: Tokenizer) -> int:
    return len(json.loads(backend.to_str())["model"]["merges"])


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: which byte each vocabulary character stands for.

    Printable Latin-1 bytes stand for themselves; the other bytes are shifted to code points from
    256 upwards so that every token is a readable string.
    """
    byte_values = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    byte_values += range(ord("®"), ord("ÿ") + 1)
    code_points = list(byte_values)
    shifted = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(byte_values, code_points, strict=True)}


def token_bytes(token: str) -> bytes:
    return bytes(_byte_decoder()[ch] for ch in token)


def display_piece(raw: bytes) -> str:
    """A token as text; a token holding part of a multi-byte character shows its bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in raw)


def _vocab_stats(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The longest learned tokens and how many tokens have each length (in bytes)."""
    special = set(tok.all_special_tokens)
    learned = [token_bytes(t) for t in tok.get_vocab() if t not in special]
    lengths = Counter(min(len(raw), HISTOGRAM_MAX_LENGTH) for raw in learned)
    histogram = {str(n): lengths[n] for n in range(1, HISTOGRAM_MAX_LENGTH)}
    histogram[f"{HISTOGRAM_MAX_LENGTH}+"] = lengths[HISTOGRAM_MAX_LENGTH]
    longest = sorted(learned, key=lambda raw: (-len(raw), raw))[:10]
    return {
        "longest_tokens": [display_piece(raw) for raw in longest],
        "token_length_histogram": histogram,
    }


def _pieces(tok: PreTrainedTokenizerBase, ids: list[int]) -> list[list[Any]]:
    """``[piece, id]`` for each token id, the piece as the text it stands for."""
    special = set(tok.all_special_tokens)
    pieces = []
    for token, token_id in zip(tok.convert_ids_to_tokens(ids), ids, strict=True):
        pieces.append([token if token in special else display_piece(token_bytes(token)), token_id])
    return pieces


def _chat_sample(tok: PreTrainedTokenizerBase) -> dict[str, Any]:
    text = tok.apply_chat_template(CHAT_SAMPLE, tokenize=False)
    enc = tok.apply_chat_template(
        CHAT_SAMPLE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    pieces = _pieces(tok, enc["input_ids"])
    return {
        "text": text,
        "tokens": [
            [p, i, bool(m)] for (p, i), m in zip(pieces, enc["assistant_masks"], strict=True)
        ],
    }
