"""Answer checkers: number extraction, multiple choice, the sandboxed Python checker."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from training.core.checkers import (
    Checker,
    check,
    check_choice,
    check_number,
    check_python,
    extract_choice,
    extract_final_number,
    has_answer_marker,
    parse_number,
    run_python_checker,
)

# ------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is 1,000 apples.", "1000"),
        ("It costs $5.", "5"),
        ("She paid $5.00 in all", "5"),
        ("5.0", "5"),
        ("2.50", "2.5"),
        ("The temperature fell to -3 degrees", "-3"),
        ("x = −3", "-3"),  # a Unicode minus
        ("3/4 of the cake", "3/4"),
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("The discount is 5%", "5"),
        ("12 apples", "12"),
        ("She has 12,345.50 dollars", "12345.5"),
        (".5", "0.5"),
        ("48/2 = 24 clips in May.\n48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("I think \\boxed{42} and then 7 more words 9", "42"),
        ("\\boxed{1{,}000}", "1000"),
        ("The answer is 42. I checked it 3 times.", "42"),
        ("Answer: $18", "18"),
        ("So 6 × 7 = 42 (six sevens).", "42"),
        ("10 - 3 = 7", "7"),
        ("pages 3–5", "5"),  # an en dash between numbers is not a minus sign
        ("1, 2, 3", "3"),
        ("first 4, finally 11", "11"),
        ("To answer this, 3 + 4 = 7", "7"),  # "answer" without "is" or ":" is no marker
        ("The final answer = 12 (3 boxes of 4)", "12"),
    ],
)
def test_final_number_is_found(text: str, expected: str) -> None:
    assert extract_final_number(text) == expected


@pytest.mark.parametrize("text", ["", None, "no answer here", "I don't know.", "####", "\\boxed{}"])
def test_no_number_is_none(text: str | None) -> None:
    assert extract_final_number(text) is None


def test_parse_number_is_exact() -> None:
    assert parse_number("1,000") == 1000
    assert parse_number("$5.50") == Fraction(11, 2)
    assert parse_number("-3/4") == Fraction(-3, 4)
    assert parse_number(7) == 7 and parse_number(float("nan")) is None
    assert parse_number("none") is None and parse_number(None) is None


@pytest.mark.parametrize(
    ("response", "expected", "correct"),
    [
        ("1,000", "1000", True),
        ("The answer is 1000", "1,000", True),
        ("$5", "5", True),
        ("5.0", "5", True),
        ("5.001", "5", False),
        ("-3", "-3", True),
        ("-3", "3", False),
        ("0.75", "3/4", True),
        ("\\boxed{\\frac{3}{4}}", "0.75", True),
        ("5%", "5", True),
        ("12 apples", "12", True),
        ("#### 72", "72", True),
        ("#### 71", "72", False),
        ("I have no idea", "72", False),
        ("", "0", False),
        ("0", "0", True),
        ("1/3", "0.3333333333", True),  # within the relative tolerance
    ],
)
def test_check_number(response: str, expected: str, correct: bool) -> None:
    assert check_number(response, expected) is correct


def test_check_number_explains() -> None:
    problem = {"answer": "85", "checker": "number"}
    assert check(problem, "I think 84") == check(problem, "I think 84")
    result = check(problem, "I think 84")
    assert (
        not result.correct and result.extracted == "84" and "expected 85, got 84" in result.reason
    )
    result = check(problem, "no idea")
    assert result.extracted is None and result.reason == "no number in the reply"
    assert check({"answer": "eighty", "checker": "number"}, "80").reason.endswith("is not a number")
    assert check(problem, "#### 85").correct and check(problem, "#### 85").reason == "correct"


# ---------------------------------------------------------------------------- multiple choice

CHOICES = ["London", "Paris", "Rome", "Madrid"]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("**B**", "B"),
        ("B.", "B"),
        ("B) Paris", "B"),
        ("The answer is B", "B"),
        ("The answer is (B).", "B"),
        ("answer: C", "C"),
        ("I first thought (A) but it is (B)", "B"),
        ("Paris", "B"),
        ("It must be paris, of course.", "B"),
        ("the answer is a city", None),  # the article "a" is not option A
        ("I do not know", None),
        ("", None),
    ],
)
def test_extract_choice(response: str, letter: str | None) -> None:
    assert extract_choice(response, CHOICES) == letter


def test_check_choice() -> None:
    assert check_choice("The answer is B", "B", CHOICES)
    assert check_choice("(B)", "(b)", CHOICES)
    assert not check_choice("A", "B", CHOICES)
    assert not check_choice("E", "E", CHOICES)  # only A-D exist
    problem = {"checker": "choice", "answer": "C", "choices": CHOICES}
    assert check(problem, "Rome").correct
    wrong = check(problem, "Madrid")
    assert not wrong.correct and wrong.extracted == "D" and wrong.reason == "expected C, got D"
    assert check({"checker": "choice", "answer": "C"}, "C").reason == (
        'a "choice" problem needs its "choices"'
    )


def test_option_text_inside_another() -> None:
    choices = ["4", "14", "40"]
    assert extract_choice("14", choices) == "B"
    assert extract_choice("It is 40", choices) == "C"


# ------------------------------------------------------------------------------------- python

EQUALS_42 = "def check(answer):\n    return answer.strip().endswith('42')\n"


def test_python_checker_right_and_wrong() -> None:
    assert check_python("so it is 42", EQUALS_42)
    assert not check_python("so it is 41", EQUALS_42)
    problem = {"checker": "python", "answer": "", "checker_code": EQUALS_42}
    result = check(problem, "  so it is 42  ")
    assert result.correct and result.extracted == "so it is 42"
    wrong = check(problem, "41")
    assert not wrong.correct and wrong.reason == "check() returned False"


def test_python_checker_can_use_the_usual_modules() -> None:
    code = (
        "import math, re\nfrom fractions import Fraction\n"
        "def check(answer):\n"
        "    return Fraction(re.findall(r'[\\d/]+', answer)[-1]) == Fraction(math.comb(4, 2), 8)\n"
    )
    assert check_python("3/4", code)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("def check(answer):\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("def check(answer):\n    return 'yes'\n", "check() returned str, not True or False"),
        ("def check(answer):\n    return 1\n", "check() returned int, not True or False"),
        ("def check(answer):\n    return [True]\n", "check() returned list, not True or False"),
        ("x = 1\n", "the checker code defines no check(answer) function"),
        ("def check(answer:\n", "SyntaxError"),
        ("import sys\ndef check(answer):\n    sys.exit(0)\n", "SystemExit"),
    ],
)
def test_python_checker_anything_but_true_is_false(code: str, reason: str) -> None:
    result = run_python_checker("42", code)
    assert result.ok is False and reason in result.reason


def test_python_checker_endless_loop_is_killed() -> None:
    started = time.monotonic()
    result = run_python_checker("42", "def check(answer):\n    while True:\n        pass\n", 1.0)
    assert not result.ok and "longer than 1 s" in result.reason
    assert time.monotonic() - started < 5


def test_python_checker_has_no_special_powers(tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("42")
    reads = f"def check(answer):\n    return open({str(secret)!r}).read() == answer\n"
    result = run_python_checker("42", reads)
    assert not result.ok and "open" in result.reason
    sockets = "import socket\ndef check(answer):\n    return True\n"
    assert "socket" in run_python_checker("42", sockets).reason
    processes = "import subprocess\ndef check(answer):\n    return True\n"
    assert not check_python("42", processes)
    printing = "print('{\"value\": true}')\ndef check(answer):\n    print(True)\n    return None\n"
    assert not check_python("42", printing)  # its output cannot fake the verdict
    memory = "block = bytearray(4 * 2**30)\ndef check(answer):\n    return True\n"
    assert not check_python("42", memory)
    exits = "import os\ndef check(answer):\n    os._exit(0)\n"
    assert run_python_checker("42", exits).reason.startswith("the checker gave no answer")


# ----------------------------------------------------------------------------------- dispatch


def test_checker_dispatch_and_refusals() -> None:
    assert Checker.from_problem({"answer": "3"}).kind == "number"  # the default
    assert check({"checker": "regex", "answer": "x"}, "x").reason.startswith("unknown checker")
    assert check({"checker": "python", "answer": ""}, "x").reason == (
        'a "python" problem needs its "checker_code"'
    )


def test_answer_marker() -> None:
    assert has_answer_marker("so #### 4") and has_answer_marker("\\boxed{4}")
    assert has_answer_marker("The answer is 4") and has_answer_marker("Answer: 4")
    assert not has_answer_marker("4") and not has_answer_marker(None)
