"""Run untrusted Python (a model's tool call, a user's snippet) in a separate, limited interpreter.

:func:`run_python` starts ``python -I -S -B`` (isolated: no environment variables, no user or
site packages, no bytecode written) in a fresh temporary directory, which becomes its working
directory and is deleted afterwards, with an environment holding only ``LC_ALL``, ``PATH``,
``HOME`` and ``TMPDIR`` (no proxies, no tokens). The code arrives on a pipe, never on the
command line. Its output comes back on a private pipe, one nonce-tagged message per write, so
what was printed before a timeout or a crash is kept; printing beyond ``max_output_chars`` is
counted but not sent, and the result carries a note that it was truncated.

Limits, in the order the child applies them:

1. rlimits (hard = soft, so the code cannot raise them): CPU seconds (``timeout_s`` rounded up,
   plus one), address space (``memory_mb``: a 10 GB allocation is a ``MemoryError``), file size
   (:data:`MAX_FILE_BYTES`; a bigger write fails with ``EFBIG``), 64 open files, no core files and
   ``RLIMIT_NPROC`` 0: the kernel refuses ``fork``, ``clone`` and new threads (for a non-root
   user; root is exempt, see 2). Wall clock: the parent kills the child's whole process group
   (``start_new_session``) at ``timeout_s`` (interpreter start included); a ``SIGALRM`` two
   seconds later is the child's own backstop, should the parent die.
2. Common modules are imported (math, json, re, collections, itertools, fractions, decimal,
   statistics, random, datetime, heapq, ...; see ``_PRELOADED``), then a child started by root
   becomes ``nobody`` (uid/gid 65534, no supplementary groups; the working directory is given to
   it), so file permissions apply and ``RLIMIT_NPROC`` is enforced. An interpreter installed
   under a directory ``nobody`` cannot read (``/root/.pyenv``) then cannot import anything new.
3. The standard streams: stdin is the ``stdin`` argument (``io.StringIO``), file descriptors 0
   and 1 are ``/dev/null``, ``sys.stdout`` and ``sys.stderr`` are the capped writers. ``exit()`` and
   ``quit()`` are defined (``-S`` leaves them out).
4. ``sys.modules`` entries for ``socket``, ``_socket``, ``ssl``, ``_ssl``, ``subprocess``,
   ``_posixsubprocess``, ``multiprocessing``, ``ctypes``, ``_ctypes``, ``pty``, ``sqlite3``, ...
   (``_DENIED_MODULES``) are set to ``None``: importing them raises ``ImportError``.
5. An audit hook (``sys.addaudithook``; it cannot be removed from Python) raises
   ``PermissionError`` for:

   - any ``import`` of a module in ``_DENIED_MODULES`` (after ``del sys.modules[...]``);
   - every ``socket.*`` event (creating a socket, connect, bind, getaddrinfo, ...), and the
     ``ctypes.*``, ``ssl.*``, ``sqlite3.*``, ``urllib.*``, ``http.*``, ``ftplib.*``, ``smtplib.*``,
     ``poplib.*``, ``imaplib.*``, ``nntplib.*``, ``telnetlib.*``, ``webbrowser.*``, ``fcntl.*``,
     ``resource.*``, ``syslog.*`` and ``pty.*`` events;
   - starting or signalling processes: ``subprocess.Popen``, ``os.system``, ``os.exec*``,
     ``os.spawn*``, ``os.posix_spawn*``, ``os.fork``, ``os.forkpty``, ``os.kill``,
     ``os.killpg``, ``signal.pthread_kill``;
   - tampering with the interpreter: ``object.__setattr__`` / ``object.__delattr__`` events
     (replacing a function's ``__code__`` or ``__defaults__``, a class's ``__bases__``),
     ``code.__new__`` (hand-made bytecode), ``marshal.load(s)`` (``sys.pycache_prefix`` points
     nowhere so imports compile from source instead), ``gc.get_objects``,
     ``gc.get_referrers``, ``gc.get_referents``, ``sys._current_frames``;
   - files: ``open`` (``open()``, ``io.open_code``, ``os.open``) for writing anywhere but the
     working directory (and ``/dev/null``); for reading anywhere but the working directory, the
     standard library's directories (``sys.path`` at start), ``/dev/null`` and
     ``/dev/urandom``; a file descriptor number instead of a path. ``os.listdir``,
     ``os.scandir``, ``os.walk``, ``glob.glob``, ``os.getxattr`` and ``os.listxattr`` follow the
     reading rule; ``os.chdir``, ``os.mkdir``, ``os.rmdir``, ``os.remove``, ``os.rename``,
     ``os.truncate``, ``os.chmod``, ``os.chown``, ``os.utime``, the ``*xattr`` setters and the
     ``shutil.*`` and ``tempfile.*`` events the writing rule; ``os.symlink`` and ``os.link`` are
     refused outright (no links can lead out of the working directory). Paths are judged
     lexically: relative ones against the working directory and only without ``..``
     components (so a ``dir_fd``, which the hook does not see, cannot lead out), absolute ones
     after ``.`` and ``..`` are resolved. The hook keeps its state in default arguments
     (tuples and C functions), so patching ``os``, ``posixpath`` or ``builtins`` does not change
     its decisions. ``os.stat`` and ``os.path.exists`` raise no audit event: whether a path
     exists can be learned anywhere.

   Allowed: everything else in Python, reading and writing files inside the working directory
   (each file at most :data:`MAX_FILE_BYTES`), ``tempfile`` (``TMPDIR`` is the working
   directory), ``sys._getframe`` and frame objects (typing and dataclasses need them).

This is defence in depth for a process on the same machine, not a container. A
determined attacker can escape a same-user CPython: there are known ways to corrupt memory from
pure Python, the ``SIGALRM`` backstop can be switched off, a file's existence can be probed, and
when the worker is not root the code runs as the worker's own user (it could, for example, read
what that user can read through an open descriptor it finds). Production should run the worker
that calls :func:`run_python` in a container or VM without network access and without secrets.
What it does make fail, with a clear message: ``open('/etc/passwd')``, ``socket`` connections,
``os.system``, ``subprocess``, fork bombs, endless loops, huge allocations and huge prints.

Simplifications:

- ``os._exit()`` in the code ends the child before it reports: what it printed is kept, the
  reason is the exit status.
- Threads cannot be started (``RLIMIT_NPROC``), so neither can ``concurrent.futures`` pools.
- Only the standard library is importable: no numpy, no site-packages.
- Files written in the working directory are capped in size, not in number: the disk holds at
  most what ``timeout_s`` lets the code write, and it is all deleted afterwards.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

MAX_FILE_BYTES = 1 << 20  # largest file the code may write in its working directory
MAX_OPEN_FILES = 64
NOBODY = 65534
STDERR_KEEP = 64 * 1024  # bytes of the interpreter's own stderr kept for diagnostics
_READ_CHUNK = 65536

_DENIED_MODULES = (
    "_ctypes",
    "_multiprocessing",
    "_posixshmem",
    "_posixsubprocess",
    "_socket",
    "_sqlite3",
    "_ssl",
    "_testbuffer",
    "_testcapi",
    "_testinternalcapi",
    "_xxinterpchannels",
    "_xxsubinterpreters",
    "_xxtestfuzz",
    "ctypes",
    "multiprocessing",
    "pty",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
)

# What the code may use without importing anything new (as nobody, an interpreter installed
# under /root cannot read its library any more). None of them imports a denied module.
_PRELOADED = (
    "abc array ast base64 binascii bisect calendar cmath collections collections.abc colorsys "
    "copy csv dataclasses datetime decimal difflib enum fnmatch fractions functools glob hashlib "
    "heapq html inspect io itertools json keyword linecache math numbers operator pathlib "
    "pprint random re secrets shutil statistics string struct tempfile textwrap time traceback "
    "types typing unicodedata zlib"
)

# The child. argv: nonce, config (JSON). stdin: the request (JSON: code, stdin). It limits
# itself, preloads modules, drops root, takes over its standard streams, installs the audit
# hook and runs the code. Messages on the answer pipe are lines: nonce + kind + JSON, with
# kind "o"/"e" (a piece of stdout/stderr), "O"/"E" (that stream was truncated) or "d" (done).
_RUNNER = r"""
import json, os, resource, sys
nonce = sys.argv[1]
config = json.loads(sys.argv[2])
for name, value in config["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
import importlib, io, posix, signal
for module in config["preload"].split():
    importlib.import_module(module)
if os.getuid() == 0:
    try:
        os.setgroups([])
        os.setgid(config["nobody"])
        os.setuid(config["nobody"])
    except OSError:
        pass
request = json.loads(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
code, stdin_text = request["code"], request["stdin"]
del request
answer_fd = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
os.close(null)
_write, _dumps = os.write, json.dumps

def send(kind, value):
    data = (nonce + kind + _dumps(value) + "\n").encode("utf-8")
    while data:
        data = data[_write(answer_fd, data):]

class CappedWriter(io.TextIOBase):
    def __init__(self, kind, limit):
        self._kind, self._left, self._cut = kind, limit, False
    encoding = "utf-8"
    errors = "strict"
    def writable(self):
        return True
    def isatty(self):
        return False
    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not " + type(text).__name__)
        if self._left > 0 and text:
            piece = text[: self._left]
            self._left -= len(piece)
            send(self._kind, piece)
            if len(piece) < len(text):
                self._cut = True
                send(self._kind.upper(), True)
        elif text and not self._cut:
            self._cut = True
            send(self._kind.upper(), True)
        return len(text)

out = CappedWriter("o", config["max_output_chars"])
err = CappedWriter("e", config["max_output_chars"])
sys.stdout = sys.__stdout__ = out
sys.stderr = sys.__stderr__ = err
sys.stdin = sys.__stdin__ = io.StringIO(stdin_text)
sys.argv[:] = [""]
sys.pycache_prefix = config["no_pycache"]  # imports compile from source: marshal stays off
import builtins, linecache, traceback, types
builtins.exit = builtins.quit = sys.exit
for name in config["denied_modules"]:
    if sys.modules.get(name) is None:
        sys.modules[name] = None
main = types.ModuleType("__main__")
main.__builtins__ = builtins
sys.modules["__main__"] = main
filename = "<code>"
linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)

def _lexical(path, cwd, _str=str, _bytes=bytes, _isinstance=isinstance):
    # An exact str, ".." resolved; None for what cannot be judged (relative with "..").
    if _isinstance(path, _bytes):
        path = _bytes.decode(path, "utf-8", "surrogateescape")
    elif _isinstance(path, _str):
        path = _str.__add__("", path)  # an exact str: a subclass cannot lie about its text
    else:
        return None
    if "\x00" in path:
        return None
    parts = _str.split(path, "/")
    if not _str.startswith(path, "/"):
        if ".." in parts:
            return None
        parts = _str.split(cwd(), "/") + parts
    kept = []
    for part in parts:
        if part == "" or part == ".":
            continue
        if part == "..":
            if kept:
                kept.pop()
            continue
        kept.append(part)
    return "/" + "/".join(kept)

def _inside(path, roots, _lexical=_lexical, _getcwd=posix.getcwd):
    full = _lexical(path, _getcwd)
    if full is None:
        return False
    for root in roots:
        if full == root or full.startswith(root + "/"):
            return True
    return False

def _hook(
    event,
    args,
    _inside=_inside,
    _read=tuple(config["read_roots"]),
    _write=tuple(config["write_roots"]),
    _deny=frozenset(config["deny_events"]),
    _deny_prefix=tuple(config["deny_prefixes"]),
    _deny_import=frozenset(config["denied_modules"]),
    _read_events=frozenset(config["read_events"]),
    _write_events=frozenset(config["write_events"]),
    _write_flags=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
    _PermissionError=PermissionError,
    _int=int,
    _str=str,
    _bytes=bytes,
    _isinstance=isinstance,
    _len=len,
    _repr=repr,
    _skip=(type(None), bool, int, tuple),
    _callable=callable,
):
    if event == "open":
        path = args[0]
        flags = args[2] if _len(args) > 2 and _isinstance(args[2], _int) else 0
        writing = flags & _write_flags
        if _isinstance(path, _int):
            raise _PermissionError("sandbox: opening a file descriptor by number is not allowed")
        if not _inside(path, _write if writing else _read):
            what = "writing" if writing else "reading"
            raise _PermissionError(
                "sandbox: " + what + " " + _repr(path) + " is not allowed: only files in the "
                "working directory can be used"
            )
        return
    if event == "import":
        name = args[0]
        if _isinstance(name, _str) and (
            name in _deny_import or _str.partition(name, ".")[0] in _deny_import
        ):
            raise _PermissionError("sandbox: importing " + name + " is not allowed")
        return
    if event in _deny or _str.startswith(event, _deny_prefix):
        raise _PermissionError("sandbox: " + event + " is not allowed")
    reading = event in _read_events
    if reading or event in _write_events:
        roots = _read if reading else _write
        for arg in args:
            if event == "os.chdir" and _isinstance(arg, _int):
                raise _PermissionError("sandbox: os.chdir to a file descriptor is not allowed")
            if _isinstance(arg, _skip) or _callable(arg):  # flags, modes, dir_fd, callbacks
                continue
            if not _inside(arg, roots):  # a str or bytes path (anything else is refused)
                raise _PermissionError(
                    "sandbox: " + event + " on " + _repr(arg) + " is not allowed: only the "
                    "working directory can be used"
                )

signal.alarm(config["alarm_s"])
memory_mb = config["memory_mb"]
del config
sys.addaudithook(_hook)
done = {"ok": True, "reason": "ok"}
try:
    exec(compile(code, filename, "exec"), main.__dict__)
except SystemExit as exc:
    status = exc.code
    if status is not None and status != 0:
        if not isinstance(status, int):
            err.write(str(status) + "\n")
            status = 1
        done = {"ok": False, "reason": "exited with status " + str(status)}
except BaseException as exc:
    if isinstance(exc, SyntaxError):
        lines = traceback.format_exception_only(type(exc), exc)
    else:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        report = traceback.TracebackException(type(exc), exc, tb)
        own = ("_hook", "_inside", "_lexical")  # the sandbox's frames say nothing useful
        report.stack = traceback.StackSummary.from_list(
            [f for f in report.stack if not (f.filename == "<string>" and f.name in own)]
        )
        lines = list(report.format())
    err.write("".join(lines))
    if isinstance(exc, MemoryError):
        reason = "MemoryError: out of memory (the limit is " + str(memory_mb) + " MB)"
    else:
        message = str(exc)
        reason = type(exc).__name__ + (": " + message if message else "")
    done = {"ok": False, "reason": reason[:500]}
send("d", done)
os._exit(0)
"""

_DENY_EVENTS = (
    "code.__new__",
    "gc.get_objects",
    "gc.get_referents",
    "gc.get_referrers",
    "marshal.load",
    "marshal.loads",
    "object.__delattr__",
    "object.__setattr__",
    "os.add_dll_directory",
    "os.exec",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "os.link",
    "os.posix_spawn",
    "os.spawn",
    "os.startfile",
    "os.symlink",
    "os.system",
    "signal.pthread_kill",
    "subprocess.Popen",
    "sys._current_frames",
)
_DENY_PREFIXES = (
    "_ctypes.",
    "ctypes.",
    "fcntl.",
    "ftplib.",
    "http.",
    "imaplib.",
    "nntplib.",
    "poplib.",
    "pty.",
    "resource.",
    "smtplib.",
    "socket.",
    "sqlite3.",
    "ssl.",
    "syslog.",
    "telnetlib.",
    "urllib.",
    "webbrowser.",
)
_READ_EVENTS = (
    "glob.glob",
    "glob.glob/2",
    "os.fwalk",
    "os.getxattr",
    "os.listdir",
    "os.listxattr",
    "os.scandir",
    "os.walk",
)
_WRITE_EVENTS = (
    "os.chdir",
    "os.chflags",
    "os.chmod",
    "os.chown",
    "os.mkdir",
    "os.remove",
    "os.removexattr",
    "os.rename",
    "os.rmdir",
    "os.setxattr",
    "os.truncate",
    "os.utime",
    "shutil.chown",
    "shutil.copyfile",
    "shutil.copymode",
    "shutil.copystat",
    "shutil.copytree",
    "shutil.make_archive",
    "shutil.move",
    "shutil.rmtree",
    "shutil.unpack_archive",
    "tempfile.mkdtemp",
    "tempfile.mkstemp",
)


@dataclass(frozen=True)
class SandboxResult:
    stdout: str  # what the code printed (truncated with a note past max_output_chars)
    stderr: str  # what it wrote to sys.stderr, and the traceback of an uncaught exception
    ok: bool  # it ran to the end (or exited with status 0) without an uncaught exception
    reason: str  # "ok", "ZeroDivisionError: division by zero", "timed out after 3 s", ...
    timed_out: bool


def run_python(
    code: str,
    *,
    timeout_s: float = 3.0,
    memory_mb: int = 256,
    max_output_chars: int = 10_000,
    stdin: str = "",
) -> SandboxResult:
    """Run ``code`` in a separate, limited interpreter and return what it printed.

    ``timeout_s`` is wall-clock time from the interpreter's start (about 0.1 s of it goes to
    starting up); ``memory_mb`` caps the address space (below about 64 MB the interpreter may
    not start); ``max_output_chars`` caps stdout and stderr each; ``stdin`` is what
    ``input()`` and ``sys.stdin`` read. See the module's docstring for what is blocked.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    if timeout_s <= 0 or memory_mb <= 0 or max_output_chars < 0:
        raise ValueError("timeout_s and memory_mb must be positive, max_output_chars >= 0")
    nonce = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="orchard-sandbox-") as workdir:
        if os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
        config = _child_config(workdir, timeout_s, memory_mb, max_output_chars)
        env = {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir}
        request = json.dumps({"code": code, "stdin": stdin}).encode("utf-8", "surrogatepass")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _RUNNER, nonce, json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,  # its own process group: killed as a whole
                close_fds=True,
            )
        except OSError as exc:
            return SandboxResult("", "", False, f"could not start Python: {exc}", False)
        # Messages are JSON (ASCII, up to 12 bytes per character) plus a short header each; a
        # well-behaved child never sends more than this.
        answer_cap = 2 * max_output_chars * (12 + 64) + 65536
        exchange = _exchange(proc, request, timeout_s, answer_cap)
    return _result(exchange, nonce, timeout_s, max_output_chars)


