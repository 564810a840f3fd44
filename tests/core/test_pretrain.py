"""The pretrain stage on a slice of Tiny Shakespeare with a tokenizer trained in the fixture."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from tests.support.data import SHARED_DATA
from tests.support.precision import auto_dtype_on_cpu
from training.core.checkpoints import COMPLETE, list_complete
from training.core.corpus import CorpusError
from training.core.pretrain import PretrainConfig, learning_rate_at, run
from training.core.reporting import RecordingReporter
from training.core.tokenizer import TokenizerConfig
from training.core.tokenizer import run as train_tokenizer

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = SHARED_DATA / "pretrain" / "tinyshakespeare.txt"
VOCAB = 768
TOKENIZER_MAX_LENGTH = 128

# Small enough that a step takes milliseconds on a CPU; every test run shares this shape.
FAST = {
    "preset": "tiny",
    "context_length": 32,
    "batch_size": 4,
    "warmup_steps": 2,
    "log_every": 2,
    "eval_batches": 2,
    "sample_prompts": "",
    "sample_max_new_tokens": 8,
    "device": "cpu",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train these tiny models on one thread.

    They gain little from a second one, and when other processes keep the cores busy, a
    two-thread step waits for its slower thread at every parallel region: measured 8x slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shakespeare_slice(target: Path, size: int) -> Path:
    """Copy the first ``size`` bytes of the shared corpus into the test's temp folder."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not available")
    with open(SHAKESPEARE, "rb") as fh:
        target.write_bytes(fh.read(size))
    return target


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shakespeare_slice(tmp_path_factory.mktemp("corpus") / "shakespeare.txt", 200_000)


def make_tokenizer(root: Path, corpus: Path, vocab_size: int) -> Path:
    cfg = TokenizerConfig(
        vocab_size=vocab_size, num_reserved_tokens=0, model_max_length=TOKENIZER_MAX_LENGTH
    )
    train_tokenizer(cfg, {"corpus": [corpus]}, root, RecordingReporter())
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"), corpus, VOCAB)


def inputs(corpus: Path, tokenizer: Path) -> dict[str, list[Path]]:
    return {"corpus": [corpus], "tokenizer": [tokenizer]}


def weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


class Trained(NamedTuple):
    out: Path
    result: dict[str, Any]
    reporter: RecordingReporter
    seconds: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tokenizer: Path) -> Trained:
    """40 steps with evaluation, samples and checkpoints, in the default work folder."""
    out = tmp_path_factory.mktemp("pretrain") / "out"
    cfg = PretrainConfig(
        **{
            **FAST,
            "context_length": 64,
            "batch_size": 8,
            "max_steps": 40,
            "warmup_steps": 5,
            "log_every": 5,
            "eval_every": 20,
            "sample_every": 20,
            "checkpoint_every": 20,
            "eval_batches": 4,
            "sample_prompts": "Once upon a time\n\nThe king said",
        }
    )
    reporter = RecordingReporter()
    began = time.monotonic()
    result = run(cfg, inputs(corpus, tokenizer), out, reporter)
    return Trained(out, result, reporter, time.monotonic() - began)


# ------------------------------------------------------------------------------------ config


