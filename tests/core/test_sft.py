"""The sft stage: TRL fine-tuning of the tiny random Llama from conftest on tiny snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from training.core.checkpoints import COMPLETE
from training.core.reporting import RecordingReporter
from training.core.sft import (
    SFTConfig,
    load_for_generation,
    merge_adapter,
    mix,
    prepare,
    run,
)

REPO = Path(__file__).resolve().parents[2]

FAST: dict[str, Any] = {
    "max_length": 128,
    "batch_size": 8,
    "log_every": 1,
    "eval_every": 0,
    "sample_every": 0,
    "sample_max_new_tokens": 8,
    "save_every": 1000,
    "device": "cpu",
}
ARITHMETIC = [
    {
        "messages": [
            {"role": "user", "content": f"{a}+{b}?"},
            {"role": "assistant", "content": f"{a + b}"},
        ]
    }
    for a in range(4)
    for b in range(4)
]
TOOL_CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "w", "arguments": {"city": "X"}}}
            ],
        },
        {"role": "tool", "content": "sun"},
        {"role": "assistant", "content": "Sunny."},
    ]
}
OTHER_TOOL_CALL = {
    "messages": [
        {"role": "user", "content": "n?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "n", "arguments": {"k": 1}}}],
        },
    ]
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_snapshot(
    folder: Path, train: list[Any], validation: list[Any] | None = None, raw: str | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = raw if raw is not None else "".join(json.dumps(c) + "\n" for c in train)
    (folder / "train.jsonl").write_text(lines)
    (folder / "validation.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in validation or [])
    )
    (folder / "card.json").write_text(json.dumps({"name": folder.name}))
    return folder


def cfg(**overrides: Any) -> SFTConfig:
    return SFTConfig(**{**FAST, **overrides})


class Trained(NamedTuple):
    out: Path
    result: dict[str, Any]
    reporter: RecordingReporter


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """conftest's tiny Llama and tokenizer, with a 256-token context for the tool-call chats."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("base") / "model"
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.max_position_embeddings = 256
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arithmetic")
    return write_snapshot(root / "arith", ARITHMETIC, ARITHMETIC[:4])


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, arithmetic: Path) -> Trained:
    out = tmp_path_factory.mktemp("full") / "out"
    reporter = RecordingReporter()
    config = cfg(max_steps=40, learning_rate=3e-3, eval_every=20, sample_every=20)
    result = run(config, {"base": [base_dir], "datasets": [arithmetic]}, out, reporter)
    return Trained(out, result, reporter)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, arithmetic: Path) -> Trained:
    out = tmp_path_factory.mktemp("lora") / "adapter"
    reporter = RecordingReporter()
    config = cfg(method="lora", merge_adapter=False, max_steps=20, learning_rate=1e-2)
    result = run(config, {"base": [base_dir], "datasets": [arithmetic]}, out, reporter)
    return Trained(out, result, reporter)


# ------------------------------------------------------------------------------------ config


def test_config_defaults_and_validation() -> None:
    default = SFTConfig()
    assert default.method == "full" and default.max_length == 512 and default.too_long == "drop"
    assert default.peak_learning_rate() == 5e-4
    assert SFTConfig(method="lora").peak_learning_rate() == 2e-3
    assert all(f.description for f in SFTConfig.model_fields.values())
    for bad, field_name in [
        ({"colour": "red"}, "colour"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"dataset_weights": [0, 0]}, "dataset_weights"),
        ({"too_long": "truncate"}, "too_long"),
        ({"sample_prompts": [""]}, "sample_prompts"),
    ]:
        with pytest.raises(ValidationError) as caught:
            SFTConfig(**bad)
        assert caught.value.errors()[0]["loc"][0] == field_name


