"""Data-parallel pretraining: processes started with torchrun on the CPU (gloo), relayed reports,
failures and cancellation. Entries defined here run inside torchrun's processes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.core.test_pretrain import FAST, make_tokenizer, shakespeare_slice, weights
from training.core import distributed
from training.core.checkpoints import list_complete
from training.core.pretrain import PretrainConfig, WindowSampler, run
from training.core.reporting import Cancelled, RecordingReporter

# Two micro-batches per step (exercising no_sync), evaluation, samples and checkpoints. In fp32
# whatever the CPU: bf16 rounds each half-batch product on its own, which the tolerance below
# could not tell from a wrong split.
SMALL = {
    **FAST,
    "dtype": "fp32",
    "max_steps": 6,
    "grad_accum_steps": 2,
    "eval_every": 3,
    "eval_batches": 1,
    "sample_every": 6,
    "sample_prompts": "ROMEO:",
    "sample_max_new_tokens": 4,
    "checkpoint_every": 3,
}
# Both runs add up the same per-token losses in another order (two halves, averaged across the
# processes, instead of one mean), so the gradients differ in the last bits of fp32. Adam divides
# each by the root of its second moment, which magnifies that for gradients near zero. Measured:
# the weights differ by at most 5.4e-6 after 6 steps and after 30, while one process on half the
# batch (a wrong split) ends 2e-2 away; 2e-5 leaves a margin for other CPUs' summation order.
# Adam hides a gradient that is twice too large (a sum instead of a mean over the processes)
# from the weights, but not from the reported grad_norm, compared below.
ATOL = 2e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread per process, in this process and (through OMP_NUM_THREADS) in torchrun's.

    Two processes of two threads on a busy two-core machine wait for each other at every step.
    """
    import torch

    before_threads, before_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before_threads)
    if before_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before_env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shakespeare_slice(tmp_path_factory.mktemp("corpus") / "shakespeare.txt", 60_000)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"), corpus, 512)


def inputs(corpus: Path, tokenizer: Path) -> dict[str, list[Path]]:
    return {"corpus": [corpus], "tokenizer": [tokenizer]}


@pytest.fixture(scope="module")
def one_process(
    tmp_path_factory: pytest.TempPathFactory, corpus: Path, tokenizer: Path
) -> tuple[Path, RecordingReporter, dict[str, Any]]:
    """The in-process run that the processes must reproduce."""
    out = tmp_path_factory.mktemp("one") / "out"
    reporter = RecordingReporter()
    result = run(PretrainConfig(**SMALL), inputs(corpus, tokenizer), out, reporter)
    return out, reporter, result


def assert_close_weights(expected_dir: Path, actual_dir: Path) -> None:
    expected, actual = weights(expected_dir), weights(actual_dir)
    assert expected.keys() == actual.keys()
    worst = max((expected[k] - actual[k]).abs().max().item() for k in expected)
    assert worst <= ATOL, f"largest weight difference {worst:.3g}"


