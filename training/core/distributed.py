"""Several processes for one training run: start them with torchrun, relay what they report.

Two halves, both without Django.

**The launcher** (:func:`launch`) runs in the process that owns the run: a Celery worker's run
process, or the shell. It starts ::

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m training.core.distributed ENTRY --config ... --input name=path ... --out ... \\
        --work-dir ... --events ... --stop-file ... --supervisor-pid ...

in a session of its own, with the files under ``work_dir/distributed/``: ``config.json``,
``events.jsonl`` (JSON lines the processes append: progress, metrics, log lines, records, the
result, errors), ``stop`` (created to ask them to stop), ``processes.log`` (everything they and
torchrun print, each process's lines marked ``[default<rank>]:``) and ``ranks/`` (torchrun's
copy of each process's output). It forwards each event to its reporter as it arrives. When the
reporter's ``should_stop()`` turns true it creates the stop file; the entry checkpoints and
returns at its next step, and processes still running ``grace`` seconds later are terminated
(SIGTERM to torchrun, which passes it on; SIGKILL to everything when that is not enough). The
processes are also terminated when the launcher itself fails, and stop by themselves when the
launcher disappears. A failed process becomes :class:`ProcessesFailed` naming the process, its
error and the last lines it printed.

**The process side** (:func:`main`, what torchrun starts in every process) reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment, which torchrun and ``accelerate launch``
both set, and calls the entry (``pretrain``, or any ``module:function``) as
``entry(config: dict, inputs, out_dir, reporter, work_dir=...)``. Rank 0 reports through the
events file (or prints like ``python -m training.core`` when started without one); the other
ranks report nothing. An entry sets up torch.distributed with :func:`process_group`: NCCL with
one GPU per process (``cuda:LOCAL_RANK``) on CUDA, gloo on the CPU; :class:`RankGroup` holds the
few collectives a training loop needs and does nothing when there is only one process.

From the shell, without Orchard's launcher::

    torchrun --standalone --nproc_per_node 4 -m training.core.distributed pretrain \\
        --config cfg.json --input corpus=corpus.txt --input tokenizer=tok/ --out model/
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from training.core.__main__ import parse_inputs
from training.core.reporting import Cancelled, ConsoleReporter, Reporter

if TYPE_CHECKING:  # torch loads only where a collective runs, never for the launcher's imports
    import torch

T = TypeVar("T")

# Entries by short name; anything else is given as "module:function".
ENTRIES: dict[str, str] = {"pretrain": "training.core.pretrain:run_rank"}
FOLDER = "distributed"  # under the run's work folder
POLL_SECONDS = 0.2  # how often the launcher reads new events and asks its reporter to stop
# A stopping entry finishes its step and writes a checkpoint; for a large model on a slow disk
# that can take minutes, and killing it half-way would lose the progress since the last one.
STOP_GRACE_SECONDS = 300.0
# torchrun gives its processes 30 s after passing SIGTERM on, then kills them itself.
TERMINATE_WAIT_SECONDS = 40.0
# How long a process waits for the others at a decision. The longest legitimate wait is rank 0
# tokenizing a corpus (when started without the launcher, which tokenizes first) and no
# shorter limit is safe for that; a process that dies instead ends the launch through torchrun.
CONTROL_TIMEOUT = timedelta(hours=24)
TAIL_LINES = 30
TAIL_CHARS = 1500  # the error message keeps the tail short: a run's error field is 2000 chars
TRACEBACK_CHARS = 4000
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # holds training/: the processes import it


class ProcessesFailed(RuntimeError):
    """One of the training processes failed, or they ended without a result."""


# ------------------------------------------------------------------------------ process count


def resolve_processes(requested: int, device: torch.device) -> int:
    """How many processes to start for a config's ``processes`` on ``device``.

    0 means one per visible CUDA GPU (so one on a machine without). Several processes need one
    GPU each on CUDA; on the CPU they share the cores (gloo), which is mostly useful for tests;
    Apple's MPS has no backend for collectives.
    """
    import torch

    if requested == 0:
        return max(1, torch.cuda.device_count()) if device.type == "cuda" else 1
    if requested == 1:
        return 1
    if device.type == "mps":
        raise ValueError("several processes need CUDA GPUs or the CPU; MPS cannot be shared")
    if device.type == "cuda" and requested > torch.cuda.device_count():
        raise ValueError(
            f"processes {requested} needs one CUDA GPU each, but {torch.cuda.device_count()} "
            "are visible: lower processes, or use 0 for one per GPU"
        )
    return requested


def rank_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun or ``accelerate launch`` set them."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


# ------------------------------------------------------------------------------- collectives


@dataclass(frozen=True)
class RankGroup:
    """This process's place among the training processes, and the collectives the loop uses.

    With one process every method returns its input unchanged, so a single-process run does
    exactly what it did before several were possible. Decisions (``any``, ``broadcast``,
    ``barrier``) go through ``control``, a gloo group on the CPU with a long timeout (see
    CONTROL_TIMEOUT): under NCCL they would run on the GPU, and reading their answer would wait
    for all the GPU work queued before them.
    """

    rank: int = 0
    world_size: int = 1
    device: Any = None  # torch.device of this process
    control: Any = None  # the gloo process group for decisions

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, batch_size: int) -> slice | None:
        """This process's rows of a global batch (None: all of them)."""
        if not self.distributed:
            return None
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any: decisions all must take together."""
        if not self.distributed:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a device tensor over the processes (``value`` itself is left alone)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every process (pickled: small objects only)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


@contextmanager
def process_group(device: torch.device) -> Iterator[RankGroup]:
    """Join the other processes (when torchrun started several) for the ``with`` block.

    On CUDA each process takes the GPU of its local rank and NCCL; on the CPU, gloo.
    """
    rank, world_size, local_rank = rank_environment()
    if world_size == 1:
        yield RankGroup(device=device)
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {local_rank} has no GPU of its own: {torch.cuda.device_count()} visible"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ValueError(f"several processes need CUDA GPUs or the CPU, not {device.type}")
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    try:
        yield RankGroup(rank=rank, world_size=world_size, device=device, control=control)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ events


class EventWriter:
    """Appends JSON lines to the events file; every process of a run may write to it.

    Each event is one ``write`` on a file opened with O_APPEND, so lines from different
    processes do not interleave.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event, ensure_ascii=False, default=_plain) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data) :]


