"""The factuality probe: refusals spotted, replies judged, consistently wrong questions drafted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.core import factuality
from training.core.factuality import (
    DEFAULT_IDK_REPLY,
    FactualityConfig,
    consistently_wrong,
    is_refusal,
    question_id,
    run,
)
from training.core.problems import arithmetic_problems, write_problem_snapshot
from training.core.reporting import Cancelled, RecordingReporter

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text",
    [
        DEFAULT_IDK_REPLY,
        "I don't know.",
        "I dont know",
        "I don\u2019t know the answer to that.",
        "i DO NOT KNOW",
        "IDK",
        "Honestly, I have no idea!",
        "I'm not sure.",
        "Im not sure about this one",
        "I am not entirely certain.",
        "I'm unsure.",
        "I cannot answer that question.",
        "I can't answer this reliably.",
        "Sorry, I'm unable to answer.",
        "There is no reliable information about that.",
        "I don't have enough reliable information to say.",
        "I'd rather not guess.",
    ],
)
def test_refusals_are_recognised(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "I know that 2 + 2 = 4.",
        "I know the answer: 12.",
        "I'm sure it is 12.",
        "The answer is 12.",
        "12",
        "",
        "I'm not sure, but I think it's 42.",  # a hedge, then an answer anyway
        "Not sure, my best guess is 7.",
        "It is well known that the answer is 5.",
    ],
)
def test_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_threshold_is_exact_for_shares() -> None:
    assert consistently_wrong(5, 5, 1.0) and not consistently_wrong(4, 5, 1.0)
    assert consistently_wrong(3, 5, 0.6) and not consistently_wrong(2, 5, 0.6)
    assert consistently_wrong(3, 10, 0.3) and not consistently_wrong(0, 0, 0.5)


def snapshot(folder: Path, problems: list[dict[str, Any]]) -> Path:
    write_problem_snapshot(problems, folder, validation_fraction=0.3)
    return folder


@pytest.fixture
def questions(tmp_path: Path) -> Path:
    return snapshot(tmp_path / "questions", arithmetic_problems(5, difficulty=3, seed=1))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_untrained_model_is_consistently_wrong(
    tmp_path: Path, tiny_model_dir: Path, questions: Path
) -> None:
    cfg = FactualityConfig(samples=3, max_new_tokens=6, system_prompt="Be brief.", seed=2)
    inputs = {"checkpoint": [tiny_model_dir], "questions": [questions]}
    reporter = RecordingReporter()
    result = run(cfg, inputs, tmp_path / "out", reporter)

    assert result["questions"] == 5 and result["skipped"] == 0 and result["samples"] == 15
    rates = result["correct_rate"] + result["wrong_rate"] + result["refusal_rate"]
    assert rates == pytest.approx(1.0)
    assert result["wrong_rate"] == 1.0  # random weights know no arithmetic
    assert result["consistently_wrong"] == result["drafts"] == 5

    report = json.loads((tmp_path / "out" / "factuality.json").read_text())
    assert report["summary"] == result
    rows = report["questions"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    for row in rows:
        assert (row["correct"], row["wrong"], row["refused"]) == (0, 3, 0)
        assert len(row["samples"]) == 3 and row["verdicts"] == ["wrong"] * 3
        assert row["question"].startswith("What is ") and row["answer"]

    drafts = read_jsonl(tmp_path / "out" / "idk_drafts.jsonl")
    assert [d["question_id"] for d in drafts] == [question_id(r["question"]) for r in rows]
    for draft, row in zip(drafts, rows, strict=True):
        assert draft["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": DEFAULT_IDK_REPLY},
        ]
        assert draft["answer"] == row["answer"]

    manifest = json.loads((tmp_path / "out" / "orchard.json").read_text())
    assert manifest["kind"] == "factuality" and manifest["stats"] == result
    [(metrics, step)] = reporter.metric_calls
    assert metrics == {
        "factuality/correct_rate": 0.0,
        "factuality/wrong_rate": 1.0,
        "factuality/refusal_rate": 0.0,
    }
    assert reporter.progress_calls[-1][:2] == (5, 5)

    again = run(cfg, inputs, tmp_path / "again", RecordingReporter())
    assert again == result
    assert (tmp_path / "again" / "factuality.json").read_text() == (
        tmp_path / "out" / "factuality.json"
    ).read_text()  # seeded


def test_cancel_stops_before_writing(tmp_path: Path, tiny_model_dir: Path, questions: Path) -> None:
    inputs = {"checkpoint": [tiny_model_dir], "questions": [questions]}
    with pytest.raises(Cancelled):
        run(FactualityConfig(), inputs, tmp_path / "out", RecordingReporter(1))
    assert not (tmp_path / "out").exists()


def fake_sampler(replies: dict[str, list[str]]) -> Any:
    """A load_sampler stand-in: fixed replies per question; None (too long) for "skip me"."""

    def load(checkpoint: Path, cfg: FactualityConfig) -> Any:
        def sample(conversations, seed, should_stop):  # type: ignore[no-untyped-def]
            out = []
            for messages in conversations:
                question = messages[-1]["content"]
                out.append(None if question == "skip me" else replies[question][: cfg.samples])
            return out

        return sample

    return load


PROBLEMS = [
    {"question": "What is 2 + 2?", "answer": "4", "checker": "number"},
    {"question": "What is 3 + 3?", "answer": "6", "checker": "number"},
    {"question": "What is 5 + 5?", "answer": "10", "checker": "number"},
    {"question": "What is 7 + 7?", "answer": "14", "checker": "number"},
    {"question": "skip me", "answer": "1", "checker": "number"},
    {
        "question": "Which colour is the sky?",
        "answer": "B",
        "checker": "choice",
        "choices": ["green", "blue"],
    },
]
REPLIES = {
    "What is 2 + 2?": ["4", "The answer is 4.", "5", "I don't know.", "4"],  # 3 right
    "What is 3 + 3?": ["7", "8", "9", "5", "I'm not sure."],  # 4 wrong, 1 refused
    "What is 5 + 5?": ["11", "12", "13", "9", "1"],  # all wrong
    "What is 7 + 7?": ["15", "15", "14", "I cannot answer that.", "16"],  # 3 wrong
    "Which colour is the sky?": ["A", "A", "A", "A", "(A)"],  # all wrong
}


def test_accounting_and_threshold_with_fixed_replies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = snapshot(tmp_path / "q", PROBLEMS)
    monkeypatch.setattr(factuality, "load_sampler", fake_sampler(REPLIES))
    inputs = {"checkpoint": [tmp_path], "questions": [folder]}

    def probe(name: str, **config: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg = FactualityConfig(idk_reply="No idea, sorry.", **config)
        result = run(cfg, inputs, tmp_path / name, RecordingReporter())
        rows = json.loads((tmp_path / name / "factuality.json").read_text())["questions"]
        return result, rows

    result, rows = probe("all")
    counts = {r["question"]: (r["correct"], r["wrong"], r["refused"]) for r in rows}
    assert counts == {
        "What is 2 + 2?": (3, 1, 1),
        "What is 3 + 3?": (0, 4, 1),
        "What is 5 + 5?": (0, 5, 0),
        "What is 7 + 7?": (1, 3, 1),
        "Which colour is the sky?": (0, 5, 0),
    }
    assert result["questions"] == 5 and result["skipped"] == 1 and result["samples"] == 25
    assert (result["correct"], result["wrong"], result["refused"]) == (4, 18, 3)
    assert result["correct_rate"] == pytest.approx(4 / 25)
    assert result["wrong_rate"] == pytest.approx(18 / 25)
    assert result["refusal_rate"] == pytest.approx(3 / 25)
    assert result["answered_accuracy"] == pytest.approx(4 / 22)
    by_question = {r["question"]: r for r in rows}
    assert by_question["What is 3 + 3?"]["verdicts"] == ["wrong"] * 4 + ["refused"]
    # threshold 1.0: only the all-wrong questions (a refusal is not wrong)
    drafted = {d["question"] for d in read_jsonl(tmp_path / "all" / "idk_drafts.jsonl")}
    assert drafted == {"What is 5 + 5?", "Which colour is the sky?"}
    assert result["consistently_wrong"] == result["drafts"] == 2
    assert all(
        d["messages"][-1] == {"role": "assistant", "content": "No idea, sorry."}
        for d in read_jsonl(tmp_path / "all" / "idk_drafts.jsonl")
    )

    result, _ = probe("eighty", consistently_wrong_threshold=0.8)  # 4 of 5 wrong is enough
    assert result["consistently_wrong"] == 3
    result, _ = probe("sixty", consistently_wrong_threshold=0.6)  # 3 of 5
    assert result["consistently_wrong"] == 4
    result, _ = probe("three", consistently_wrong_threshold=0.6, samples=3)
    assert result["samples"] == 15 and result["consistently_wrong"] == 4  # 7+7: 2 of 3 wrong
    result, rows = probe("two", max_questions=2)  # the first two: train, then validation
    order = [q for split in ("train", "validation") for q in questions_of(folder, split)]
    assert [r["question"] for r in rows] == [q for q in order[:2] if q != "skip me"]


def questions_of(folder: Path, split: str) -> list[str]:
    lines = (folder / f"{split}.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"][-1]["content"] for line in lines]


def test_split_and_bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = snapshot(tmp_path / "q", PROBLEMS)
    monkeypatch.setattr(factuality, "load_sampler", fake_sampler(REPLIES))
    splits = {split: questions_of(folder, split) for split in ("train", "validation")}
    assert splits["train"] and splits["validation"]  # the test needs both
    for split in ("train", "validation"):
        cfg = FactualityConfig(split=split)
        run(cfg, {"checkpoint": [tmp_path], "questions": [folder]}, tmp_path / split,
            RecordingReporter())  # fmt: skip
        rows = json.loads((tmp_path / split / "factuality.json").read_text())["questions"]
        assert [r["question"] for r in rows] == [q for q in splits[split] if q != "skip me"]
    with pytest.raises(ValueError, match="exactly one checkpoint"):
        run(FactualityConfig(), {"questions": [folder]}, tmp_path / "x", RecordingReporter())
    empty = tmp_path / "empty"
    write_problem_snapshot(PROBLEMS[:1], empty, validation_fraction=0.0)
    with pytest.raises(ValueError, match="no validation questions"):
        run(FactualityConfig(split="validation"), {"checkpoint": [tmp_path], "questions": [empty]},
            tmp_path / "y", RecordingReporter())  # fmt: skip


def test_cli_smoke(tmp_path: Path, tiny_model_dir: Path, questions: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"samples": 2, "max_new_tokens": 4, "max_questions": 2}))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-m", "training.core", "factuality", "--config", str(config),
         "--input", f"checkpoint={tiny_model_dir}", "--input", f"questions={questions}",
         "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["questions"] == 2 and result["samples"] == 4
    assert (tmp_path / "out" / "idk_drafts.jsonl").is_file()