def test_config_defaults_and_descriptions() -> None:
    cfg = PretrainConfig()
    assert (cfg.preset, cfg.context_length, cfg.batch_size, cfg.max_steps) == ("tiny", 256, 16, 200)
    assert (cfg.learning_rate, cfg.min_lr_ratio, cfg.warmup_steps) == (3e-3, 0.1, 20)
    assert (cfg.dtype, cfg.device, cfg.compile) == ("auto", "auto", False)
    assert cfg.prompts() == ["Once upon a time", "The king said"]
    assert all(f.description for f in PretrainConfig.model_fields.values())
    json.dumps(PretrainConfig.model_json_schema())  # what a web form is built from


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"context_length": 1024}, "context_length"),  # tiny allows 512
        ({"preset": "gpt2-small", "context_length": 2048}, "context_length"),
        ({"warmup_steps": 200}, "warmup_steps"),
        ({"preset": "huge"}, "preset"),
        ({"dtype": "fp16"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.9}, "val_fraction"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"epochs": 3}, "epochs"),
    ],
)
def test_config_validation_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PretrainConfig.model_validate(data)
    assert [err["loc"] for err in exc.value.errors()] == [(field,)]


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    cfg = PretrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1)
    lrs = [learning_rate_at(step, cfg) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[9] == pytest.approx(1e-3)  # the last warmup step reaches the peak
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[99] == pytest.approx(1e-4)  # the last step reaches the floor
    assert lrs[54] == pytest.approx(5.5e-4, rel=0.02)  # halfway down the cosine
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    no_warmup = PretrainConfig(max_steps=1, warmup_steps=0)
    assert learning_rate_at(0, no_warmup) == no_warmup.learning_rate


# ------------------------------------------------------------------------------- a full run


def test_loss_falls_and_metrics_are_reported(trained: Trained) -> None:
    train = [(v, step) for v, step in trained.reporter.metric_calls if "loss" in v]
    assert [step for _, step in train] == list(range(5, 41, 5))
    assert set(train[0][0]) == {"loss", "lr", "grad_norm", "tokens_per_sec"}
    first, last = train[0][0]["loss"], train[-1][0]["loss"]
    assert first > math.log(VOCAB) - 1.5  # starts near uniform over the vocabulary
    assert last < first - 0.5
    assert all(v["tokens_per_sec"] > 0 and v["grad_norm"] > 0 for v, _ in train)
    assert train[-1][0]["lr"] == pytest.approx(3e-4)  # decayed to learning_rate x min_lr_ratio
    assert [step for step, _total, _msg in trained.reporter.progress_calls] == list(range(1, 41))
    assert trained.reporter.progress_calls[-1][1] == 40


def test_validation_reports_bits_per_byte(trained: Trained) -> None:
    evals = [(v, step) for v, step in trained.reporter.metric_calls if "val_loss" in v]
    assert [step for _, step in evals] == [20, 40]
    assert evals[1][0]["val_loss"] < evals[0][0]["val_loss"]
    for values, _step in evals:
        assert set(values) == {"val_loss", "val_bpb"}
        # Each token stands for a few bytes, so bits per byte are well below bits per token.
        assert 0 < values["val_bpb"] < values["val_loss"] / math.log(2)
    assert trained.result["val_bpb"] == evals[1][0]["val_bpb"]


def test_samples_are_recorded_from_the_prompts(trained: Trained) -> None:
    records = trained.reporter.records
    assert [(name, step) for name, _payload, step in records] == [("samples", 20), ("samples", 40)]
    for _name, payload, _step in records:
        assert [s["prompt"] for s in payload["samples"]] == ["Once upon a time", "The king said"]
        assert all(isinstance(s["text"], str) and s["text"] for s in payload["samples"])
    json.dumps(records)


def test_result_describes_the_run(trained: Trained) -> None:
    result = trained.result
    json.dumps(result)
    assert (result["steps"], result["stopped_early"], result["resumed_from_step"]) == (
        40,
        False,
        None,
    )
    assert result["tokens_seen"] == 40 * 8 * 64
    assert result["parameters"] == 4 * (4 * 128 * 128 + 3 * 128 * 384 + 2 * 128) + 128 + VOCAB * 128
    assert result["tokens_per_parameter"] == pytest.approx(40 * 8 * 64 / result["parameters"])
    assert (result["device"], result["dtype"]) == ("cpu", auto_dtype_on_cpu())
    assert result["final_loss"] == trained.reporter.metric_calls[-2][0]["loss"]
    assert result["train_tokens"] > 20 * result["val_tokens"] > 0


def test_output_loads_with_plain_transformers_and_generates(trained: Trained) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = trained.out
    assert not (out / ".work").exists()  # the default work folder is removed after success
    manifest = json.loads((out / "orchard.json").read_text())
    assert (manifest["kind"], manifest["stage"]) == ("checkpoint", "pretrain")
    assert manifest["config"]["max_steps"] == 40
    assert manifest["metrics"] == json.loads(json.dumps(trained.result))
    assert manifest["estimate"]["parameters"] == trained.result["parameters"]

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == VOCAB
    assert model.config.max_position_embeddings == 64
    enc = tok("The king said", return_tensors="pt")
    torch.manual_seed(0)
    generated = model.generate(**enc, max_new_tokens=12, do_sample=True, top_k=0)
    assert generated.shape[1] > enc["input_ids"].shape[1]
    assert isinstance(tok.decode(generated[0], skip_special_tokens=True), str)
    assert set(model.generation_config.eos_token_id) == {0, tok.eos_token_id}


def test_token_bytes_add_up_to_the_text(tokenizer: Path) -> None:
    from transformers import AutoTokenizer

    from training.core.pretrain import token_byte_lengths

    tok = AutoTokenizer.from_pretrained(tokenizer)
    lengths = token_byte_lengths(tok)
    text = "Naïve café owners say «bonjour» — 日本語 too.\nAll's well."
    ids = tok.encode(text, add_special_tokens=False)
    assert sum(int(lengths[i]) for i in ids) == len(text.encode("utf-8"))
    assert lengths[tok.convert_tokens_to_ids("<|endoftext|>")] == 0


# -------------------------------------------------------------------- stop, resume, refusals


RESUME = {**FAST, "max_steps": 12, "checkpoint_every": 5, "eval_every": 6, "keep_checkpoints": 3}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tokenizer: Path) -> Trained:
    """The uninterrupted run that stopped and resumed runs must reproduce exactly."""
    root = tmp_path_factory.mktemp("straight")
    reporter = RecordingReporter()
    began = time.monotonic()
    result = run(PretrainConfig(**RESUME), inputs(corpus, tokenizer), root / "out", reporter)
    return Trained(root / "out", result, reporter, time.monotonic() - began)


