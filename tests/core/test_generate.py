"""The generation engine on a tiny Llama and a tokenizer trained on a slice of Tiny Shakespeare.

The reference throughout is transformers' own ``model.generate``: greedy decoding with the
engine's hand-written KV cache must give the same tokens.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from tests.support.data import SHARED_DATA
from training.core.generate import (
    Completion,
    Engine,
    SamplingParams,
    TokenEvent,
    _Sampler,
    chat_prompt,
)
from training.core.reporting import RecordingReporter
from training.core.tokenizer import TokenizerConfig, run

SHAKESPEARE = SHARED_DATA / "pretrain" / "tinyshakespeare.txt"
REPO = Path(__file__).resolve().parents[2]
WINDOW = 128
EOS, PAD = 3, 1
PROMPTS = [
    "ROMEO:\nBut soft, what light",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "O",
]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)


class Checkpoint(NamedTuple):
    path: Path
    engine: Engine


def tiny_llama(vocab_size: int, **overrides: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in current models
        max_position_embeddings=WINDOW,
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        # Wider than the default 0.02: greedy text varies instead of repeating one token.
        initializer_range=0.2,
        bos_token_id=0,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    return LlamaForCausalLM(LlamaConfig(**{**settings, **overrides})).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine a busy
    neighbour makes two spinning threads many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not available")
    root = tmp_path_factory.mktemp("generate")
    corpus = root / "shakespeare.txt"
    with open(SHAKESPEARE, "rb") as fh:
        corpus.write_bytes(fh.read(200_000))
    cfg = TokenizerConfig(vocab_size=1024, num_reserved_tokens=0, model_max_length=WINDOW)
    run(cfg, {"corpus": [corpus]}, root / "model", RecordingReporter())

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tiny_llama(len(tokenizer)).save_pretrained(root / "model")
    return Checkpoint(root / "model", Engine.load(root / "model", device="cpu"))


@pytest.fixture(scope="module")
def engine(checkpoint: Checkpoint) -> Engine:
    return checkpoint.engine


def reference_greedy(engine: Engine, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """``model.generate`` on a left-padded batch; each row cut after its first eos."""
    import torch

    tokenizer = copy.copy(engine.tokenizer)
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = engine.model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    rows = out[:, enc["input_ids"].shape[1] :].tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows]


def streamed(
    engine: Engine, prompts: list[Any], params: SamplingParams, **kwargs: Any
) -> tuple[list[Completion], list[TokenEvent]]:
    events: list[TokenEvent] = []
    return engine.generate(prompts, params, on_token=events.append, **kwargs), events


def joined(events: list[TokenEvent], index: int) -> str:
    return "".join(event.text for event in events if event.index == index)


# -- loading ---------------------------------------------------------------------------------


def test_load_gives_an_eval_model_and_the_tokenizers_special_ids(engine: Engine) -> None:
    assert not engine.model.training
    assert engine.context_window == WINDOW
    assert EOS in engine.eos_ids
    assert engine.pad_id == PAD


def test_load_in_bf16(checkpoint: Checkpoint) -> None:
    import torch

    half = Engine.load(checkpoint.path, device="cpu", dtype="bf16")
    assert half.model.dtype == torch.bfloat16
    [completion] = half.generate([PROMPTS[0]], GREEDY)
    assert len(completion.token_ids) == 24 and all(lp <= 0 for lp in completion.logprobs)
    with pytest.raises(ValueError, match="unknown dtype"):
        Engine.load(checkpoint.path, device="cpu", dtype="int8")  # type: ignore[arg-type]


def test_load_refuses_a_folder_without_safetensors(checkpoint: Checkpoint, tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((checkpoint.path / name).read_bytes())
    torch.save(checkpoint.engine.model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Engine.load(folder, device="cpu")
    with pytest.raises(FileNotFoundError, match="not found"):
        Engine.load(tmp_path / "missing", device="cpu")


def test_importing_the_module_loads_no_ml_stack() -> None:
    code = (
        "import json, sys\n"
        "import training.core.generate as g\n"
        "g.SamplingParams(max_new_tokens=5)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if m.split(".")[0] in {"torch", "transformers"}] == []


# -- greedy decoding equals transformers -------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers_for_one_prompt(engine: Engine, prompt: str) -> None:
    [completion] = engine.generate([prompt], GREEDY)
    assert completion.token_ids == reference_greedy(engine, [prompt], 24)[0]
    assert completion.finish_reason == "length"
    assert completion.text == engine.tokenizer.decode(completion.token_ids)
    assert len(completion.logprobs) == 24


def test_greedy_matches_transformers_for_a_left_padded_batch(engine: Engine) -> None:
    lengths = [len(engine.tokenizer.encode(p)) for p in PROMPTS]
    assert len(set(lengths)) == len(PROMPTS)  # really different lengths, so padding matters
    completions = engine.generate(PROMPTS, GREEDY.model_copy(update={"n": 2}))
    expected = reference_greedy(engine, PROMPTS, 24)
    assert [(c.prompt_index, c.sample_index) for c in completions] == [
        (p, s) for p in range(3) for s in range(2)
    ]
    assert [c.token_ids for c in completions] == [ids for ids in expected for _ in range(2)]
    # Padding changes nothing: each row equals its prompt run alone.
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    assert alone == expected


def test_static_cache_path_matches_transformers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compile=True runs a StaticCache with a power-of-two length and a full-length mask;
    the compiler itself is replaced here (compiling takes tens of seconds on CPU) and measured
    by ``python -m training.core.bench generate``."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    static = Engine(engine.model, engine.tokenizer, compile=True)
    completions = static.generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in completions] == reference_greedy(engine, PROMPTS, 24)


def test_sliding_window_model_matches_transformers(engine: Engine) -> None:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=WINDOW,
        sliding_window=8,  # shorter than prompt + generation, so the window matters
        vocab_size=len(engine.tokenizer),
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    mistral = Engine(MistralForCausalLM(config).eval(), engine.tokenizer)
    assert mistral._llama is None  # the generic path: the model's own forward at every step
    completions = mistral.generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in completions] == reference_greedy(mistral, PROMPTS, 24)
    with pytest.raises(ValueError, match="sliding-window"):
        Engine(mistral.model, engine.tokenizer, compile=True)


# -- the Llama decoding path -----------------------------------------------------------------

LLAMA_VARIANTS = ["gqa", "mha", "bias", "eager", "bf16", "llama3", "lora"]


def llama_variant(engine: Engine, kind: str) -> Engine:
    """An engine on the checkpoint's tokenizer whose tiny Llama takes another branch of the
    Llama decoding path."""
    import torch

    vocab = len(engine.tokenizer)
    if kind == "gqa":  # grouped heads, through transformers' sdpa
        model = tiny_llama(vocab)
    elif kind == "mha":  # no grouped heads: torch's sdpa is called directly
        model = tiny_llama(vocab, num_key_value_heads=4)
    elif kind == "bias":  # linear layers with biases
        model = tiny_llama(vocab, num_key_value_heads=4, attention_bias=True, mlp_bias=True)
    elif kind == "eager":  # transformers' eager attention, with an additive padding mask
        model = tiny_llama(vocab)
        model.set_attn_implementation("eager")
    elif kind == "bf16":  # RMSNorm runs as the module: it rounds between its products
        model = tiny_llama(vocab).to(torch.bfloat16)
    elif kind == "llama3":  # a rope type other than the default one
        rope = {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
        model = tiny_llama(vocab, rope_parameters=rope)
    elif kind == "lora":  # PEFT's LoRA layers replace the linear ones and run as modules
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        model = get_peft_model(tiny_llama(vocab), config)
    else:
        raise AssertionError(kind)
    return Engine(randomize_norms_and_biases(model).eval(), engine.tokenizer)


def randomize_norms_and_biases(model: Any) -> Any:
    """Models start with RMSNorm weights of one and biases of zero, which would hide a product
    or a sum computed in another order: give them values."""
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator).to(param.dtype)
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
    return model


def generic(engine: Engine) -> Engine:
    """The same model through the generic decoder: the model's own forward at every step."""
    other = Engine(engine.model, engine.tokenizer)
    other._llama = None
    return other


