"""``python -m training.core.bench generate``: the Engine against ``model.generate``.

Batch-1 generation speed of :class:`training.core.generate.Engine` and of transformers'
``model.generate`` on the same randomly initialised ~4M-parameter Llama (hidden 256, 4 layers,
4 heads, vocab 4096, fixed seed; nothing is downloaded), greedy and sampled with the same
settings, measured in the same process with the runs interleaved so that noise from other
processes hits all of them alike. Figures are medians over ``--repeats`` runs:

- ``tokens_per_s``: generated tokens / wall-clock seconds of the whole call (prefill included);
- ``ttft_s``: seconds from the call to the first generated token (for ``model.generate``, taken
  by a streamer at its first ``put`` after the prompt's);
- ``speedup``: Engine tokens/s over ``model.generate`` tokens/s (issue goal: at least 2).

The Engine runs eagerly (for this Llama, its Llama decoding path: the layers run directly over
preallocated key and value buffers) and, unless ``--quick`` or ``--no-compile``, compiled
(``StaticCache`` + ``torch.compile``; the one-off compile time is reported apart and not counted
in the runs). Both sides get the same checkpoint, prompt, number of new tokens, dtype, thread
count and sampling settings. Greedy outputs are also compared token for token with
``model.generate``.

Options: ``--quick`` (32 new tokens, 3 repeats, no compile: a smoke run of about 10 s),
``--new-tokens N``, ``--prompt-tokens N``, ``--repeats N``, ``--no-compile``, ``--device D``,
``--threads N`` (a model this small runs as fast on one CPU thread, and one thread is far less
disturbed by other processes on a small shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from training.core.generate import Engine, SamplingParams

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

HIDDEN, LAYERS, HEADS, VOCAB = 256, 4, 4, 4096
INTERMEDIATE = 704  # about 8/3 of hidden, rounded to a multiple of 64, as in Llama
CONTEXT = 1024
SEED = 0
SAMPLED = {"temperature": 0.8, "top_p": 0.9, "top_k": 0}
SPECIAL = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]  # ids 0..3, as Orchard's


def main(argv: list[str]) -> dict[str, Any]:
    args = _parse(argv)
    import torch
    from transformers.utils import logging

    logging.set_verbosity_error()  # generate() warns about settings we chose on purpose
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model, tokenizer = _model(args.device), _tokenizer()
    prompt = torch.randint(len(SPECIAL), VOCAB, (args.prompt_tokens,), generator=_gen(SEED))
    prompt_ids = prompt.tolist()

    variants: dict[str, Callable[[], tuple[list[int], float, float]]] = {}
    for mode in ("greedy", "sampled"):
        variants[f"reference_{mode}"] = _reference(model, tokenizer, prompt, mode, args.new_tokens)
    engines = {"engine": Engine(model, tokenizer)}
    compile_s = None
    if args.compile:
        started = time.perf_counter()
        engines["engine_compiled"] = compiled = Engine(model, tokenizer, compile=True)
        _engine_run(compiled, prompt_ids, "greedy", args.new_tokens)()  # compiles the step
        compile_s = time.perf_counter() - started
    for name, engine in engines.items():
        for mode in ("greedy", "sampled"):
            variants[f"{name}_{mode}"] = _engine_run(engine, prompt_ids, mode, args.new_tokens)

    runs = _measure(variants, args.repeats)
    return _report(args, model, runs, engines, compile_s)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.core.bench generate")
    parser.add_argument("--quick", action="store_true", help="short smoke run, no compile")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.new_tokens, args.repeats, args.compile = 32, 3, False
    return args


def _gen(seed: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(seed)


def _model(device: str) -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config).to(device).eval()


def _tokenizer() -> PreTrainedTokenizerBase:
    """A word-level tokenizer over the model's 4096 ids: the bench feeds and compares ids, and
    only needs eos, padding and decoding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL[0], pad_token=SPECIAL[1], eos_token=SPECIAL[3]
    )


