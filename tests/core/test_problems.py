"""Problem banks: GSM8K parsing (on the real file), generated arithmetic, problem snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.data import SHARED_DATA
from training.core.checkers import check, parse_number
from training.core.problems import (
    arithmetic_problems,
    parse_gsm8k,
    parse_multiple_choice,
    read_gsm8k,
    read_problems,
    split_of,
    validate_problem,
    write_problem_snapshot,
)

GSM8K = SHARED_DATA / "math" / "gsm8k"


@pytest.fixture(scope="module")
def gsm8k_train() -> list[dict]:
    problems, errors = read_gsm8k(GSM8K / "train.jsonl")
    assert errors == []
    return problems


# -------------------------------------------------------------------------------------- GSM8K


def test_gsm8k_train_parses_completely(gsm8k_train: list[dict]) -> None:
    assert len(gsm8k_train) == 7473
    first = gsm8k_train[0]
    assert first["question"].startswith("Natalia sold clips to 48 of her friends")
    assert first["answer"] == "72" and first["checker"] == "number"
    assert first["solution"] == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert all(parse_number(p["answer"]) is not None for p in gsm8k_train)
    assert all("," not in p["answer"] for p in gsm8k_train)  # "1,080" is stored as "1080"
    assert not any("<<" in p["solution"] or ">>" in p["solution"] for p in gsm8k_train)
    assert not any("####" in p["solution"] for p in gsm8k_train)
    with_commas = [p for p in gsm8k_train if p["answer"] == "1080"]
    assert with_commas  # the file writes some answers as "#### 1,080"


def test_gsm8k_reference_solutions_pass_their_checker(gsm8k_train: list[dict]) -> None:
    for problem in gsm8k_train[:500]:
        assert check(problem, f"{problem['solution']}\n#### {problem['answer']}").correct


def test_gsm8k_test_split_and_bad_lines() -> None:
    problems, errors = read_gsm8k(GSM8K / "test.jsonl")
    assert len(problems) == 1319 and errors == []
    lines = [
        json.dumps({"question": "Q?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}),
        "",
        "{oops",
        json.dumps({"question": "Q?", "answer": "no final answer"}),
        json.dumps({"question": "", "answer": "#### 3"}),
        json.dumps({"question": "Q?", "answer": "#### three"}),
        json.dumps(["not", "an", "object"]),
    ]
    good, bad = parse_gsm8k(lines)
    assert [p["solution"] for p in good] == ["1 + 1 = 2"] and good[0]["line"] == 1
    assert [e["line"] for e in bad] == [3, 4, 5, 6, 7]
    assert "not valid JSON" in bad[0]["error"] and "####" in bad[1]["error"]
    assert "is not a number" in bad[3]["error"]


# ---------------------------------------------------------------------------- multiple choice


def test_multiple_choice_layouts_all_become_lettered_choice_problems() -> None:
    mmlu = {"question": "2 + 2?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"}
    arc_hub = {
        "question": "Which is a fruit?",
        "choices": {"text": ["rock", "apple", "cloud"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    }
    arc_original = {
        "question": {
            "stem": "Water freezes at?",
            "choices": [{"text": "0 C", "label": "A"}, {"text": "50 C", "label": "B"}],
        },
        "answerKey": "A",
    }
    plain = {"question": "Pick C", "options": ["x", "y", "z"], "label": "c"}
    good, bad = parse_multiple_choice(json.dumps(r) for r in (mmlu, arc_hub, arc_original, plain))
    assert bad == []
    assert [p["answer"] for p in good] == ["B", "B", "A", "C"]
    assert good[0]["choices"] == ["3", "4", "5", "6"] and good[0]["source"] == "math"
    assert good[1]["question"].startswith("Which is a fruit?\n\nA. rock\nB. apple\nC. cloud")
    for problem in good:  # each is a valid choice problem, and its own answer passes
        checked = validate_problem(problem, "test")
        assert check(checked, f"The answer is {problem['answer']}.").correct


def test_multiple_choice_bad_lines_say_what_is_wrong() -> None:
    lines = [
        "{oops",
        json.dumps({"question": "Q", "choices": ["only one"], "answer": 0}),
        json.dumps({"question": "Q", "choices": ["a", "b"], "answer": 2}),
        json.dumps({"question": "Q", "choices": ["a", "b"], "answer": "E"}),
        json.dumps({"question": "Q", "choices": ["a", "b"]}),
        json.dumps({"question": "", "choices": ["a", "b"], "answer": 0}),
        json.dumps({"question": "Q", "choices": ["a", ""], "answer": 0}),
        "",
        json.dumps({"question": "Q", "choices": ["a", "b"], "answer": "b"}),
    ]
    good, bad = parse_multiple_choice(lines)
    assert [p["line"] for p in good] == [9]
    assert [e["line"] for e in bad] == [1, 2, 3, 4, 5, 6, 7]
    messages = [e["error"] for e in bad]
    assert "not valid JSON" in messages[0] and "2 to 26 options" in messages[1]
    assert "outside the 2 choices" in messages[2] and "names none of the choices" in messages[3]
    assert "no answer" in messages[4] and "non-empty string" in messages[5]
    assert "non-empty text" in messages[6]


# --------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_arithmetic_answers_are_right_and_deterministic(difficulty: int) -> None:
    problems = arithmetic_problems(40, difficulty, seed=7)
    assert problems == arithmetic_problems(40, difficulty, seed=7)
    assert problems != arithmetic_problems(40, difficulty, seed=8)
    assert len({p["question"] for p in problems}) == 40
    for problem in problems:
        expression = problem["question"].removeprefix("What is ").removesuffix("?")
        assert set(expression) <= set("0123456789 +-*()")
        assert int(problem["answer"]) == eval(expression)  # noqa: S307 (our own digits only)
        assert problem["checker"] == "number" and problem["difficulty"] == difficulty
        assert check(problem, f"The answer is {problem['answer']}").correct


def test_arithmetic_difficulty_grows() -> None:
    easy = arithmetic_problems(30, 1, seed=0)
    assert all(0 <= int(p["answer"]) <= 18 for p in easy)
    assert all(p["question"].count(" ") == 4 for p in easy)  # "What is a + b?"
    hard = arithmetic_problems(30, 5, seed=0)
    assert all(p["question"].count("(") == 1 for p in hard)
    assert all(sum(p["question"].count(op) for op in "+-*") == 3 for p in hard)


def test_arithmetic_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="difficulty 1 has fewer than 500 distinct problems"):
        arithmetic_problems(500, 1, seed=0)
    with pytest.raises(ValueError, match="difficulty must be 1 to 5"):
        arithmetic_problems(5, 6)


# ---------------------------------------------------------------------------------- snapshots


def test_snapshot_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    problems = arithmetic_problems(100, 2, seed=1)
    problems.append(
        {
            "question": "Capital of France?",
            "answer": "b",
            "checker": "choice",
            "choices": ["London", "Paris"],
        }
    )
    problems.append(
        {
            "question": "Say hi",
            "answer": "",
            "checker": "python",
            "checker_code": "def check(answer):\n    return 'hi' in answer.lower()\n",
        }
    )
    card = write_problem_snapshot(problems, tmp_path / "a", validation_fraction=0.2, salt="s")
    again = write_problem_snapshot(
        list(reversed(problems)), tmp_path / "b", validation_fraction=0.2, salt="s"
    )
    assert card["counts"]["total"] == 102 and 5 <= card["counts"]["validation"] <= 40
    assert card["counts"] == again["counts"]
    assert card["checkers"] == {"choice": 1, "number": 100, "python": 1}
    for name in ("train.jsonl", "validation.jsonl"):  # same lines, input order kept per split
        a = (tmp_path / "a" / name).read_text().splitlines()
        b = (tmp_path / "b" / name).read_text().splitlines()
        assert sorted(a) == sorted(b) and a == list(reversed(b))
    write_problem_snapshot(problems, tmp_path / "c", validation_fraction=0.2, salt="s")
    assert json.loads((tmp_path / "c" / "card.json").read_text()) == card
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (
        tmp_path / "c" / "train.jsonl"
    ).read_bytes()
    other_salt = write_problem_snapshot(problems, tmp_path / "d", validation_fraction=0.2, salt="t")
    assert other_salt["content_sha256"] != card["content_sha256"]

    read = read_problems(tmp_path / "a")
    assert len(read["train"]) + len(read["validation"]) == 102
    line = json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])
    assert set(line) == {"prompt", "answer", "checker"}
    assert line["prompt"] == [{"role": "user", "content": read["train"][0]["question"]}]
    by_question = {p["question"]: p for p in read["train"] + read["validation"]}
    choice = by_question["Capital of France?"]
    assert choice["answer"] == "B" and choice["choices"] == ["London", "Paris"]
    assert check(choice, "Paris").correct
    assert check(by_question["Say hi"], "Hi there").correct
    for problem in read["validation"]:
        assert split_of(problem["question"], 0.2, "s") == "validation"


def test_snapshot_refuses_bad_problems(tmp_path: Path) -> None:
    cases = [
        ({"question": "", "answer": "1"}, '"question" must be a non-empty string'),
        ({"question": "Q", "answer": "one"}, "is not a number"),
        ({"question": "Q", "answer": "1", "checker": "regex"}, "unknown checker"),
        ({"question": "Q", "answer": "C", "checker": "choice", "choices": ["a", "b"]}, "A to B"),
        ({"question": "Q", "answer": "A", "checker": "choice"}, "2 to 26 option texts"),
        ({"question": "Q", "answer": "", "checker": "python"}, "checker_code"),
        (
            {"question": "Q", "answer": "", "checker": "python", "checker_code": "def check(:"},
            "does not compile",
        ),
        ({"question": "Q", "answer": None}, '"answer" must be a string or a number'),
    ]
    for problem, message in cases:
        with pytest.raises(ValueError, match="problem 2: .*" + message):
            write_problem_snapshot([{"question": "ok", "answer": 1}, problem], tmp_path / "x")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(
        '{"prompt": [{"role": "user", "content": "Q"}], "answer": "1"}\n{\n'
    )
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: not valid JSON"):
        read_problems(bad)
    with pytest.raises(ValueError, match="is not a problem snapshot"):
        read_problems(tmp_path / "missing")