@pytest.mark.parametrize("kind", LLAMA_VARIANTS)
def test_llama_path_gives_the_generic_paths_numbers_bit_for_bit(engine: Engine, kind: str) -> None:
    """The same tokens, log-probabilities and top-5 probabilities as the model's own forward,
    for one prompt and for a left-padded batch, greedy and sampled: the logits are equal, not
    just close."""
    fast = llama_variant(engine, kind)
    assert fast._llama is not None
    slow = generic(fast)
    sampled = SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_new_tokens=24)
    for params in (GREEDY, sampled):
        params = params.model_copy(update={"n": 2, "return_top_logprobs": 5})
        for prompts in ([PROMPTS[1]], PROMPTS):
            ours, theirs = fast.generate(prompts, params), slow.generate(prompts, params)
            assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
            assert [c.logprobs for c in ours] == [c.logprobs for c in theirs]
            assert [c.alternatives for c in ours] == [c.alternatives for c in theirs]


@pytest.mark.parametrize("kind", LLAMA_VARIANTS)
def test_llama_path_greedy_matches_transformers(engine: Engine, kind: str) -> None:
    fast = llama_variant(engine, kind)
    completions = fast.generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in completions] == reference_greedy(fast, PROMPTS, 24)


def test_models_the_llama_path_cannot_run_take_the_generic_path(engine: Engine) -> None:
    """A rope that rescales with the positions seen, and a subclass (it may compute something
    else), still decode like transformers."""
    from transformers import LlamaForCausalLM

    vocab = len(engine.tokenizer)
    dynamic = tiny_llama(vocab, rope_parameters={"rope_type": "dynamic", "factor": 2.0})

    class Custom(LlamaForCausalLM):
        pass

    custom = Custom(tiny_llama(vocab).config).eval()
    for model in (dynamic, custom):
        other = Engine(model, engine.tokenizer)
        assert other._llama is None
        completions = other.generate(PROMPTS, GREEDY)
        assert [c.token_ids for c in completions] == reference_greedy(other, PROMPTS, 24)


