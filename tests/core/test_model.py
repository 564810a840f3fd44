"""Model presets and size arithmetic: the formulas are checked against real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from training.core.model import (
    PRESETS,
    PresetName,
    build_config,
    count_parameters,
    estimate,
    flops_per_token,
    format_count,
    tokens_per_parameter,
    training_memory,
)

REPO = Path(__file__).resolve().parents[2]
IDS = {"bos_token_id": 0, "eos_token_id": 3, "pad_token_id": 1}


def built_parameters(config) -> int:
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", ["tiny", "mini", "small", "gpt2-small", "medium"])
def test_parameter_formula_matches_the_built_model(preset: str) -> None:
    config = build_config(preset, 1000, 128, **IDS)
    assert count_parameters(config)["parameters"] == built_parameters(config)


def test_parameter_formula_covers_biases_gqa_and_untied_heads() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=96,
        intermediate_size=200,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=24,  # attention width 144, wider than the hidden size
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        max_position_embeddings=64,
    )
    counts = count_parameters(config)
    assert counts["parameters"] == built_parameters(config)
    assert counts["embedding_parameters"] == 2 * 300 * 96  # input embedding + untied head
    assert counts["non_embedding_parameters"] == counts["parameters"] - 2 * 300 * 96


def test_presets_are_sized_to_the_tokenizer() -> None:
    config = build_config("tiny", 777, 64, bos_token_id=0, eos_token_id=3, pad_token_id=1)
    assert config.vocab_size == 777
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 4, 4)
    assert (config.intermediate_size, config.tie_word_embeddings) == (384, True)
    assert config.max_position_embeddings == 64  # the trained context
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 3, 1)
    assert count_parameters(config)["embedding_parameters"] == 777 * 128


@pytest.mark.parametrize(
    ("preset", "vocab", "low", "high"),
    [
        ("tiny", 2048, 1.0e6, 1.2e6),
        ("mini", 2048, 3.5e6, 4.5e6),
        ("small", 8192, 22e6, 28e6),
        ("gpt2-small", 50257, 120e6, 128e6),
        ("medium", 50257, 330e6, 370e6),
    ],
)
def test_preset_sizes_match_their_names(preset: str, vocab: int, low: float, high: float) -> None:
    assert low <= count_parameters(build_config(preset, vocab, 256, **IDS))["parameters"] <= high


def test_gpt2_small_has_gpt2_shape() -> None:
    shape = PRESETS["gpt2-small"]
    assert (shape.hidden_size, shape.num_layers, shape.num_heads) == (768, 12, 12)
    assert shape.max_position_embeddings == 1024


def test_preset_names_are_the_literal_choices() -> None:
    assert list(get_args(PresetName)) == list(PRESETS)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="outside what the 'tiny' preset supports"):
        build_config("tiny", 1000, 4096, **IDS)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_config("huge", 1000, 64, **IDS)
    with pytest.raises(ValueError, match="vocab_size"):
        build_config("tiny", 0, 64, **IDS)


def test_flops_per_token_formula() -> None:
    config = build_config("tiny", 2048, 256, **IDS)
    h, layers, inter, vocab, context = 128, 4, 384, 2048, 256
    matmul_params = layers * (4 * h * h + 3 * h * inter) + vocab * h
    assert flops_per_token(config) == 6 * matmul_params + 12 * layers * h * context
    # A longer context only adds attention FLOPs.
    assert flops_per_token(config, 512) - flops_per_token(config) == 12 * layers * h * 256


def test_estimate_fields() -> None:
    config = build_config("mini", 2048, 256, **IDS)
    est = estimate(config, batch_size=8)
    json.dumps(est)
    assert est["parameters"] == count_parameters(config)["parameters"]
    assert est["parameters"] == est["embedding_parameters"] + est["non_embedding_parameters"]
    assert est["flops_per_token"] == flops_per_token(config, 256)
    assert (est["batch_size"], est["context_length"]) == (8, 256)
    assert est["chinchilla_tokens"] == 20 * est["parameters"]
    fp32, bf16 = est["memory_bytes"]["fp32"], est["memory_bytes"]["bf16"]
    params = est["parameters"]
    # fp32 master weights, gradients and two Adam moments in both precisions.
    assert (fp32["weights"], fp32["gradients"], fp32["optimizer"]) == (
        4 * params,
        4 * params,
        8 * params,
    )
    assert bf16["weights"] == 6 * params  # plus the bf16 copy autocast makes
    assert bf16["activations"] < fp32["activations"]
    for parts in (fp32, bf16):
        assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_activation_memory_grows_with_batch_and_context() -> None:
    config = build_config("tiny", 1024, 512, **IDS)
    small = training_memory(config, batch_size=4, context_length=128)["activations"]
    assert training_memory(config, batch_size=8, context_length=128)["activations"] == 2 * small
    assert training_memory(config, batch_size=4, context_length=256)["activations"] > 2 * small
    with pytest.raises(ValueError, match="dtype"):
        training_memory(config, batch_size=1, dtype="fp16")


def test_tokens_per_parameter_and_formatting() -> None:
    assert tokens_per_parameter(20_000_000, 1_000_000) == 20.0
    with pytest.raises(ValueError):
        tokens_per_parameter(10, 0)
    assert [format_count(n) for n in (0, 999, 1_115_264, 124_000_000)] == [
        "0",
        "999",
        "1.12M",
        "124M",
    ]


def test_config_modules_import_without_torch() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import json, sys\n"
        "import training.core.model, training.core.pretrain, training.core.device\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    heavy = {"torch", "transformers", "numpy", "tokenizers"}
    assert [m for m in json.loads(done.stdout) if m.split(".")[0] in heavy] == []


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_presets_config_shape_sizes_like_the_config_it_builds(preset: str) -> None:
    built = build_config(preset, 4096, 256, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    shape = PRESETS[preset].config_shape(4096, 256)
    assert count_parameters(shape) == count_parameters(built)
    assert flops_per_token(shape) == flops_per_token(built)
    assert training_memory(shape, batch_size=4) == training_memory(built, batch_size=4)