def _plain(value: Any) -> Any:
    """numpy and torch scalars as Python numbers; anything else as its text."""
    try:
        return value.item()
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return str(value)


class EventReporter:
    """Rank 0's reporter: every call becomes an event; stopping is asked through a file.

    It also stops when the launcher (``supervisor_pid``) or torchrun (this process's parent)
    is gone, so that processes left behind by a killed worker checkpoint and end instead of
    training on unobserved.
    """

    def __init__(
        self, writer: EventWriter, stop_file: Path | None, supervisor_pid: int | None
    ) -> None:
        self.writer = writer
        self.stop_file = stop_file
        self.supervisor_pid = supervisor_pid
        self.parent_pid = os.getppid()
        self._stopping = False

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        self.writer.write({"event": "progress", "step": step, "total": total, "message": message})

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.writer.write({"event": "metrics", "values": values, "step": step})

    def log(self, line: str) -> None:
        self.writer.write({"event": "log", "line": line})

    def record(self, name: str, payload: dict[str, Any], step: int) -> None:
        self.writer.write({"event": "record", "name": name, "payload": payload, "step": step})

    def should_stop(self) -> bool:
        if not self._stopping:
            self._stopping = (
                (self.stop_file is not None and self.stop_file.exists())
                or (self.supervisor_pid is not None and not _alive(self.supervisor_pid))
                or os.getppid() != self.parent_pid
            )
        return self._stopping