@pytest.mark.parametrize("where", ["model", "layer"])
def test_hooks_added_after_the_engine_was_made_still_run(engine: Engine, where: str) -> None:
    """The Llama path skips the modules' forward calls; a forward hook registered later (on
    the model or inside it) sends the call down the generic path, where it runs every step."""
    model = engine.model
    module = model if where == "model" else model.model.layers[0]
    calls: list[int] = []
    handle = module.register_forward_hook(lambda *_args: calls.append(1))
    try:
        assert engine._llama is not None and not engine._llama_path_usable()
        completions = engine.generate(PROMPTS[:1], GREEDY)
    finally:
        handle.remove()
    assert len(calls) == len(completions[0].token_ids)  # the prefill, then one per new token
    assert engine._llama_path_usable()


# -- sampling --------------------------------------------------------------------------------


def test_same_seed_repeats_and_other_seeds_differ(engine: Engine) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=16, n=3, seed=7)
    first = engine.generate(PROMPTS[:2], params)
    again = engine.generate(PROMPTS[:2], params)
    other = engine.generate(PROMPTS[:2], params.model_copy(update={"seed": 8}))
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.logprobs for c in first] == [c.logprobs for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    # The n samples of one prompt are different draws.
    assert len({tuple(c.token_ids) for c in first[:3]}) > 1


def test_top_k_one_and_tiny_top_p_are_greedy(engine: Engine) -> None:
    greedy = [c.token_ids for c in engine.generate(PROMPTS, GREEDY)]
    for update in ({"top_k": 1}, {"top_p": 1e-6}, {"top_k": 5, "top_p": 1e-6}):
        params = GREEDY.model_copy(update={"temperature": 1.5, "seed": 3, **update})
        assert [c.token_ids for c in engine.generate(PROMPTS, params)] == greedy, update


def test_sampler_keeps_to_top_k_and_the_nucleus() -> None:
    """Each top-p path (candidates, redraws, full sort) draws only nucleus tokens."""
    import torch

    vocab = 2048
    peaked = torch.full((vocab,), -10.0)
    peaked[:4] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # probabilities about .64 .24 .09 .03
    # Nearly flat (distinct values: ties at the nucleus edge are a matter of convention): the
    # 256 candidates hold far less than top_p.
    flat = torch.linspace(0.0, -1.0, vocab)
    cases = [
        (peaked, {"top_p": 0.8}, {0, 1}, 16),
        (peaked, {"top_k": 3}, {0, 1, 2}, 16),
        (flat, {"top_p": 0.9}, None, 16),
        (flat, {"top_p": 0.9}, None, 0),  # no redraws allowed: sorts the vocabulary
    ]
    for logits, settings, allowed, redraws in cases:
        sampler = _Sampler(
            SamplingParams(temperature=1.0, **settings), torch.Generator().manual_seed(0), vocab
        )
        sampler.MAX_REDRAWS = redraws
        ids, logprobs, _, _ = sampler(logits.expand(4000, vocab).contiguous())
        drawn = set(ids.tolist())
        probs = torch.softmax(logits, dim=-1)
        if allowed is None:  # the nucleus of the flat case: drop the least likely 10 %
            order = probs.argsort(descending=True)
            allowed = set(order[(probs[order].cumsum(0) - probs[order]) < 0.9].tolist())
            assert len(drawn) > 1000  # the draws spread over the whole nucleus
        assert drawn <= allowed, settings
        assert torch.allclose(logprobs, probs.log()[ids])


# -- stopping --------------------------------------------------------------------------------


def test_stop_token_ends_one_sequence_and_the_others_go_on(engine: Engine) -> None:
    greedy = [c.token_ids for c in engine.generate(PROMPTS, GREEDY)]
    stop = first_new_token(greedy[0], later_than=4)
    completions = engine.generate(PROMPTS, GREEDY.model_copy(update={"stop_token_ids": [stop]}))
    for completion, full in zip(completions, greedy, strict=True):
        if stop in full:
            end = full.index(stop) + 1
            assert completion.finish_reason == "stop"
            assert completion.token_ids == full[:end]
            assert completion.text == engine.tokenizer.decode(full[: end - 1])
        else:
            assert completion.finish_reason == "length"
            assert completion.token_ids == full
    assert completions[0].finish_reason == "stop"


def test_eos_ends_a_sequence_without_its_text(engine: Engine) -> None:
    """A copy of the model whose eos logit equals an ordinary token's: it now chooses eos there
    (argmax takes the lower id on a tie), mid-sequence, in a batch."""
    import torch

    greedy = [c.token_ids for c in engine.generate(PROMPTS, GREEDY)]
    token = first_new_token(greedy[0], later_than=4)
    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        model.get_output_embeddings().weight[EOS] = model.get_output_embeddings().weight[token]
    with_eos = Engine(model, engine.tokenizer)
    completions, events = streamed(with_eos, PROMPTS, GREEDY)
    expected = reference_greedy(with_eos, PROMPTS, 24)
    assert [c.token_ids for c in completions] == expected
    first = completions[0]
    assert first.finish_reason == "eos"
    assert first.token_ids == greedy[0][: greedy[0].index(token)] + [EOS]
    assert first.text == engine.tokenizer.decode(first.token_ids[:-1])
    assert "<|im_end|>" not in first.text
    for i, completion in enumerate(completions):
        assert joined(events, i) == completion.text
        if EOS not in completion.token_ids:
            assert completion.finish_reason == "length" and len(completion.token_ids) == 24


def first_new_token(ids: list[int], later_than: int) -> int:
    """A token of ``ids`` at an index past ``later_than`` that does not occur before it."""
    for i in range(later_than, len(ids)):
        if ids[i] not in ids[:i]:
            return ids[i]
    raise AssertionError(f"no fresh token after index {later_than} in {ids}")


def test_stop_strings_cut_the_text_and_the_stream(engine: Engine) -> None:
    [full] = engine.generate([PROMPTS[1]], GREEDY)
    stop = full.text[6:9]
    later = full.text[12:15]
    cut = full.text.index(stop)
    params = GREEDY.model_copy(update={"stop_strings": [later, stop]})
    [completion], events = streamed(engine, [PROMPTS[1]], params)
    assert completion.finish_reason == "stop"
    assert completion.text == full.text[:cut]
    assert joined(events, 0) == completion.text
    assert completion.token_ids == full.token_ids[: len(completion.token_ids)]
    assert len(completion.token_ids) < len(full.token_ids)
    # The stop string itself never reached the stream, not even in part.
    assert stop not in "".join(e.text for e in events)


def test_should_stop_ends_every_sequence_within_one_step(engine: Engine) -> None:
    events: list[TokenEvent] = []
    params = SamplingParams(temperature=1.0, seed=1, n=2, max_new_tokens=50)
    completions = engine.generate(
        [PROMPTS[0]], params, on_token=events.append, should_stop=lambda: len(events) >= 2 * 3
    )
    for completion in completions:
        assert completion.finish_reason == "stopped"
        assert len(completion.token_ids) == 3
        assert joined(events, completion.sample_index) == completion.text
    assert len(events) == 6

    [untouched] = engine.generate([PROMPTS[0]], GREEDY, should_stop=lambda: True)
    assert untouched.finish_reason == "stopped"
    assert untouched.token_ids == [] and untouched.text == ""
    assert untouched.time_to_first_token is None


# -- streaming -------------------------------------------------------------------------------


def test_streamed_multibyte_text_concatenates_to_the_final_text(engine: Engine) -> None:
    """A copy of the model trained to repeat a text whose characters span several byte tokens
    (the Shakespeare tokenizer has no merges for them): pieces arrive whole characters at a
    time, and some tokens release nothing."""
    import torch

    text = "日本語 🍎 café. " * 6
    ids = torch.tensor([engine.tokenizer.encode(text)])
    assert ids.shape[1] < WINDOW
    model = copy.deepcopy(engine.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = Engine(model, engine.tokenizer)

    [completion], events = streamed(trained, ["日本"], GREEDY.model_copy(update={"n": 1}))
    assert completion.text.startswith("語 🍎 café. 日本語")
    assert [e.text for e in events if e.text][:3] == ["語", " ", "🍎"]
    assert any(e.text == "" for e in events)  # a token holding part of a character
    assert joined(events, 0) == completion.text == engine.tokenizer.decode(completion.token_ids)


def test_streamed_sampled_text_concatenates_to_the_final_text(engine: Engine) -> None:
    """Hot sampling from a random model: byte tokens, invalid UTF-8, special tokens, stop
    strings matching and half-matching, all at once."""
    params = SamplingParams(
        temperature=3.0, seed=5, n=4, max_new_tokens=40, stop_strings=["e t", "\n\n", "our"]
    )
    completions, events = streamed(engine, PROMPTS, params)
    assert {c.finish_reason for c in completions} >= {"stop", "length"}
    for i, completion in enumerate(completions):
        assert joined(events, i) == completion.text
        assert [e.token_id for e in events if e.index == i] == completion.token_ids
        assert not any(s in completion.text for s in params.stop_strings)
    assert any("\ufffd" in c.text or not c.text.isascii() for c in completions)
    assert all(c.time_to_first_token is not None and c.tokens_per_second > 0 for c in completions)


def test_top_logprobs_are_sorted_probabilities(engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=6, return_top_logprobs=5)
    [completion], events = streamed(engine, [PROMPTS[0]], params)
    assert completion.alternatives is not None and len(completion.alternatives) == 6
    for alternatives, token_id, logprob in zip(
        completion.alternatives, completion.token_ids, completion.logprobs, strict=True
    ):
        probs = [p for _, p in alternatives]
        assert len(probs) == 5
        assert probs == sorted(probs, reverse=True)
        assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
        # Greedy picked the most likely token: the first alternative.
        assert alternatives[0][0] == engine.tokenizer.decode([token_id])
        assert alternatives[0][1] == pytest.approx(2.718281828459045**logprob)
    assert [e.alternatives for e in events] == completion.alternatives
    [plain] = engine.generate([PROMPTS[0]], GREEDY)
    assert plain.alternatives is None


# -- limits ----------------------------------------------------------------------------------


def test_max_new_tokens_is_clamped_to_the_context_window(engine: Engine) -> None:
    long_prompt = list(range(10, 10 + WINDOW - 5))  # 123 tokens: room for 5
    params = SamplingParams(temperature=0.0, max_new_tokens=4096)
    long, short = engine.generate([long_prompt, PROMPTS[2]], params)
    assert len(long.token_ids) <= 5
    assert long.finish_reason == "length" or long.token_ids[-1] == EOS
    assert long.prompt_tokens == WINDOW - 5
    assert len(short.token_ids) <= WINDOW - short.prompt_tokens
    assert short.finish_reason in {"length", "eos"}


def test_prompts_that_cannot_be_generated_from_are_refused(engine: Engine) -> None:
    for length in (WINDOW, WINDOW + 50):
        with pytest.raises(ValueError, match="context window is 128 tokens"):
            engine.generate([PROMPTS[0], list(range(10, 10 + length))], GREEDY)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.generate([""], GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[5, 100_000]], GREEDY)
    assert engine.generate([], GREEDY) == []


def test_sampling_params_bounds() -> None:
    assert SamplingParams().model_dump() == {
        "max_new_tokens": 64,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
        "seed": None,
        "stop_strings": [],
        "stop_token_ids": [],
        "n": 1,
        "return_top_logprobs": 0,
    }
    assert all(f.description for f in SamplingParams.model_fields.values())
    bad = [
        {"max_new_tokens": 0},
        {"max_new_tokens": 10**9},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"n": 17},
        {"return_top_logprobs": 11},
        {"stop_strings": [""]},
        {"stop_token_ids": [-1]},
        {"beam_width": 4},
    ]
    for data in bad:
        with pytest.raises(ValidationError):
            SamplingParams.model_validate(data)


def test_chat_prompt_ends_with_the_assistant_header(engine: Engine) -> None:
    prompt = chat_prompt(engine.tokenizer, [{"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    [completion] = engine.generate([prompt], GREEDY.model_copy(update={"max_new_tokens": 3}))
    assert completion.prompt_tokens == len(engine.tokenizer.encode(prompt))


# -- benchmark -------------------------------------------------------------------------------


def test_bench_quick_runs_and_matches_the_reference() -> None:
    from training.core.bench.generate import main

    started = time.perf_counter()
    report = main(["--quick"])
    assert time.perf_counter() - started < 15
    assert report["model"]["parameters"] > 4_000_000
    assert report["greedy_tokens_match_reference"] == {"engine": True}
    assert set(report["speedup"]) == {"engine_greedy", "engine_sampled"}
    assert all(r["tokens_per_s"] > 0 for r in report["results"].values())