def stop_at(step: int, work: Path, corpus: Path, tokenizer: Path) -> RecordingReporter:
    stopping = RecordingReporter(stop_after_progress_calls=step)
    partial = run(
        PretrainConfig(**RESUME), inputs(corpus, tokenizer), work / "out", stopping, work_dir=work
    )
    assert (partial["steps"], partial["stopped_early"]) == (step, True)
    assert not (work / "out").exists()  # no final model for a stopped run
    return stopping


def assert_same_weights(expected_dir: Path, actual_dir: Path) -> None:
    import torch

    expected, actual = weights(expected_dir), weights(actual_dir)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_stopped_run_resumes_to_the_same_weights(
    tmp_path: Path, corpus: Path, tokenizer: Path, straight: Trained
) -> None:
    stopping = stop_at(7, tmp_path, corpus, tokenizer)
    assert any("stopped at step 7" in line for line in stopping.lines)
    checkpoints = tmp_path / "checkpoints"
    assert [c.step for c in list_complete(checkpoints)] == [5, 7]

    # Leftovers of a crash must be ignored: a temp folder, a folder without COMPLETE and one
    # whose files no longer match their hashes.
    newest = checkpoints / "step_00000007"
    shutil.copytree(newest, checkpoints / ".tmp-step_00000010-dead")
    shutil.copytree(newest, checkpoints / "step_00000008")
    (checkpoints / "step_00000008" / COMPLETE).unlink()
    corrupted = checkpoints / "step_00000009"
    shutil.copytree(newest, corrupted)
    with open(corrupted / "model.safetensors", "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\0\0\0\0")

    resuming = RecordingReporter()
    cfg = PretrainConfig(**RESUME)
    resumed = run(cfg, inputs(corpus, tokenizer), tmp_path / "out", resuming, work_dir=tmp_path)
    assert (resumed["steps"], resumed["resumed_from_step"]) == (12, 7)
    assert resuming.progress_calls[0][0] == 8
    assert any("reusing the tokenized corpus" in line for line in resuming.lines)
    assert resumed["tokens_seen"] == straight.result["tokens_seen"]
    assert resumed["val_loss"] == straight.result["val_loss"]
    assert resumed["final_loss"] == straight.result["final_loss"]
    assert_same_weights(straight.out, tmp_path / "out")


def test_killed_run_replays_from_an_older_checkpoint(
    tmp_path: Path, corpus: Path, tokenizer: Path, straight: Trained
) -> None:
    stop_at(8, tmp_path, corpus, tokenizer)
    # As if the process had been killed during step 8, before its checkpoint was written.
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000008")
    cfg = PretrainConfig(**RESUME)
    resumed = run(
        cfg, inputs(corpus, tokenizer), tmp_path / "out", RecordingReporter(), work_dir=tmp_path
    )
    assert resumed["resumed_from_step"] == 5
    assert_same_weights(straight.out, tmp_path / "out")