def started_pids(work: Path) -> list[int]:
    events = (work / distributed.FOLDER / "events.jsonl").read_text().splitlines()
    return [json.loads(e)["pid"] for e in events if json.loads(e)["event"] == "started"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ------------------------------------------------------------------------- without processes


def test_processes_config() -> None:
    assert PretrainConfig().processes == 1
    assert PretrainConfig(processes=0, batch_size=6).processes == 0  # one per GPU, at run time
    assert PretrainConfig(processes=4, batch_size=8).processes == 4
    for data in ({"processes": 3, "batch_size": 16}, {"processes": 65}, {"processes": -1}):
        with pytest.raises(ValidationError) as exc:
            PretrainConfig.model_validate(data)
        assert [err["loc"] for err in exc.value.errors()] == [("processes",)]


def test_resolve_processes() -> None:
    import torch

    cpu = torch.device("cpu")
    assert distributed.resolve_processes(0, cpu) == 1  # no GPUs: one process, in the worker
    assert distributed.resolve_processes(1, cpu) == 1
    assert distributed.resolve_processes(2, cpu) == 2  # gloo on the CPU
    with pytest.raises(ValueError, match="MPS"):
        distributed.resolve_processes(2, torch.device("mps"))
    if torch.cuda.device_count() < 64:
        with pytest.raises(ValueError, match="one CUDA GPU each"):
            distributed.resolve_processes(64, torch.device("cuda"))


def test_each_process_reads_its_share_of_the_same_batch() -> None:
    import numpy as np
    import torch

    tokens = np.arange(1000, dtype=np.uint16)

    def sampler() -> WindowSampler:
        return WindowSampler(tokens, 9, torch.Generator().manual_seed(7))

    whole, shares = sampler(), [sampler(), sampler()]
    groups = [distributed.RankGroup(rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):  # the generators stay in step batch after batch
        expected = whole.batch(6)
        parts = [s.batch(6, g.rows(6)) for s, g in zip(shares, groups, strict=True)]
        assert torch.equal(torch.cat(parts), expected)
    assert distributed.RankGroup().rows(6) is None


def test_events_travel_from_the_processes_to_the_reporter(tmp_path: Path) -> None:
    files = distributed.LaunchFiles(tmp_path)
    files.reset()
    writer = distributed.EventWriter(files.events)
    writer.write({"event": "started", "rank": 1, "pid": 4321})
    speaker = distributed.EventReporter(writer, files.stop, supervisor_pid=os.getpid())
    speaker.progress(1, 10)
    speaker.metrics({"loss": 2.5}, 1)
    speaker.log("hello")
    speaker.record("samples", {"samples": [{"prompt": "a", "text": "b"}]}, 1)
    listener = RecordingReporter()
    relay = distributed.EventRelay(files.events, listener)
    with open(files.events, "ab") as fh:  # a line still being written is left for later
        fh.write(b'{"event": "log", "line": "half')
    relay.poll()
    assert listener.progress_calls == [(1, 10, "")]
    assert listener.metric_calls == [({"loss": 2.5}, 1)]
    assert listener.lines == ["hello"]
    assert listener.records == [("samples", {"samples": [{"prompt": "a", "text": "b"}]}, 1)]
    assert relay.pids == {1: 4321}
    with open(files.events, "ab") as fh:
        fh.write(b' done"}\n')
    writer.write({"event": "result", "result": {"steps": 1}})
    relay.poll()
    assert listener.lines == ["hello", "half done"] and relay.result == {"steps": 1}

    assert not speaker.should_stop()
    files.stop.touch()
    assert speaker.should_stop()


def test_the_command_runs_torchrun_from_this_environment(tmp_path: Path) -> None:
    import sys

    program = ["-m", "training.core.distributed", "pretrain"]
    command = distributed.torchrun_command(3, program, tmp_path)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--standalone", "--nproc_per_node=3", f"--log-dir={tmp_path}"} <= set(command)
    assert command[-3:] == program
    env = distributed.child_environment(3)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(distributed.PACKAGE_ROOT)


# --------------------------------------------------------------------- torchrun on the CPU


def test_two_processes_take_the_steps_of_one(
    tmp_path: Path,
    corpus: Path,
    tokenizer: Path,
    one_process: tuple[Path, RecordingReporter, dict[str, Any]],
) -> None:
    one_out, one_reporter, one = one_process
    reporter = RecordingReporter()
    cfg = PretrainConfig(**SMALL, processes=2)
    result = run(cfg, inputs(corpus, tokenizer), tmp_path / "out", reporter)

    assert_close_weights(one_out, tmp_path / "out")
    assert (result["steps"], result["processes"], result["stopped_early"]) == (6, 2, False)
    assert result["tokens_seen"] == one["tokens_seen"]
    assert result["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
    assert json.loads((tmp_path / "out" / "orchard.json").read_text())["metrics"] == result
    assert not (tmp_path / "out" / ".work").exists()  # removed after success, as with one

    # What rank 0 reported reached this process's reporter, once.
    assert [step for step, _total, _msg in reporter.progress_calls] == list(range(1, 7))
    steps = [(sorted(values), step) for values, step in reporter.metric_calls]
    assert steps == [(sorted(values), step) for values, step in one_reporter.metric_calls]
    for (two_values, _), (one_values, _) in zip(
        reporter.metric_calls, one_reporter.metric_calls, strict=True
    ):
        for name in ("loss", "val_loss", "val_bpb", "grad_norm"):
            if name in one_values:
                assert two_values[name] == pytest.approx(one_values[name], abs=1e-4)
    assert [(name, step) for name, _payload, step in reporter.records] == [("samples", 6)]
    assert any("2 processes, 2 windows each" in line for line in reporter.lines)
    assert any(line.startswith("starting 2 training processes") for line in reporter.lines)


class StopOnceStarted(RecordingReporter):
    """Asks to stop as soon as the launcher has started torchrun: before the processes' first
    step, since importing torch takes them seconds, so they stop after exactly one step."""

    def should_stop(self) -> bool:
        return any(line.startswith("starting 2 training processes") for line in self.lines)


@pytest.mark.slow  # a second torchrun launch of the pretraining: about 12 s on two busy cores
def test_cancel_checkpoints_the_processes_and_any_count_resumes(
    tmp_path: Path,
    corpus: Path,
    tokenizer: Path,
    one_process: tuple[Path, RecordingReporter, dict[str, Any]],
) -> None:
    one_out, _reporter, _result = one_process
    data = inputs(corpus, tokenizer)
    work = tmp_path / "work"
    # One process trains 2 steps; two resume from its checkpoint and are cancelled after one
    # more; one finishes the run from theirs. Every step matches the uninterrupted run.
    first = run(
        PretrainConfig(**SMALL),
        data,
        tmp_path / "out",
        RecordingReporter(stop_after_progress_calls=2),
        work_dir=work,
    )
    assert first["steps"] == 2 and first["stopped_early"]

    reporter = StopOnceStarted()
    began = time.monotonic()
    two = run(PretrainConfig(**SMALL, processes=2), data, tmp_path / "out", reporter, work_dir=work)
    assert (two["steps"], two["resumed_from_step"], two["stopped_early"]) == (3, 2, True)
    assert time.monotonic() - began < distributed.STOP_GRACE_SECONDS  # they stopped, not killed
    assert [c.step for c in list_complete(work / "checkpoints")] == [2, 3]
    assert any("stop requested" in line for line in reporter.lines)
    assert any("stopped at step 3" in line for line in reporter.lines)
    assert all(gone(pid) for pid in started_pids(work))
    assert not (tmp_path / "out" / "orchard.json").exists()

    last = run(PretrainConfig(**SMALL), data, tmp_path / "out", RecordingReporter(), work_dir=work)
    assert (last["steps"], last["resumed_from_step"]) == (6, 3)
    assert_close_weights(one_out, tmp_path / "out")


# ----------------------------------------------------------------- entries run by torchrun


def failing_entry(
    config: dict[str, Any], inputs: dict[str, list[Path]], out_dir: Path, reporter: Any, **_: Any
) -> dict[str, Any]:
    """Rank 1 fails at once; rank 0 would wait for ever."""
    rank, _world_size, _local = distributed.rank_environment()
    if rank == 1:
        raise ValueError("rank 1 cannot read its data")
    time.sleep(120)
    return {}


def stubborn_entry(
    config: dict[str, Any], inputs: dict[str, list[Path]], out_dir: Path, reporter: Any, **_: Any
) -> dict[str, Any]:
    """Never looks at the stop request."""
    reporter.log("working")
    time.sleep(120)
    return {}


def launch_entry(name: str, tmp_path: Path, reporter: Any, grace: float = 60.0) -> dict[str, Any]:
    return distributed.launch(
        f"tests.core.test_distributed:{name}",
        processes=2,
        config={},
        inputs={},
        out_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        reporter=reporter,
        grace=grace,
    )


def test_a_failing_process_fails_the_run_with_its_error(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    began = time.monotonic()
    with pytest.raises(distributed.ProcessesFailed) as exc:
        launch_entry("failing_entry", tmp_path, reporter)
    assert time.monotonic() - began < 60  # torchrun ended rank 0 instead of waiting for it
    message = str(exc.value)
    assert message.startswith("training process 1 failed: ValueError: rank 1 cannot read its data")
    # Then the failed process's own last lines (its traceback), not torchrun's summary.
    head, tail = message.split("\n", 1)
    assert "processes.log" in tail and 'raise ValueError("rank 1 cannot' in tail
    assert "ChildFailedError" not in tail
    assert len(message) < 2000  # fits the run's error field whole
    assert any('raise ValueError("rank 1 cannot read its data")' in line for line in reporter.lines)
    assert all(gone(pid) for pid in started_pids(tmp_path / "work"))


def test_processes_that_ignore_a_stop_are_terminated(tmp_path: Path) -> None:
    class StopOnceWorking(RecordingReporter):
        def should_stop(self) -> bool:
            return "working" in self.lines

    reporter = StopOnceWorking()
    began = time.monotonic()
    with pytest.raises(Cancelled):
        launch_entry("stubborn_entry", tmp_path, reporter, grace=0.5)
    assert time.monotonic() - began < 60
    assert (tmp_path / "work" / distributed.FOLDER / "stop").exists()
    assert any("killing them" in line for line in reporter.lines)
    pids = started_pids(tmp_path / "work")
    assert len(pids) == 2 and all(gone(pid) for pid in pids)