def test_mixing_follows_the_weights_and_the_seed() -> None:
    from training.core.sft import Conversation

    big = [Conversation(messages=[], where=f"a{i}") for i in range(10)]
    small = [Conversation(messages=[], where=f"b{i}") for i in range(2)]
    mixed, counts = mix([big, small], [1.0, 3.0], seed=7)
    assert counts == [3, 9] and len(mixed) == 12
    assert sum(c.where.startswith("b") for c in mixed) == 9  # oversampled: copies + remainder
    assert len({c.where for c in mixed if c.where.startswith("a")}) == 3  # a subset, no repeats
    again, _ = mix([big, small], [1.0, 3.0], seed=7)
    assert [c.where for c in again] == [c.where for c in mixed]
    plain, counts = mix([big, small], None, seed=7)
    assert counts == [10, 2] and plain == big + small


# ---------------------------------------------------------------------------------- training


def test_loss_falls_and_progress_and_metrics_are_reported(full: Trained) -> None:
    result, reporter = full.result, full.reporter
    assert result["steps"] == result["max_steps"] == 40 and not result["stopped_early"]
    assert result["train_loss_last"] < 0.6 * result["train_loss_first"]
    assert [step for step, _, _ in reporter.progress_calls] == list(range(1, 41))
    names = {name for values, _ in reporter.metric_calls for name in values}
    assert {"train/loss", "train/lr", "val/loss", "stop_rate"} <= names
    assert [s for v, s in reporter.metric_calls if "val/loss" in v] == [20, 40]
    assert result["val_loss"] is not None and result["conversations"] == 16
    assert result["tokens_trained"] == 2 * 16 * 20  # "N<|im_end|>" per conversation, 20 epochs
    assert result["trainable_params"] == result["total_params"]


def test_samples_and_stop_rate_are_recorded(full: Trained) -> None:
    samples = [
        (payload, step) for name, payload, step in full.reporter.records if name == "samples"
    ]
    assert [step for _, step in samples] == [20, 40]
    payload = samples[-1][0]
    assert [s["prompt"] for s in payload["samples"]] == SFTConfig().sample_prompts
    assert all(
        isinstance(s["reply"], str) and isinstance(s["ended"], bool) for s in payload["samples"]
    )
    assert 0.0 <= full.result["stop_rate"] <= 1.0
    assert full.result["stop_rate"] == payload["stop_rate"]