def _reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: torch.Tensor,
    mode: str,
    new_tokens: int,
) -> Callable[[], tuple[list[int], float, float]]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstTokenClock(BaseStreamer):
        """generate() puts the prompt first, then each new token: time the second put."""

        def __init__(self) -> None:
            self.puts = 0
            self.first_at: float | None = None

        def put(self, value: torch.Tensor) -> None:
            self.puts += 1
            if self.puts == 2:
                self.first_at = time.perf_counter()

        def end(self) -> None:
            pass

    input_ids = prompt[None].to(model.device)  # (1, T)
    sampling = {"do_sample": True, **SAMPLED} if mode == "sampled" else {"do_sample": False}

    def run() -> tuple[list[int], float, float]:
        clock = FirstTokenClock()
        torch.manual_seed(SEED)  # generate() samples from the global generator
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                streamer=clock,
                **sampling,
            )
        elapsed = time.perf_counter() - started
        tokens = out[0, input_ids.shape[1] :].tolist()
        return tokens, elapsed, (clock.first_at or started) - started

    return run


def _engine_run(
    engine: Engine, prompt_ids: list[int], mode: str, new_tokens: int
) -> Callable[[], tuple[list[int], float, float]]:
    sampling = {**SAMPLED, "seed": SEED} if mode == "sampled" else {"temperature": 0.0}
    params = SamplingParams(max_new_tokens=new_tokens, **sampling)

    def run() -> tuple[list[int], float, float]:
        started = time.perf_counter()
        [completion] = engine.generate([prompt_ids], params)
        elapsed = time.perf_counter() - started
        return completion.token_ids, elapsed, completion.time_to_first_token or elapsed

    return run


def _measure(
    variants: dict[str, Callable[[], tuple[list[int], float, float]]], repeats: int
) -> dict[str, list[tuple[list[int], float, float]]]:
    """Every variant once as warm-up, then ``repeats`` rounds with the variants interleaved."""
    for run in variants.values():
        run()
    runs: dict[str, list[tuple[list[int], float, float]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            runs[name].append(run())
    return runs


def _summary(results: list[tuple[list[int], float, float]]) -> dict[str, float]:
    return {
        "tokens_per_s": statistics.median(len(tokens) / elapsed for tokens, elapsed, _ in results),
        "ttft_s": statistics.median(ttft for _, _, ttft in results),
        "new_tokens": statistics.median(len(tokens) for tokens, _, _ in results),
    }


def _report(
    args: argparse.Namespace,
    model: PreTrainedModel,
    runs: dict[str, list[tuple[list[int], float, float]]],
    engines: dict[str, Engine],
    compile_s: float | None,
) -> dict[str, Any]:
    import torch

    summary = {name: _summary(results) for name, results in runs.items()}
    speedup, greedy_match = {}, {}
    for name in engines:
        for mode in ("greedy", "sampled"):
            ours = summary[f"{name}_{mode}"]["tokens_per_s"]
            speedup[f"{name}_{mode}"] = ours / summary[f"reference_{mode}"]["tokens_per_s"]
        greedy_match[name] = runs[f"{name}_greedy"][0][0] == runs["reference_greedy"][0][0]
    return {
        "benchmark": "generate",
        "model": {
            "architecture": "LlamaForCausalLM",
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden": HIDDEN,
            "layers": LAYERS,
            "heads": HEADS,
            "vocab": VOCAB,
        },
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "batch": 1,
        "prompt_tokens": args.prompt_tokens,
        "max_new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "sampled_settings": SAMPLED,
        "results": summary,
        "speedup": speedup,
        "goal": "speedup >= 2 (issue goal)",
        "greedy_tokens_match_reference": greedy_match,
        "compile_s": compile_s,
        "compiled": "measured" if args.compile else "skipped (--quick or --no-compile)",
    }