def test_refusals(tmp_path: Path, corpus: Path, tokenizer: Path) -> None:
    cfg = PretrainConfig(**FAST, max_steps=3)
    out = tmp_path / "out"

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="no documents"):
        run(cfg, inputs(empty, tokenizer), out, RecordingReporter())
    with pytest.raises(CorpusError, match="at least one corpus file"):
        run(cfg, {"tokenizer": [tokenizer]}, out, RecordingReporter())

    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    with pytest.raises(ValueError, match="fewer than one window of context_length"):
        run(cfg, inputs(short, tokenizer), out, RecordingReporter())

    too_long = cfg.model_copy(update={"context_length": 2 * TOKENIZER_MAX_LENGTH})
    with pytest.raises(ValueError, match="model_max_length"):
        run(too_long, inputs(corpus, tokenizer), out, RecordingReporter())

    with pytest.raises(ValueError, match="exactly one tokenizer folder"):
        run(cfg, {"corpus": [corpus]}, out, RecordingReporter())
    assert not (out / "orchard.json").exists()


def test_refuses_a_tokenizer_without_end_of_text(tmp_path: Path, corpus: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"])
    backend.train_from_iterator(["some text to learn from"] * 10, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(
        tmp_path / "tok"
    )
    cfg = PretrainConfig(**FAST, max_steps=3)
    with pytest.raises(ValueError, match=r"no <\|endoftext\|> token"):
        run(cfg, inputs(corpus, tmp_path / "tok"), tmp_path / "out", RecordingReporter())


def test_refuses_to_resume_with_another_vocabulary(
    tmp_path: Path, corpus: Path, tokenizer: Path
) -> None:
    cfg = PretrainConfig(**FAST, max_steps=6, checkpoint_every=3)
    work = tmp_path / "work"
    stopping = RecordingReporter(stop_after_progress_calls=3)
    assert run(cfg, inputs(corpus, tokenizer), tmp_path / "out", stopping, work_dir=work)[
        "stopped_early"
    ]

    other = make_tokenizer(tmp_path / "other", corpus, 512)
    with pytest.raises(
        ValueError, match=f"vocabulary of {VOCAB} tokens, but the tokenizer has 512"
    ):
        run(cfg, inputs(corpus, other), tmp_path / "out", RecordingReporter(), work_dir=work)

    bigger = cfg.model_copy(update={"preset": "mini"})
    with pytest.raises(ValueError, match="trained with preset 'tiny'"):
        run(bigger, inputs(corpus, tokenizer), tmp_path / "out", RecordingReporter(), work_dir=work)


def test_bf16_autocast_and_gradient_accumulation(
    tmp_path: Path, corpus: Path, tokenizer: Path
) -> None:
    cfg = PretrainConfig(
        **{**FAST, "max_steps": 4, "grad_accum_steps": 2, "dtype": "bf16", "val_fraction": 0.0}
    )
    reporter = RecordingReporter()
    result = run(cfg, inputs(corpus, tokenizer), tmp_path / "out", reporter)
    assert result["dtype"] == "bf16"
    assert result["tokens_seen"] == 4 * 2 * 4 * 32
    assert result["val_loss"] is None and result["val_tokens"] == 0  # nothing held out
    assert math.isfinite(result["final_loss"])


# ----------------------------------------------------------------------- device and the shell


def test_bf16_trains_as_well_as_fp32(tmp_path: Path, corpus: Path, tokenizer: Path) -> None:
    """bf16 autocast only lowers the precision of matmul inputs: the same run in each precision
    ends at about the same loss (what "auto" choosing bf16 on some CPUs relies on)."""
    losses = {}
    for dtype in ("fp32", "bf16"):
        cfg = PretrainConfig(
            **{**FAST, "max_steps": 60, "log_every": 60, "dtype": dtype, "val_fraction": 0.0}
        )
        result = run(cfg, inputs(corpus, tokenizer), tmp_path / dtype, RecordingReporter())
        assert result["dtype"] == dtype
        losses[dtype] = result["final_loss"]
    assert losses["fp32"] < math.log(VOCAB) - 0.6  # both learned something...
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.01)  # ...and the same amount


@pytest.mark.parametrize(
    ("flags", "oneDNN", "expected"),
    [
        ("fpu sse avx2 avx512f avx512bw avx512_bf16", True, "bf16"),  # Zen 4 and newer
        ("fpu sse avx2 avx512f amx_bf16 amx_tile", True, "bf16"),  # Sapphire Rapids and newer
        ("fpu sse avx2 avx512f avx512bw avx512_vnni", True, "fp32"),  # AVX-512: bf16 emulated
        ("fpu sse avx2", False, "fp32"),
        ("fpu sse avx2 avx512_bf16", False, "fp32"),  # a torch build without oneDNN bf16
    ],
)
def test_auto_precision_on_a_cpu_follows_its_bf16_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, oneDNN: bool, expected: str
) -> None:
    import torch

    from training.core import device as device_module

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(
        device_module, "_cpu_flags", lambda: device_module._read_cpu_flags(str(cpuinfo))
    )
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: oneDNN)
    cpu = torch.device("cpu")
    assert device_module.dtype_name(device_module.autocast_dtype(cpu, "auto")) == expected
    assert device_module.autocast_dtype(cpu, "fp32") is None  # asking decides, whatever the CPU
    assert device_module.autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert device_module.describe_device(cpu)["bf16_matmul"] is (expected == "bf16")