class QuietReporter:
    """The other ranks' reporter: rank 0 speaks for the run."""

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        pass

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def log(self, line: str) -> None:
        pass

    def record(self, name: str, payload: dict[str, Any], step: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False  # rank 0 decides, and every rank follows through RankGroup.any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class EventRelay:
    """Reads the events file from where it left off and hands each event to ``reporter``."""

    def __init__(self, path: Path, reporter: Reporter) -> None:
        self.path = path
        self.reporter = reporter
        self.offset = 0
        self.partial = b""  # a line still being written
        self.result: dict[str, Any] | None = None
        self.errors: list[dict[str, Any]] = []
        self.pids: dict[int, int] = {}  # rank -> process id

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if line.strip():
                self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind = event["event"]
        except (ValueError, KeyError, TypeError):
            self.reporter.log(line.decode("utf-8", "replace"))
            return
        if kind == "progress":
            self.reporter.progress(event["step"], event.get("total"), event.get("message", ""))
        elif kind == "metrics":
            self.reporter.metrics(event["values"], event["step"])
        elif kind == "log":
            self.reporter.log(event["line"])
        elif kind == "record":
            self.reporter.record(event["name"], event["payload"], event["step"])
        elif kind == "result":
            self.result = event["result"]
        elif kind == "error":
            self.errors.append(event)
        elif kind == "started":
            self.pids[int(event["rank"])] = int(event["pid"])


# ---------------------------------------------------------------------------------- launcher


@dataclass(frozen=True)
class LaunchFiles:
    """The files through which the launcher and the processes talk, in one folder."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "config.json"

    @property
    def events(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def stop(self) -> Path:
        return self.folder / "stop"

    @property
    def log(self) -> Path:
        return self.folder / "processes.log"

    @property
    def ranks(self) -> Path:
        return self.folder / "ranks"  # torchrun's log folder: each process's output

    def reset(self) -> None:
        """Forget an earlier attempt: its stop file would stop this one at once."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in (self.events, self.stop, self.log):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.ranks, ignore_errors=True)


def torchrun_command(processes: int, program: Sequence[str], log_dir: Path) -> list[str]:
    """``torchrun --standalone`` through this interpreter, so the processes use the same venv.

    ``program`` is ``["-m", module, *args]`` or ``[script, *args]``. --standalone runs the
    rendezvous on this machine on a free port, so several runs can share one. ``--tee 3``
    prefixes every line a process prints with ``[default<local rank>]:``, which is how a
    failure's message finds the failed process's own lines; torchrun also keeps each process's
    output under ``log_dir`` (without one it leaves a folder in /tmp per launch).
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "--tee=3",
        f"--log-dir={log_dir}",
        *program,
    ]


def child_environment(processes: int) -> dict[str, str]:
    """The launcher's environment, plus what the processes need to import and print promptly."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # the log tail of a failure must hold the last lines
    # torchrun would set one thread per process; on a CPU the processes share the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env


def launch(
    entry: str,
    *,
    processes: int,
    config: dict[str, Any],
    inputs: dict[str, list[Path]],
    out_dir: Path,
    work_dir: Path,
    reporter: Reporter,
    grace: float = STOP_GRACE_SECONDS,
) -> dict[str, Any]:
    """Run ``entry`` in ``processes`` processes under torchrun; return rank 0's result.

    Raises Cancelled when the processes had to be terminated after a stop request, and
    ProcessesFailed when one of them failed.
    """
    files = LaunchFiles(Path(work_dir) / FOLDER)
    files.reset()
    files.config.write_text(json.dumps(config, ensure_ascii=False))
    program = [
        "-m",
        "training.core.distributed",
        entry,
        f"--config={files.config}",
        *(f"--input={name}={path}" for name, paths in inputs.items() for path in paths),
        f"--out={out_dir}",
        f"--work-dir={work_dir}",
        f"--events={files.events}",
        f"--stop-file={files.stop}",
        f"--supervisor-pid={os.getpid()}",
    ]
    reporter.log(f"starting {processes} training processes with torchrun (output: {files.log})")
    return supervise(
        torchrun_command(processes, program, files.ranks),
        files=files,
        reporter=reporter,
        env=child_environment(processes),
        grace=grace,
    )


def supervise(
    command: list[str],
    *,
    files: LaunchFiles,
    reporter: Reporter,
    env: dict[str, str] | None = None,
    grace: float = STOP_GRACE_SECONDS,
    poll: float = POLL_SECONDS,
) -> dict[str, Any]:
    """Run ``command`` (torchrun) to its end, relaying events and stop requests."""
    relay = EventRelay(files.events, reporter)
    stop_asked: float | None = None
    with open(files.log, "ab") as log:
        # A session of its own: a signal for the worker does not reach torchrun directly,
        # and torchrun's group can be signalled as a whole.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        while proc.poll() is None:
            relay.poll()
            if stop_asked is None and reporter.should_stop():
                files.stop.touch()
                stop_asked = time.monotonic()
                reporter.log("stop requested: the training processes checkpoint and end")
            elif stop_asked is not None and time.monotonic() - stop_asked > grace:
                reporter.log(f"the training processes did not end within {grace:g} s: killing them")
                terminate(proc, relay.pids.values())
            time.sleep(poll)
    finally:
        if proc.poll() is None:  # the launcher itself failed or was interrupted
            terminate(proc, relay.pids.values())
    relay.poll()
    if proc.returncode == 0 and relay.result is not None:
        return relay.result
    if stop_asked is not None:
        raise Cancelled()
    raise ProcessesFailed(_failure(proc.returncode, relay, files, reporter))


def terminate(proc: subprocess.Popen, rank_pids: Iterable[int]) -> None:
    """SIGTERM torchrun, which stops its processes; SIGKILL everything if that is not enough.

    torchrun starts every process in a session of its own, so killing torchrun's group does
    not reach them: the processes are killed by the ids they announced.
    """
    pids = list(rank_pids)
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=TERMINATE_WAIT_SECONDS)
        return
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, sig)


