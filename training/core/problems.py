"""Problem banks for reinforcement learning with verifiable rewards (pure Python, no torch).

A *problem* is a dict::

    {"question": "What is 37 + 48?", "answer": "85", "checker": "number"}

plus ``"choices"`` (``"choice"`` problems: the options' texts, A first) or ``"checker_code"``
(``"python"`` problems: source defining ``check(answer) -> bool``); see
:mod:`training.core.checkers`. Other keys (``"solution"``, ``"source"``, ``"difficulty"``) are
kept in memory and not written to snapshots.

Sources:

- :func:`parse_gsm8k`: the GSM8K JSONL format (``question``, ``answer`` with the worked solution,
  calculator annotations ``<<48/2=24>>`` and the final answer after ``#### ``).
- :func:`parse_multiple_choice`: multiple-choice JSONL (ARC, MMLU and plain layouts).
- :func:`arithmetic_problems`: generated arithmetic, difficulty 1 (one-digit sums) to 5 (four
  multi-digit numbers, three operations, brackets), deterministic per seed.

A *problem snapshot* is a folder the ``grpo`` stage reads (:func:`write_problem_snapshot`,
:func:`read_problems`)::

    train.jsonl       one problem per line: {"prompt": [{"role": "user", "content": question}],
    validation.jsonl  "answer": "85", "checker": "number"} (+ "choices" / "checker_code")
    card.json         {"kind": "problems", "counts", "checkers", "content_sha256", ...}

The split is decided by the hash of ``salt`` and the question alone, so a problem stays on the
same side whatever else is in the bank, and the same problems give byte-identical files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from training.core.checkers import CHECKERS, LETTERS, parse_number

ANNOTATION = re.compile(r"<<[^<>]*>>")
FINAL_MARKER = "####"
SNAPSHOT_FILES = ("train.jsonl", "validation.jsonl")
SNAPSHOT_FORMAT = 1


# ------------------------------------------------------------------------------------- GSM8K


def parse_gsm8k(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Problems from GSM8K JSONL lines, and the lines that could not be used.

    Each problem: ``{"question", "answer": <final answer, canonical: "1080" for "1,080">,
    "solution": <worked solution before ####, calculator annotations removed>, "checker":
    "number", "source": "gsm8k", "line": N}``. Each error: ``{"line": N, "error": "..."}``.
    Blank lines are skipped.
    """
    return _parse_lines(lines, _gsm8k_problem, "question and answer")