def _child_config(
    workdir: str, timeout_s: float, memory_mb: int, max_output_chars: int
) -> dict[str, object]:
    work_roots = sorted({os.path.abspath(workdir), os.path.realpath(workdir)})
    library = sorted(
        {
            form
            for entry in sys.path
            if entry and os.path.isabs(entry)
            for form in (os.path.normpath(entry), os.path.realpath(entry))
        }
    )
    return {
        "limits": {
            "RLIMIT_CPU": math.ceil(timeout_s) + 1,  # a backstop: the wall clock comes first
            "RLIMIT_AS": memory_mb * 2**20,
            "RLIMIT_FSIZE": MAX_FILE_BYTES,
            "RLIMIT_NOFILE": MAX_OPEN_FILES,
            "RLIMIT_NPROC": 0,  # no fork, no threads (not enforced for root: it drops root)
            "RLIMIT_CORE": 0,
        },
        "preload": _PRELOADED,
        "nobody": NOBODY,
        "alarm_s": math.ceil(timeout_s) + 2,
        "memory_mb": memory_mb,
        "max_output_chars": max_output_chars,
        "no_pycache": os.path.join(workdir, ".no-pycache", "x"),
        "denied_modules": list(_DENIED_MODULES),
        "deny_events": list(_DENY_EVENTS),
        "deny_prefixes": list(_DENY_PREFIXES),
        "read_events": list(_READ_EVENTS),
        "write_events": list(_WRITE_EVENTS),
        "write_roots": [*work_roots, os.devnull],
        "read_roots": [*work_roots, *library, os.devnull, "/dev/urandom"],
    }