def test_output_is_a_plain_checkpoint_that_stops_at_im_end(full: Trained) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = {p.name for p in full.out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "orchard.json",
    } <= names
    assert ".work" not in names  # the stage's own work folder is deleted after success
    tok = AutoTokenizer.from_pretrained(full.out)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    generation = json.loads((full.out / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert generation["pad_token_id"] == tok.convert_tokens_to_ids("<|pad|>")
    manifest = json.loads((full.out / "orchard.json").read_text())
    assert manifest["kind"] == "checkpoint" and manifest["stage"] == "sft"
    assert manifest["method"] == "full" and manifest["config"]["max_steps"] == 40
    assert manifest["stats"]["stop_rate"] == full.result["stop_rate"]
    assert manifest["stats"]["datasets"][0]["train"] == 16

    model = AutoModelForCausalLM.from_pretrained(full.out, dtype=torch.float32)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "1+2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out[0, -1].item() == im_end  # learned to end its turn


def test_only_assistant_tokens_carry_loss(tmp_path: Path, base_dir: Path) -> None:
    snap = write_snapshot(tmp_path / "tools", [TOOL_CHAT, OTHER_TOOL_CALL, *ARITHMETIC[:2]])
    session = prepare(
        cfg(max_steps=1, max_length=256),
        {"base": [base_dir], "datasets": [snap]},
        tmp_path / "ck",
        RecordingReporter(),
    )
    tok = session.tok
    rows = {tuple(row["input_ids"]): row["labels"] for row in session.trainer.train_dataset}
    expected = {
        tok.decode(
            tok.apply_chat_template(conv["messages"], tokenize=True, return_dict=False)
        ): conv
        for conv in [TOOL_CHAT, OTHER_TOOL_CALL, *ARITHMETIC[:2]]
    }
    assert len(rows) == 4
    for ids, labels in rows.items():
        conv = expected[tok.decode(list(ids))]  # each conversation rendered verbatim
        trained = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
        assert all(label in (-100, i) for i, label in zip(ids, labels, strict=True))
        want = ""
        for message in conv["messages"]:
            if message["role"] == "assistant":
                want += message["content"] or ""
                for call in message.get("tool_calls") or []:
                    want += "<|tool_call|>" + json.dumps(call["function"]) + "<|/tool_call|>"
                want += "<|im_end|>"
        assert trained == want
    # Arguments of different tool calls keep their own keys (no nulls from merged structs).
    assert '"arguments": {"k": 1}' in "".join(tok.decode(list(i)) for i in rows)

    batch = next(iter(session.trainer.get_train_dataloader()))
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["labels"][padding] == -100).all()


def test_packing_fills_sequences_and_keeps_them_apart(
    tmp_path: Path, base_dir: Path, arithmetic: Path
) -> None:
    import torch

    inputs = {"base": [base_dir], "datasets": [arithmetic]}
    session = prepare(cfg(packing=True), inputs, tmp_path / "ck", RecordingReporter())
    rows = session.trainer.train_dataset
    assert len(rows) < 16 and all(len(r["input_ids"]) <= 128 for r in rows)
    assert sum(sum(label != -100 for label in r["labels"]) for r in rows) == 2 * 16
    # As the padding-free collator feeds it: one row, positions restarting at each conversation,
    # no attention mask. The second conversation must not see the first.
    row = next(r for r in rows if len(r["seq_lengths"]) > 1)
    first, second = row["seq_lengths"][:2]
    ids = torch.tensor([row["input_ids"]])
    positions = torch.cat([torch.arange(n) for n in row["seq_lengths"]])[None]
    model = session.model.eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions).logits[:, first : first + second]
        alone = model(input_ids=ids[:, first : first + second]).logits
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_lora_trains_only_the_adapter(tmp_path: Path, base_dir: Path, arithmetic: Path) -> None:
    import torch

    config = cfg(method="lora", max_steps=5, learning_rate=1e-2)
    session = prepare(
        config,
        {"base": [base_dir], "datasets": [arithmetic]},
        tmp_path / "ck",
        RecordingReporter(),
    )
    model = session.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    session.trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable  # the base weights are exactly as loaded
    assert all(any(part in n for n in changed) for part in ("lora_A", "lora_B"))