def test_cpu_flags_where_there_is_no_cpuinfo(tmp_path: Path) -> None:
    from training.core.device import _read_cpu_flags

    assert _read_cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_device_choice_on_this_machine() -> None:
    import torch

    from training.core.device import autocast_dtype, describe_device, pick_device

    cpu = pick_device("cpu")
    assert cpu.type == "cpu"
    native = describe_device(cpu)["bf16_matmul"]
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if native else None)
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    info = describe_device(cpu)
    json.dumps(info)
    assert info["type"] == "cpu" and info["threads"] >= 1


def test_pretrain_runs_from_the_shell(tmp_path: Path, corpus: Path, tokenizer: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**FAST, "max_steps": 3}))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["OMP_NUM_THREADS"] = "1"  # as in the one_thread fixture
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.core",
            "pretrain",
            "--config",
            str(config),
            "--input",
            f"corpus={corpus}",
            "--input",
            f"tokenizer={tokenizer}",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] == 3
    assert "[metrics]" in done.stderr
    assert (tmp_path / "out" / "orchard.json").is_file()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_benchmark_quick_path_runs(dtype: str) -> None:
    from training.core.bench.pretrain import main

    shape = ["--batch-size", "2", "--context", "32", "--vocab", "512"]
    report = main(["--quick", "--dtype", dtype, *shape])
    json.dumps(report)
    assert report["orchard"]["dtype"] == report["matmul_ceiling"]["dtype"] == dtype
    # In bf16 the same step is also timed in fp32, to tell the step's gain from bf16's.
    assert ("orchard_in_fp32" in report) is (dtype == "bf16")
    if dtype == "bf16":
        in_fp32 = report["orchard_in_fp32"]
        assert in_fp32["speedup"] == pytest.approx(
            in_fp32["tokens_per_sec"] / report["reference"]["tokens_per_sec"], rel=1e-2
        )
    assert report["quick"] and report["shape"]["tokens_per_step"] == 64
    assert report["reference"]["tokens_per_sec"] > 0 and report["orchard"]["tokens_per_sec"] > 0
    assert report["speedup"] > 0
    assert abs(report["initial_loss"]["reference"] - report["initial_loss"]["orchard"]) < 0.05
    ceiling = report["matmul_ceiling"]
    assert ceiling["seconds_per_step"] > 0
    assert ceiling["tokens_per_sec"] == pytest.approx(64 / ceiling["seconds_per_step"], rel=1e-3)
    assert ceiling["orchard_share"] == pytest.approx(
        report["orchard"]["tokens_per_sec"] / ceiling["tokens_per_sec"], rel=1e-2
    )


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_the_benchmarks_matmul_ceiling_times_exactly_the_counted_flops(kv_heads: int) -> None:
    from transformers import LlamaConfig

    from training.core.bench.pretrain import step_matmuls
    from training.core.model import flops_per_token

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32,
    )
    batch, context = 2, 32
    flops = 0
    for left, right in step_matmuls(config, batch, context):
        assert left[:-2] == right[:-2] and left[-1] == right[-2]  # a valid (batched) product
        flops += 2 * math.prod(left) * right[-1]
    assert flops == flops_per_token(config, context) * batch * context


@pytest.mark.slow
def test_compiled_step_matches_eager_loss(tmp_path: Path, corpus: Path, tokenizer: Path) -> None:
    """torch.compile (tens of seconds on a CPU) trains the same model to nearly the same loss."""
    cfg = PretrainConfig(**FAST, max_steps=6, val_fraction=0.0)
    eager = run(cfg, inputs(corpus, tokenizer), tmp_path / "eager", RecordingReporter())
    compiled_cfg = cfg.model_copy(update={"compile": True})
    compiled = run(compiled_cfg, inputs(corpus, tokenizer), tmp_path / "c", RecordingReporter())
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], abs=1e-3)