@dataclass
class _Exchange:
    answer: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool
    overflowed: bool


def _exchange(
    proc: subprocess.Popen[bytes], request: bytes, timeout_s: float, answer_cap: int
) -> _Exchange:
    """Send ``request``, read both pipes (capped) until they close or the time is up; the
    child's process group is killed on a timeout or an overflow."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    answer, stderr = bytearray(), bytearray()
    timed_out = overflowed = False
    pending = memoryview(request)
    selector = selectors.DefaultSelector()
    try:
        os.set_blocking(proc.stdin.fileno(), False)
        selector.register(proc.stdin, selectors.EVENT_WRITE)
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        while selector.get_map() and not overflowed:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:_READ_CHUNK]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the child is gone; its exit status will say why
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, _READ_CHUNK)
                if not data:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    answer += data
                    overflowed = len(answer) > answer_cap
                elif len(stderr) < STDERR_KEEP:
                    stderr += data[: STDERR_KEEP - len(stderr)]
        if not timed_out and not overflowed:
            # The pipes are closed: the child has exited, or closed them and lives on.
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        selector.close()
        if proc.returncode is None:
            _kill_group(proc)
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
    return _Exchange(bytes(answer), bytes(stderr), proc.returncode, timed_out, overflowed)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _result(
    exchange: _Exchange, nonce: str, timeout_s: float, max_output_chars: int
) -> SandboxResult:
    pieces: dict[str, list[str]] = {"o": [], "e": []}
    truncated: set[str] = set()
    done: dict[str, object] | None = None
    for raw in exchange.answer.split(b"\n"):
        line = raw.decode("utf-8", errors="replace")
        if not line.startswith(nonce) or len(line) <= len(nonce):
            continue
        kind, payload = line[len(nonce)], line[len(nonce) + 1 :]
        try:
            value = json.loads(payload)
        except ValueError:
            continue
        if kind in pieces and isinstance(value, str):
            pieces[kind].append(value)
        elif kind in ("O", "E"):
            truncated.add(kind.lower())
        elif kind == "d" and isinstance(value, dict):
            done = value

    def text(kind: str) -> str:
        joined = "".join(pieces[kind])[:max_output_chars]
        if kind in truncated:
            joined += f"\n[output truncated after {max_output_chars} characters]"
        return joined

    stdout, stderr = text("o"), text("e")
    if exchange.timed_out:
        reason = f"timed out after {timeout_s:g} s (the process was killed)"
        return SandboxResult(stdout, stderr, False, reason, True)
    if exchange.overflowed:
        reason = "the process sent more output than allowed and was killed"
        return SandboxResult(stdout, stderr, False, reason, False)
    if done is not None:
        return SandboxResult(stdout, stderr, bool(done.get("ok")), str(done.get("reason")), False)
    code = exchange.returncode
    if code is not None and code < 0:
        name = _signal_name(-code)
        why = {
            "SIGXCPU": "CPU time limit",
            "SIGALRM": "wall-clock limit",
            "SIGKILL": "a time or memory limit",
            "SIGSEGV": "the interpreter crashed",
        }.get(name, "a signal")
        reason = f"killed by {name} ({why})"
    else:
        reason = f"exited with status {code} before finishing"
    if not stderr.strip():  # the interpreter's own complaint, when the runner never started
        tail = exchange.stderr.decode("utf-8", errors="replace").strip().splitlines()[-1:]
        if tail and code not in (0, None):
            reason += f": {tail[0][:300]}"
    return SandboxResult(stdout, stderr, False, reason, False)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