def _failure(code: int, relay: EventRelay, files: LaunchFiles, reporter: Reporter) -> str:
    """The error of a failed launch: which process failed with what, and the last lines it
    printed (its traceback, not torchrun's summary); without an error from a process (killed,
    crashed), the last lines torchrun printed, which say how each process ended."""
    if relay.errors:
        first = relay.errors[0]
        head = f"training process {first.get('rank')} failed: {first.get('error')}"
        tail = log_tail(files.log, prefix=f"[default{first.get('local_rank')}]:")
        tail = tail or str(first.get("traceback", "")).rstrip()
    else:
        head = (
            "the training processes ended without a result"
            if code == 0
            else f"the training processes failed (torchrun exit code {code})"
        )
        tail = log_tail(files.log)
    reporter.log(f"{head}; last lines of its output ({files.log}):")
    for line in tail.splitlines():
        reporter.log(line)
    return f"{head}\nlast lines of its output ({files.log}):\n{tail[-TAIL_CHARS:]}"


def log_tail(path: Path, lines: int = TAIL_LINES, prefix: str | None = None) -> str:
    """The last ``lines`` lines of a log that may be large; with ``prefix``, of the lines that
    start with it (torchrun's ``--tee`` marks each process's lines so), without the prefix."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            found = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    if prefix is not None:
        found = [line.removeprefix(prefix) for line in found if line.startswith(prefix)]
    return "\n".join(found[-lines:]).rstrip()


# ------------------------------------------------------------------------------ process side


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.core.distributed",
        description="One training process of several (start it with torchrun).",
    )
    parser.add_argument("entry", help=f"{', '.join(ENTRIES)} or module:function")
    parser.add_argument("--config", type=Path, help="JSON file with the stage config")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--work-dir", type=Path, help="checkpoints and data (default: OUT/.work)")
    parser.add_argument("--events", type=Path, help="append JSON-line events here (rank 0)")
    parser.add_argument("--stop-file", type=Path, help="stop when this file appears")
    parser.add_argument("--supervisor-pid", type=int, help="stop when this process is gone")
    return parser


def load_entry(name: str) -> Callable[..., dict[str, Any]]:
    module, sep, function = ENTRIES.get(name, name).partition(":")
    if not sep:
        raise ValueError(
            f"unknown entry {name!r}: expected {', '.join(ENTRIES)} or module:function"
        )
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, _world_size, local_rank = rank_environment()
    writer = EventWriter(args.events) if args.events else None
    if writer is not None:
        writer.write({"event": "started", "rank": rank, "pid": os.getpid()})
    reporter: Reporter = QuietReporter()
    if rank == 0:
        reporter = (
            EventReporter(writer, args.stop_file, args.supervisor_pid)
            if writer is not None
            else ConsoleReporter()
        )
    try:
        entry = load_entry(args.entry)
        config = json.loads(args.config.read_text()) if args.config else {}
        inputs = parse_inputs(args.input)  # the same name=path pairs as python -m training.core
        result = entry(config, inputs, args.out, reporter, work_dir=args.work_dir)
    except Exception as exc:
        if writer is not None:  # the launcher names this error instead of torchrun's summary
            writer.write(
                {
                    "event": "error",
                    "rank": rank,
                    "local_rank": local_rank,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-TRACEBACK_CHARS:],
                }
            )
        raise
    if rank == 0:
        if writer is not None:
            writer.write({"event": "result", "result": result})
        else:
            print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from training.core.allocator import keep_freed_memory

    keep_freed_memory()  # each process runs its share of one run and exits
    sys.exit(main())
