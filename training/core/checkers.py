"""Answer checkers: did a model's reply get a problem right? (Verifiable rewards for RL.)

Pure Python (no torch): the web process, the reward function of the ``grpo`` stage and
:func:`training.core.grpo.evaluate_problems` all use these.

A problem names its checker in ``problem["checker"]``:

- ``"number"``: ``problem["answer"]`` is a number (``"42"``, ``"-3"``, ``"2.5"``, ``"3/4"``,
  ``"1,000"``). The reply's final number (:func:`extract_final_number`) must equal it, within a
  relative tolerance of ``rel_tol`` (exact for integers and fractions).
- ``"choice"``: multiple choice. ``problem["choices"]`` lists the options' texts in order (A, B,
  ...) and ``problem["answer"]`` is the right letter. A reply may say ``B``, ``(B)``, ``B.``, ``The
  answer is B`` or the option's text.
- ``"python"``: ``problem["checker_code"]`` is Python source defining ``def check(answer: str) ->
  bool``; it receives the reply's text (stripped) and must return exactly ``True`` or
  ``False``. It runs in a separate interpreter (:func:`check_python`); anything other than a
  clean ``True`` (an exception, a timeout, a crash, a truthy non-bool) counts as wrong, with the
  reason.

:func:`check` dispatches on the checker and returns a :class:`CheckResult` (``correct``,
``extracted``: the answer read from the reply, ``reason``: why, for people).

How a final number is found, in order of preference: the text after the last ``####``; the last
``\\boxed{...}``; the text after the last "answer is" / "answer:"; a ``= 42`` ending the reply;
otherwise the last number anywhere. Numbers may have thousands separators (``1,000``), a
currency sign (``$5``), a sign (``-3``, ``−3``), decimals (``5.0`` equals ``5``), be fractions
(``3/4``, ``\\frac{3}{4}``) and carry units or a percent sign after them (``12 apples``, ``5%``
is 5).

Simplifications:

- Numbers written as words ("seven"), scientific notation (``1e3``) and mixed numbers (``1
  1/2``) are not read.
- "5%" is the number 5: a problem whose answer is 0.05 written as a percentage will not match.
- The Python checker's sandbox is a separate, resource-limited interpreter without ``open``,
  sockets or subprocesses, running as ``nobody`` when started by root: enough against mistakes
  and casual misuse (an endless loop, a huge allocation, printing, returning a truthy string),
  not a security boundary against hostile code. Run untrusted checker code in a container.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

CHECKERS = ("number", "choice", "python")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# A number as people and models write it: optional sign and currency, thousands groups or plain
# digits, optional decimals, optional "/denominator". The look-behind keeps "5-3" from reading
# as -3 and "x2" or "3.14.15" from yielding a number glued to a word.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−–]?)(?:\$\s?)?"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?(?P<dec>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
)
_HASHES = re.compile(r"####")
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_MARKER = re.compile(r"answer\s*(?:is|was|would be|will be|=|:)\s*:?\s*", re.IGNORECASE)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")


@dataclass(frozen=True)
class CheckResult:
    correct: bool
    extracted: str | None  # the answer read from the reply (canonical number, letter, ...)
    reason: str  # for people: "correct", "expected 85, got 84", "no number in the reply", ...


# ------------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class _Number:
    value: Fraction
    text: str  # canonical: "1000", "-3", "2.5", "3/4"


def _latex_to_plain(text: str) -> str:
    text = _FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    return (
        text.replace("{,}", ",")
        .replace("\\!", "")
        .replace("\\$", "$")
        .replace("\\%", "%")
        .replace("\\left", "")
        .replace("\\right", "")
    )


def _numbers(text: str) -> list[_Number]:
    found = []
    for match in _NUMBER.finditer(text):
        whole, dec = match.group("int"), match.group("dec")
        if whole is None and dec is None:
            continue  # the pattern matched a bare sign or currency
        digits = (whole or "0").replace(",", "") + (dec or "")
        value = Fraction(digits)
        den_text = match.group("den")
        is_fraction = False
        if den_text is not None and dec is None and "." not in den_text:
            den = int(den_text)
            if den != 0:
                value, is_fraction = value / den, True
        negative = match.group("sign") != ""
        if negative:
            value = -value
        if is_fraction and value.denominator != 1:
            canonical = str(value)
        else:
            canonical = _canonical(value, decimal_hint=digits if dec else None)
        found.append(_Number(value=value, text=canonical))
    return found


def _canonical(value: Fraction, decimal_hint: str | None = None) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    if decimal_hint is not None:
        text = format(Decimal(decimal_hint).normalize(), "f")
        return f"-{text}" if value < 0 else text
    return str(value)


def parse_number(text: str | int | float | None) -> Fraction | None:
    """The first number in ``text`` as an exact fraction, or None (``"1,000"`` → 1000)."""
    if text is None:
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        return Fraction(text) if math.isfinite(text) else None
    found = _numbers(_latex_to_plain(str(text)))
    return found[0].value if found else None


def _first_number(text: str) -> _Number | None:
    found = _numbers(text)
    return found[0] if found else None


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``, braces balanced."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    contents.append(text[start:index])
                    break
    return contents


def extract_final_number(text: str | None) -> str | None:
    """The number a reply gives as its answer, canonical (``"1000"``, ``"-3"``, ``"2.5"``,
    ``"3/4"``), or None when it has none.

    Prefers an explicit marker (``#### 42``, ``\\boxed{42}``, ``answer: 42``, ``= 42`` at the end),
    else the last number in the text.
    """
    if not text:
        return None
    raw = str(text)
    boxed = _boxed_contents(raw)  # before the LaTeX clean-up, which may touch the braces
    plain = _latex_to_plain(raw)

    hashes = list(_HASHES.finditer(plain))
    if hashes:
        number = _first_number(plain[hashes[-1].end() :])
        if number is not None:
            return number.text
    for content in reversed(boxed):
        number = _first_number(_latex_to_plain(content))
        if number is not None:
            return number.text
    markers = list(_ANSWER_MARKER.finditer(plain))
    if markers:
        number = _first_number(plain[markers[-1].end() :])
        if number is not None:
            return number.text
    last_line = plain.rstrip().rpartition("\n")[2]
    if "=" in last_line:  # "... = 42 (six sevens)": the result, not the 7 after it
        found = _numbers(last_line.rpartition("=")[2])
        if found:
            return found[0].text
    found = _numbers(plain)
    return found[-1].text if found else None


def numbers_equal(got: Fraction, expected: Fraction, rel_tol: float = 1e-6) -> bool:
    if got == expected:
        return True
    return math.isclose(float(got), float(expected), rel_tol=rel_tol, abs_tol=1e-12)


def check_number(response: str, expected: str | int | float, rel_tol: float = 1e-6) -> bool:
    """Whether the reply's final number equals ``expected`` (``"5"`` matches ``"5.0"``)."""
    return _check_number(response, expected, rel_tol).correct


def _check_number(response: str, expected: Any, rel_tol: float) -> CheckResult:
    want = parse_number(expected)
    if want is None:
        return CheckResult(False, None, f"the problem's answer {expected!r} is not a number")
    extracted = extract_final_number(response)
    if extracted is None:
        return CheckResult(False, None, "no number in the reply")
    got = parse_number(extracted)
    if got is not None and numbers_equal(got, want, rel_tol):
        return CheckResult(True, extracted, "correct")
    return CheckResult(False, extracted, f"expected {_canonical(want)}, got {extracted}")


# ---------------------------------------------------------------------------- multiple choice


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_choice(response: str | None, choices: Sequence[str] | None = None) -> str | None:
    """The letter a reply picks (``"B"``), or None.

    Understands ``B``, ``(B)``, ``B.``/``B)`` at the start, ``The answer is B`` / ``answer: (B)``,
    and the option's own text (when exactly one option's text is in the reply).
    """
    if not response:
        return None
    letters = LETTERS[: len(choices)] if choices else LETTERS[:10]
    text = response.strip()
    letter = f"[{letters}]"
    bare = re.fullmatch(rf"[\s(\[*]*({letter})[\s)\].:*]*", text, re.IGNORECASE)
    if bare:
        return bare.group(1).upper()
    marked = list(
        re.finditer(
            rf"answer\s*(?:is|was|would be|=|:)?\s*:?\s*(?:option\s+)?[(\[*]*({letter})(?![\w])",
            text,
            re.IGNORECASE,
        )
    )
    marked = [m for m in marked if m.group(1).isupper()]
    if marked:
        return marked[-1].group(1)
    parenthesised = re.findall(rf"\(({letter})\)", text)
    if parenthesised:
        return parenthesised[-1]
    leading = re.match(rf"({letter})\s*[.):]", text)
    if leading:
        return leading.group(1)
    if choices:
        reply = _normalise_text(text)
        options = [_normalise_text(c) for c in choices]
        exact = [i for i, option in enumerate(options) if option and option == reply]
        if len(exact) == 1:
            return letters[exact[0]]
        inside = [i for i, option in enumerate(options) if option and option in reply]
        if len(inside) == 1:
            return letters[inside[0]]
        if len(inside) > 1:  # one option's text may contain another's ("4" in "14")
            longest = max(inside, key=lambda i: len(options[i]))
            if all(options[i] in options[longest] for i in inside):
                return letters[longest]
    return None


def check_choice(response: str, expected_letter: str, choices: Sequence[str] | None) -> bool:
    """Whether the reply picks ``expected_letter`` (``"B"``) among ``choices``."""
    return _check_choice(response, expected_letter, choices).correct


def _check_choice(response: str, expected: str, choices: Sequence[str] | None) -> CheckResult:
    want = str(expected).strip().strip("()").upper()
    if len(want) != 1 or want not in LETTERS:
        return CheckResult(False, None, f"the problem's answer {expected!r} is not a letter")
    got = extract_choice(response, choices)
    if got is None:
        return CheckResult(False, None, "no choice found in the reply")
    if got == want:
        return CheckResult(True, got, "correct")
    return CheckResult(False, got, f"expected {want}, got {got}")


# ------------------------------------------------------------------------------------- python

# The child interpreter: limits itself, drops root, hides the pipe it answers on, takes away
# open() and the network and process modules, then runs the checker. ``sys.argv[1]`` is the
# first line it expects on stdin (a nonce), so a checker cannot fake the answer line.
_RUNNER = r"""
import json, os, resource, sys
limits = json.loads(sys.argv[2])
for name, value in limits.items():
    resource.setrlimit(getattr(resource, name), (value, value))
# What checkers usually need, imported while the files are still readable (as nobody, an
# interpreter installed under /root could not import anything new).
import cmath, collections, datetime, decimal, fractions, functools, itertools, math, operator
import random, re, statistics, string, unicodedata
if os.getuid() == 0:
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    except OSError:
        pass
request = json.loads(sys.stdin.read())
answer_fd = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
nonce = sys.argv[1]
sys.argv[:] = ["checker"]
del limits
out = os.fdopen(answer_fd, "w")
def reply(value):
    out.write(nonce + json.dumps(value) + "\n")
    out.flush()
for blocked in ("socket", "_socket", "ssl", "_ssl", "select", "subprocess", "_posixsubprocess",
                "multiprocessing", "ctypes", "_ctypes", "asyncio", "urllib", "http", "ftplib",
                "smtplib", "pty", "shutil"):
    sys.modules[blocked] = None
import builtins
for name in ("open", "input", "breakpoint", "exit", "quit", "help"):
    if hasattr(builtins, name):
        delattr(builtins, name)
namespace = {"__name__": "__checker__", "__builtins__": builtins}
code, answer = request["code"], request["answer"]
del request
try:
    exec(compile(code, "<checker>", "exec"), namespace)
    check = namespace.get("check")
    if not callable(check):
        reply({"error": "the checker code defines no check(answer) function"})
    else:
        result = check(answer)
        if result is True or result is False:
            reply({"value": result})
        else:
            reply({"error": "check() returned " + type(result).__name__ + ", not True or False"})
except BaseException as exc:
    reply({"error": (type(exc).__name__ + ": " + str(exc))[:300]})
os._exit(0)
"""

PYTHON_MEMORY_BYTES = 512 * 2**20
PYTHON_MAX_REPLY = 64 * 1024


@dataclass(frozen=True)
class PythonResult:
    ok: bool  # the checker returned exactly True
    reason: str


def check_python(response: str, checker_code: str, timeout_s: float = 2.0) -> bool:
    """Run the problem author's ``check(answer)`` on the reply in a sandboxed interpreter.

    True only when it returns exactly ``True``; an exception, a non-bool result, a crash, a
    limit or ``timeout_s`` (wall clock, interpreter start included) all give False.
    """
    return run_python_checker(response, checker_code, timeout_s).ok


def run_python_checker(response: str, checker_code: str, timeout_s: float = 2.0) -> PythonResult:
    """:func:`check_python` with the reason (``"check() returned str, not True or False"``)."""
    nonce = secrets.token_hex(16)
    cpu_seconds = math.ceil(timeout_s) + 1  # a backstop: the wall-clock timeout comes first
    limits = {
        "RLIMIT_CPU": cpu_seconds,
        "RLIMIT_AS": PYTHON_MEMORY_BYTES,
        "RLIMIT_FSIZE": 0,  # cannot write files
        "RLIMIT_NOFILE": 32,
        "RLIMIT_NPROC": 0,  # no fork (not enforced for root: the runner drops root first)
        "RLIMIT_CORE": 0,
    }
    request = json.dumps({"code": checker_code, "answer": (response or "").strip()})
    with tempfile.TemporaryDirectory(prefix="orchard-check-") as cwd:
        os.chmod(cwd, 0o755)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _RUNNER, nonce, json.dumps(limits)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},  # no proxies, no tokens
                start_new_session=True,  # its own process group: killed as a whole
                close_fds=True,
            )
        except OSError as exc:
            return PythonResult(False, f"could not start the checker: {exc}")
        try:
            stdout, stderr = proc.communicate(request.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return PythonResult(False, f"the checker ran longer than {timeout_s:g} s")
    if proc.returncode and proc.returncode < 0:
        name = _signal_name(-proc.returncode)
        return PythonResult(False, f"the checker was killed ({name}): a time or memory limit")
    answer = _answer_line(stdout[:PYTHON_MAX_REPLY], nonce)
    if answer is None:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return PythonResult(False, f"the checker gave no answer {tail[0][:200]}".rstrip())
    if "error" in answer:
        return PythonResult(False, str(answer["error"]))
    if answer.get("value") is True:
        return PythonResult(True, "correct")
    return PythonResult(False, "check() returned False")


def _answer_line(stdout: bytes, nonce: str) -> dict[str, Any] | None:
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith(nonce):
            try:
                value = json.loads(line[len(nonce) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ------------------------------------------------------------------------------------ dispatch


def has_answer_marker(text: str | None) -> bool:
    """Whether a reply marks its answer explicitly (``####``, ``\\boxed{}``, "answer is/:")."""
    if not text:
        return False
    return bool(
        _HASHES.search(text)
        or _BOXED.search(text)
        or re.search(r"answer\s*(?:is|:)", text, re.IGNORECASE)
    )


@dataclass(frozen=True)
class Checker:
    """A problem's checker, ready to judge replies."""

    kind: str
    answer: str
    choices: tuple[str, ...] | None = None
    checker_code: str | None = None
    rel_tol: float = 1e-6
    timeout_s: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_problem(cls, problem: dict[str, Any]) -> Checker:
        kind = problem.get("checker", "number")
        if kind not in CHECKERS:
            raise ValueError(f"unknown checker {kind!r} (expected one of {', '.join(CHECKERS)})")
        choices = problem.get("choices")
        if kind == "choice" and not choices:
            raise ValueError('a "choice" problem needs its "choices"')
        code = problem.get("checker_code")
        if kind == "python" and not code:
            raise ValueError('a "python" problem needs its "checker_code"')
        return cls(
            kind=kind,
            answer=str(problem.get("answer", "")),
            choices=tuple(str(c) for c in choices) if choices else None,
            checker_code=code,
        )

    def check(self, response: str) -> CheckResult:
        response = response or ""
        if self.kind == "number":
            return _check_number(response, self.answer, self.rel_tol)
        if self.kind == "choice":
            return _check_choice(response, self.answer, self.choices)
        result = run_python_checker(response, self.checker_code or "", self.timeout_s)
        return CheckResult(result.ok, response.strip() or None, result.reason)


def check(problem: dict[str, Any], response: str) -> CheckResult:
    """Judge ``response`` against ``problem`` with the checker it names."""
    try:
        checker = Checker.from_problem(problem)
    except ValueError as exc:
        return CheckResult(False, None, str(exc))
    return checker.check(response)