def _parse_lines(
    lines: Iterable[str],
    parse_one: Callable[[dict[str, Any], int], dict[str, Any]],
    expected: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each non-blank line, a JSON object with ``expected``, through ``parse_one``; a
    ValueError becomes that line's error."""
    problems: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            problems.append(parse_one(_json_object(line, expected), number))
        except ValueError as exc:
            errors.append({"line": number, "error": str(exc)})
    return problems, errors


def _json_object(line: str, expected: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with {expected}")
    return record


def _gsm8k_problem(record: dict[str, Any], number: int) -> dict[str, Any]:
    question, answer = record.get("question"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" must be a non-empty string')
    if not isinstance(answer, str) or FINAL_MARKER not in answer:
        raise ValueError(f'"answer" must be a string with the final answer after "{FINAL_MARKER}"')
    worked, _, final = answer.rpartition(FINAL_MARKER)
    final = final.strip()
    value = parse_number(final)
    if value is None or not re.fullmatch(r"-?[\d,]*\.?\d+", final):
        raise ValueError(f"the final answer {final!r} is not a number")
    solution = "\n".join(line.rstrip() for line in ANNOTATION.sub("", worked).strip().splitlines())
    return {
        "question": question.strip(),
        "answer": final.replace(",", ""),
        "solution": solution,
        "checker": "number",
        "source": "gsm8k",
        "line": number,
    }


def read_gsm8k(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`parse_gsm8k` on a file."""
    with open(path, encoding="utf-8") as fh:
        return parse_gsm8k(fh)


# ------------------------------------------------------------------- multiple choice (ARC, MMLU)


def parse_multiple_choice(
    lines: Iterable[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Multiple-choice problems from JSONL lines, and the lines that could not be used.

    Accepts the layouts public sets come in, one object per line:

    - MMLU style: ``{"question", "choices": ["...", ...], "answer": 2 | "C"}``;
    - ARC on the Hub: ``{"question", "choices": {"text": [...], "label": ["A", ...]},
      "answerKey": "C"}`` (labels may be digits, "1" to "4");
    - ARC's original files: ``{"question": {"stem", "choices": [{"text", "label"}, ...]},
      "answerKey"}``;
    - plain: ``"options"`` instead of ``"choices"``, ``"label"`` instead of ``"answer"``.

    Each problem's question shows the options as lettered lines, as the model reads it; the
    answer becomes the option's letter; ``"subject"``, when given, is kept as the source.
    """
    return _parse_lines(lines, _choice_problem, "a question, choices and an answer")


def _choice_problem(record: dict[str, Any], number: int) -> dict[str, Any]:
    question = record.get("question")
    choices: Any = record.get("choices", record.get("options"))
    if isinstance(question, dict):  # ARC's original layout nests the choices in the question
        choices = question.get("choices", choices)
        question = question.get("stem")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" must be a non-empty string')
    texts, labels = _choice_options(choices)
    letter = _choice_answer(record, labels, len(texts))
    options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(texts))
    return {
        "question": f"{question.strip()}\n\n{options}\n\nAnswer with the letter.",
        "answer": letter,
        "choices": texts,
        "checker": "choice",
        "source": str(record.get("subject") or "multiple-choice"),
        "line": number,
    }


def _choice_options(choices: Any) -> tuple[list[str], list[str]]:
    """The option texts and their labels as the file names them (for the answer key)."""
    if isinstance(choices, dict):  # {"text": [...], "label": [...]}
        texts, labels = choices.get("text"), choices.get("label")
    elif isinstance(choices, list) and choices and all(isinstance(c, dict) for c in choices):
        texts = [c.get("text") for c in choices]
        labels = [c.get("label") for c in choices]
    else:
        texts, labels = choices, None
    if not isinstance(texts, list) or not 2 <= len(texts) <= len(LETTERS):
        raise ValueError(f'"choices" must list 2 to {len(LETTERS)} options')
    if not all(isinstance(t, str | int | float) and str(t).strip() for t in texts):
        raise ValueError("every option must be a non-empty text")
    if labels is None:
        labels = list(LETTERS[: len(texts)])
    if not isinstance(labels, list) or len(labels) != len(texts):
        raise ValueError("the choices' labels do not match their texts")
    return [str(t).strip() for t in texts], [str(label).strip().upper() for label in labels]


def _choice_answer(record: dict[str, Any], labels: list[str], count: int) -> str:
    """The correct option's letter from an index (0-based) or a label ("C", or ARC's "3")."""
    answer = next(
        (record[key] for key in ("answer", "answerKey", "label") if record.get(key) is not None),
        None,
    )
    if isinstance(answer, bool) or answer is None:
        raise ValueError('no answer: expected "answer" (an index or a letter) or "answerKey"')
    if isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().upper() in labels:
        index = labels.index(answer.strip().upper())
    else:
        raise ValueError(f"the answer {answer!r} names none of the choices ({', '.join(labels)})")
    if not 0 <= index < count:
        raise ValueError(f"the answer index {answer} is outside the {count} choices")
    return LETTERS[index]


def read_multiple_choice(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`parse_multiple_choice` on a file."""
    with open(path, encoding="utf-8") as fh:
        return parse_multiple_choice(fh)


# -------------------------------------------------------------------------------- arithmetic

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_SYMBOLS = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult}
# difficulty -> (number of operands, digits per operand (low, high), operators, brackets)
_LEVELS: dict[int, tuple[int, tuple[int, int], str, bool]] = {
    1: (2, (1, 1), "+-", False),
    2: (2, (2, 2), "+-", False),
    3: (2, (1, 3), "+-*", False),
    4: (3, (1, 3), "+-*", False),
    5: (4, (2, 4), "+-*", True),
}


def _evaluate(expression: str) -> int:
    """The value of an expression of integers, + - * and brackets (no eval)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"unsupported expression {expression!r}")

    return walk(ast.parse(expression, mode="eval"))


def _operand(rng: random.Random, digits: tuple[int, int], multiplying: bool) -> int:
    low, high = digits
    if multiplying:  # keep products readable: at most two digits times anything
        high = min(high, 2)
        low = min(low, high)
    size = rng.randint(low, high)
    return rng.randint(0 if size == 1 else 10 ** (size - 1), 10**size - 1)


def _arithmetic_expression(rng: random.Random, difficulty: int) -> str:
    count, digits, symbols, brackets = _LEVELS[difficulty]
    ops = [rng.choice(symbols) for _ in range(count - 1)]
    numbers = [_operand(rng, digits, "*" in ops[max(0, i - 1) : i + 1]) for i in range(count)]
    if count == 2 and ops[0] == "-" and numbers[0] < numbers[1] and difficulty <= 2:
        numbers.reverse()  # no negative answers at the easiest levels
    parts = [str(numbers[0])]
    for op, number in zip(ops, numbers[1:], strict=True):
        parts += [op, str(number)]
    if brackets and count >= 3:
        start = rng.randrange(0, count - 1) * 2  # bracket two neighbouring operands
        parts[start] = "(" + parts[start]
        parts[start + 2] = parts[start + 2] + ")"
    return " ".join(parts)


def arithmetic_problems(count: int, difficulty: int = 1, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` distinct generated problems ("What is 37 + 48?" → "85"), the same for a seed.

    Difficulty 1: two one-digit numbers, + or - (never negative); 2: two two-digit numbers;
    3: up to three digits, with *; 4: three numbers, two operations; 5: four numbers of two to
    four digits, three operations and a pair of brackets. ``*`` binds tighter than + and -.
    ValueError when ``difficulty`` has fewer than ``count`` distinct problems.
    """
    if difficulty not in _LEVELS:
        raise ValueError(f"difficulty must be 1 to 5, got {difficulty}")
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    rng = random.Random(f"orchard-arithmetic:{seed}:{difficulty}")
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(
                f"difficulty {difficulty} has fewer than {count} distinct problems "
                f"({len(problems)} found): ask for fewer or raise the difficulty"
            )
        expression = _arithmetic_expression(rng, difficulty)
        if expression in seen:
            continue
        seen.add(expression)
        problems.append(
            {
                "question": f"What is {expression}?",
                "answer": str(_evaluate(expression)),
                "checker": "number",
                "source": "arithmetic",
                "difficulty": difficulty,
            }
        )
    return problems


# --------------------------------------------------------------------------------- snapshots


def validate_problem(problem: Any, where: str = "problem") -> dict[str, Any]:
    """A problem's snapshot record (``prompt``, ``answer``, ``checker``, ...); ValueError
    naming ``where`` when it is not usable."""
    if not isinstance(problem, dict):
        raise ValueError(f"{where}: a problem must be an object")
    question = problem.get("question")
    prompt = problem.get("prompt")
    if question is None and isinstance(prompt, list) and prompt:
        question = prompt[-1].get("content") if isinstance(prompt[-1], dict) else None
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f'{where}: "question" must be a non-empty string')
    checker = problem.get("checker", "number")
    if checker not in CHECKERS:
        raise ValueError(
            f"{where}: unknown checker {checker!r} (expected one of {', '.join(CHECKERS)})"
        )
    answer = problem.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise ValueError(f'{where}: "answer" must be a string or a number')
    answer = str(answer).strip()
    messages = prompt if isinstance(prompt, list) and prompt else None
    if messages is None:
        messages = [{"role": "user", "content": question}]
    _check_messages(messages, where)
    record: dict[str, Any] = {"prompt": messages, "answer": answer, "checker": checker}
    if checker == "number" and parse_number(answer) is None:
        raise ValueError(f"{where}: the answer {answer!r} of a number problem is not a number")
    if checker == "choice":
        choices = problem.get("choices")
        if (
            not isinstance(choices, list)
            or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise ValueError(f'{where}: a choice problem needs "choices", 2 to 26 option texts')
        letter = answer.strip("()").upper()
        if len(letter) != 1 or letter not in LETTERS[: len(choices)]:
            raise ValueError(
                f"{where}: the answer of a choice problem must be a letter A to "
                f"{LETTERS[len(choices) - 1]}, got {answer!r}"
            )
        record["answer"] = letter
        record["choices"] = choices
    if checker == "python":
        code = problem.get("checker_code")
        if not isinstance(code, str) or "def check" not in code:
            raise ValueError(
                f'{where}: a python problem needs "checker_code" defining check(answer) -> bool'
            )
        try:
            compile(code, "<checker>", "exec")
        except SyntaxError as exc:
            raise ValueError(f"{where}: the checker code does not compile: {exc}") from None
        record["checker_code"] = code
    return record


def _check_messages(messages: list[Any], where: str) -> None:
    for index, message in enumerate(messages, start=1):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"{where}: prompt message {index} must be an object with a role (system, user, "
                "assistant) and a string content"
            )
    if messages[-1]["role"] != "user":
        raise ValueError(f"{where}: the prompt must end with a user message")


def split_of(question: str, validation_fraction: float, salt: str) -> str:
    """``"validation"`` or ``"train"``, from the hash of ``salt`` and the question alone."""
    digest = hashlib.sha256(f"{salt}\0{question}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if position < validation_fraction else "train"


def write_problem_snapshot(
    problems: Iterable[dict[str, Any]],
    out_dir: Path,
    validation_fraction: float = 0.1,
    salt: str = "orchard",
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``validation.jsonl`` and ``card.json`` (last) to ``out_dir``;
    return the card. ValueError (naming the problem's position) for an unusable problem."""
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    out_dir = Path(out_dir)
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    checkers: Counter[str] = Counter()
    for index, problem in enumerate(problems, start=1):
        record = validate_problem(problem, f"problem {index}")
        question = record["prompt"][-1]["content"]
        splits[split_of(question, validation_fraction, salt)].append(
            json.dumps(record, ensure_ascii=False) + "\n"
        )
        checkers[record["checker"]] += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "card.json").unlink(missing_ok=True)
    digest = hashlib.sha256()
    for split in ("train", "validation"):
        data = "".join(splits[split]).encode("utf-8")
        digest.update(data)
        _write_atomic(out_dir / f"{split}.jsonl", data)
    card = {
        "kind": "problems",
        "format": SNAPSHOT_FORMAT,
        "counts": {
            "train": len(splits["train"]),
            "validation": len(splits["validation"]),
            "total": len(splits["train"]) + len(splits["validation"]),
        },
        "checkers": dict(sorted(checkers.items())),
        "validation_fraction": validation_fraction,
        "salt": salt,
        "content_sha256": digest.hexdigest(),
    }
    _write_atomic(out_dir / "card.json", (json.dumps(card, indent=1) + "\n").encode())
    return card


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_problem_file(path: Path) -> list[dict[str, Any]]:
    """Problems of one snapshot JSONL file, each checked; ValueError names the file and line.

    Each problem: the record as written plus ``"question"`` (the last user message).
    """
    problems = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                raw = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            record = validate_problem(raw, where)
            record["question"] = record["prompt"][-1]["content"]
            problems.append(record)
    return problems


def read_problems(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "validation": [...]}`` from a problem snapshot folder (a missing
    ``validation.jsonl`` is an empty list); ValueError when it is not a snapshot."""
    folder = Path(folder)
    if not (folder / "train.jsonl").is_file():
        raise ValueError(f"{folder} is not a problem snapshot (no train.jsonl)")
    validation = folder / "validation.jsonl"
    return {
        "train": read_problem_file(folder / "train.jsonl"),
        "validation": read_problem_file(validation) if validation.is_file() else [],
    }