def test_adapter_output_and_merge_match_the_unmerged_model(
    tmp_path: Path, base_dir: Path, adapter: Trained
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    result = adapter.result
    assert 0 < result["trainable_params"] < result["total_params"]
    assert result["train_loss_last"] < result["train_loss_first"]
    names = {p.name for p in adapter.out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "orchard.json",
    } <= names
    assert "model.safetensors" not in names
    manifest = json.loads((adapter.out / "orchard.json").read_text())
    assert manifest["adapter"] is True and manifest["method"] == "lora"

    merged_dir = tmp_path / "merged"
    merge_adapter(base_dir, adapter.out, merged_dir)
    merged_manifest = json.loads((merged_dir / "orchard.json").read_text())
    assert merged_manifest["stage"] == "sft"
    assert merged_manifest["merged_from"] == {
        "base": str(base_dir),
        "adapter": str(adapter.out),
    }
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    unmerged, tok = load_for_generation(adapter.out, base_dir)
    recorded_base, _ = load_for_generation(adapter.out)  # the base named in adapter_config.json
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n")])
    with torch.no_grad():
        want = unmerged(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-4, rtol=0)
        torch.testing.assert_close(recorded_base(input_ids=ids).logits, want, atol=1e-6, rtol=0)
        assert (base(input_ids=ids).logits - want).abs().max() > 1e-3  # the adapter did something
    assert tok.convert_tokens_to_ids("<|im_end|>") in merged.generation_config.eos_token_id

    # The generation engine serves the adapter on its base, unmerged, with the merged outputs.
    from training.core.generate import Engine, SamplingParams

    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    prompt = "<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n"
    on_base = Engine.load(adapter.out, base_path=base_dir).generate([prompt], greedy)
    from_merged = Engine.load(merged_dir).generate([prompt], greedy)
    assert on_base[0].token_ids == from_merged[0].token_ids


# ------------------------------------------------------------------------------------ resume


def test_stopped_run_resumes_from_the_complete_checkpoint(
    tmp_path: Path, base_dir: Path, arithmetic: Path
) -> None:
    inputs = {"base": [base_dir], "datasets": [arithmetic]}
    config = cfg(max_steps=10, learning_rate=3e-3)
    work, out = tmp_path / "work", tmp_path / "out"
    stopper = RecordingReporter(stop_after_progress_calls=4)
    partial = run(config, inputs, out, stopper, work_dir=work)
    assert partial["stopped_early"] and partial["steps"] == 4
    assert not out.exists() or not (out / "model.safetensors").exists()
    checkpoints = work / "checkpoints"
    assert (checkpoints / "checkpoint-4" / COMPLETE).is_file()
    # Saves that crashed halfway have no marker: never resumed (the newer one would win by
    # number), and deleted.
    for step in (2, 7):
        (checkpoints / f"checkpoint-{step}").mkdir()
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")

    reporter = RecordingReporter()
    result = run(config, inputs, out, reporter, work_dir=work)
    assert result["resumed_from_step"] == 4 and not result["stopped_early"]
    assert [s for s, _, _ in reporter.progress_calls] == list(range(5, 11))
    assert result["steps"] == 10 and (out / "model.safetensors").is_file()
    assert (
        not (checkpoints / "checkpoint-7").exists() and not (checkpoints / "checkpoint-2").exists()
    )
    assert "deleting the incomplete checkpoint checkpoint-7" in reporter.lines
    assert result["train_loss_first"] == partial["train_loss_first"]  # history survives resume
    kept = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-10", "checkpoint-4"]  # the newest two complete ones


def test_lora_resume_gives_the_uninterrupted_adapter(
    tmp_path: Path, base_dir: Path, arithmetic: Path
) -> None:
    """STACK.md warns that adapter-only resume has broken before: check it bit for bit."""
    from safetensors.torch import load_file

    inputs = {"base": [base_dir], "datasets": [arithmetic]}
    config = cfg(method="lora", merge_adapter=False, max_steps=8, learning_rate=1e-2)
    straight = tmp_path / "straight"
    run(config, inputs, straight, RecordingReporter())
    work, out = tmp_path / "work", tmp_path / "resumed"
    run(config, inputs, out, RecordingReporter(stop_after_progress_calls=3), work_dir=work)
    result = run(config, inputs, out, RecordingReporter(), work_dir=work)
    assert result["resumed_from_step"] == 3
    want = load_file(straight / "adapter_model.safetensors")
    got = load_file(out / "adapter_model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        assert (want[key] - got[key]).abs().max().item() < 1e-6, key


# ---------------------------------------------------------------------------------- refusals


def test_refusals_say_what_to_do(tmp_path: Path, base_dir: Path, adapter: Trained) -> None:
    base = {"base": [base_dir]}
    reporter = RecordingReporter()

    def refuse(config: SFTConfig, inputs: dict[str, Any], match: str) -> None:
        with pytest.raises(ValueError, match=match):
            prepare(config, inputs, tmp_path / "ck", reporter)

    refuse(cfg(), {**base, "datasets": []}, 'at least one dataset snapshot as input "datasets"')
    empty = write_snapshot(tmp_path / "empty", [])
    refuse(
        cfg(),
        {**base, "datasets": [empty]},
        "The dataset snapshot empty has no conversations to train on",
    )
    no_reply = write_snapshot(
        tmp_path / "noreply", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    refuse(
        cfg(),
        {**base, "datasets": [no_reply]},
        "none of its 1 conversations has an assistant reply",
    )
    bad_json = write_snapshot(tmp_path / "badjson", [], raw=json.dumps(ARITHMETIC[0]) + "\n{oops\n")
    refuse(cfg(), {**base, "datasets": [bad_json]}, r"badjson/train.jsonl, line 2: not valid JSON")
    narrator = {"messages": [{"role": "narrator", "content": "Once"}]}
    roles = write_snapshot(tmp_path / "roles", [ARITHMETIC[0], narrator])
    refuse(cfg(), {**base, "datasets": [roles]}, r"line 2, message 1: unknown role 'narrator'")
    refuse(cfg(), {"base": [adapter.out], "datasets": [roles]}, "merge the adapter first")
    refuse(cfg(dataset_weights=[1, 2]), {**base, "datasets": [roles]}, "2 weights for 1 datasets")

    long_text = "orchard " * 40
    long_chat = {
        "messages": [
            {"role": "user", "content": long_text},
            {"role": "assistant", "content": "ok"},
        ]
    }
    all_long = write_snapshot(tmp_path / "long", [long_chat, long_chat])
    refuse(
        cfg(),
        {**base, "datasets": [all_long]},
        r"All 2 conversations .* longer than max_length \(128 tokens\); "
        r"the longest has \d+ tokens: raise max_length",
    )
    some_long = write_snapshot(tmp_path / "some", [*ARITHMETIC, long_chat])
    refuse(
        cfg(too_long="error"),
        {**base, "datasets": [some_long]},
        r"1 of 17 conversations .* too_long",
    )
    session = prepare(cfg(), {**base, "datasets": [some_long]}, tmp_path / "ck", reporter)
    assert session.data.dropped_too_long == 1 and len(session.data.train) == 16
    assert len(session.trainer.train_dataset) == 16
    assert any("dropped 1 longer than 128 tokens" in line for line in reporter.lines)


def test_dataset_weights_mix_two_snapshots(
    tmp_path: Path, base_dir: Path, arithmetic: Path
) -> None:
    tools = write_snapshot(tmp_path / "tools", [TOOL_CHAT, OTHER_TOOL_CALL])
    inputs = {"base": [base_dir], "datasets": [arithmetic, tools]}
    reporter = RecordingReporter()
    session = prepare(
        cfg(dataset_weights=[1, 1], max_length=256), inputs, tmp_path / "ck", reporter
    )
    assert session.data.mixed_counts == [9, 9] and len(session.trainer.train_dataset) == 18
    assert any("mixed training set of 18 conversations" in line for line in reporter.lines)


# ----------------------------------------------------------------------------------------- CLI


def test_sft_runs_from_the_shell(tmp_path: Path, base_dir: Path, arithmetic: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**FAST, "max_steps": 3}))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.core",
            "sft",
            "--config",
            str(config),
            "--input",
            f"base={base_dir}",
            "--input",
            f"datasets={arithmetic}",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout holds only the result
    assert result["steps"] == 3 and "[progress] 3/3" in done.stderr
    assert (out / "model.safetensors").is_file() and (out / "orchard.json").is_file()


def test_snapshot_tool_arguments_as_json_text_train_as_objects(tmp_path: Path) -> None:
    """Snapshots store tool-call arguments as JSON text; training must see the same objects."""
    path = tmp_path / "train.jsonl"
    call = {"type": "function", "function": {"name": "calc", "arguments": '{"expr": "2+2"}'}}
    free = {"type": "function", "function": {"name": "say", "arguments": "not json"}}
    line = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "", "tool_calls": [call, free]},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "4"},
        ]
    }
    path.write_text(json.dumps(line) + "\n")
    from training.core.sft import read_conversations

    (conversation,) = read_conversations(path)
    calls = conversation.messages[1]["tool_calls"]
    assert calls[0]["function"]["arguments"] == {"expr": "2+2"}
    assert calls[1]["function"]["arguments"] == "not json"
