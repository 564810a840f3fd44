"""The ``factuality`` stage: the "I don't know" probe.

A remedy for hallucination: find the questions a model gets consistently wrong, and teach it to
say it does not know them rather than make something up. This stage does the finding and drafts
the teaching examples; people review the drafts before they become SFT data.

Inputs: ``inputs["checkpoint"]``, one model folder (a LoRA adapter runs on the base recorded in
its ``adapter_config.json``); ``inputs["questions"]``, one or more problem snapshot folders
(questions with a known answer and a checker, see :mod:`training.core.problems`), both splits
unless ``split`` names one. The first ``max_questions`` questions are asked, snapshot by
snapshot, train before validation.

Each question is asked ``samples`` times (seeded sampling at ``temperature``, prompts batched)
and each reply is judged, in this order:

1. *refused* when :func:`is_refusal` says it declines to answer ("I don't know", "I'm not
   sure", "I cannot answer", "no reliable information", ...): neither right nor wrong;
2. *correct* when the question's checker (:func:`training.core.checkers.check`) accepts it;
3. *wrong* otherwise.

A question is *consistently wrong* when ``wrong / samples >= consistently_wrong_threshold`` (the
default 1.0: every sample wrong; a refusal is not wrong, so a question the model sometimes
declines is not consistently wrong at 1.0). Questions whose prompt does not fit the model's
context window are skipped (counted, not asked).

Output:

- ``factuality.json``: ``{"summary": <the result below>, "questions": [{"index",
  "question_id", "question", "answer", "checker", "correct", "wrong", "refused",
  "consistently_wrong", "samples": [reply texts cut to 500 characters], "verdicts": ["correct" |
  "wrong" | "refused", one per sample]}]}``;
- ``idk_drafts.jsonl``: one line per consistently wrong question, a draft SFT conversation for
  labelers to review: ``{"messages": [system (when the question or the config has one), the
  question's user turn, {"role": "assistant", "content": idk_reply}], "question_id", "question",
  "answer", "wrong", "samples"}``;
- ``orchard.json``: ``{"kind": "factuality", "config", "stats": <the result>}``.

The result: ``questions`` (asked), ``skipped``, ``samples`` (replies judged), ``correct``,
``wrong``, ``refused`` (counts), ``correct_rate``, ``wrong_rate``, ``refusal_rate`` (each over
all samples, so they add up to 1), ``answered_accuracy`` (correct / (correct + wrong), None when
every reply was a refusal), ``consistently_wrong`` and ``drafts`` (counts). Metrics recorded at
the end: ``factuality/correct_rate``, ``factuality/wrong_rate``, ``factuality/refusal_rate``.

``question_id`` is the first 16 hex digits of the SHA-256 of the question text: the same
question has the same id in every run and snapshot.

Simplifications: refusal detection is a fixed list of English phrases (:data:`REFUSAL_PATTERNS`),
not a classifier; a reply that hedges and then answers anyway ("I'm not sure, but I think it's
42") is judged as an answer (:data:`HEDGE_PATTERNS`). A drafted "I don't know" is only right for
questions the model cannot learn to answer; reviewers may instead prefer to teach the answer,
which each draft carries.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.core.reporting import Cancelled, Reporter

QUESTIONS_PER_BATCH = 8
ENGINE_MAX_N = 16  # SamplingParams.n's limit: more samples are drawn in several calls
SAMPLE_CHARS = 500  # replies are cut to this many characters in factuality.json
DEFAULT_IDK_REPLY = (
    "I'm not sure. I don't have reliable information to answer that, and I'd rather not guess."
)

# Replies matching one of these (case-insensitive, after curly apostrophes become straight ones
# and "dont"/"cant"/"im" gain their apostrophes) decline to answer.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bi (?:really |honestly |simply )?(?:do not|don't|did not|didn't) know\b",
    r"\bi have no (?:idea|clue)\b",
    r"\bno idea\b",
    r"\bidk\b",
    r"\bi(?:'m| am) (?:unsure|uncertain)\b",
    r"\bi(?:'m| am) not (?:entirely |completely |totally |really |quite )?(?:sure|certain)\b",
    r"\bnot sure\b",
    r"\bi (?:cannot|can not|can't|could not|couldn't) "
    r"(?:answer|say|tell|know|determine|be (?:sure|certain)|provide (?:an|the|that) answer)\b",
    r"\bi(?:'m| am) (?:unable|not able) to (?:answer|say|tell|determine)\b",
    r"\bunable to answer\b",
    r"\b(?:no|don't have|do not have|lack) (?:(?:any|reliable|enough|sufficient|accurate|"
    r"specific|verified|up-to-date) )*(?:information|knowledge)\b",
    r"\bno reliable (?:information|source|answer)\b",
    r"\bi(?:'d| would) rather not guess\b",
    r"\bi(?:'m| am) not aware\b",
    r"\bi (?:don't|do not) have (?:an|the|that|a reliable) answer\b",
    r"\bbeyond my knowledge\b",
)
# ... unless the reply then answers anyway: a hedge, not a refusal.
HEDGE_PATTERNS: tuple[str, ...] = (
    r"\b(?:but|though|although|however),? (?:i(?: think| believe| guess| would say|'d say)|"
    r"my (?:best )?guess|probably|it(?:'s| is| might be| may be| could be))\b",
    r"\bmy best guess\b",
    r"\bi(?:'d| would) guess\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS))
_HEDGE = re.compile("|".join(f"(?:{p})" for p in HEDGE_PATTERNS))
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_MISSING_APOSTROPHES = {
    "dont": "don't",
    "didnt": "didn't",
    "cant": "can't",
    "couldnt": "couldn't",
    "im": "i'm",
}
_MISSING_APOSTROPHE = re.compile(r"\b(?:dont|didnt|cant|couldnt|im)\b")


class FactualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(5, ge=1, le=64, description="Replies sampled per question.")
    temperature: float = Field(
        0.8, ge=0.0, le=2.0, description="Sampling temperature for the replies (0: greedy)."
    )
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Longest reply, in tokens.")
    max_questions: int = Field(
        200, ge=1, le=100_000, description="Questions asked at most (the first ones)."
    )
    split: Literal["all", "train", "validation"] = Field(
        "all", description="Which part of the problem snapshots to ask: all, train or validation."
    )
    consistently_wrong_threshold: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description=(
            "Share of a question's samples that must be wrong (refusals do not count as wrong) "
            'for it to count as consistently wrong and get an "I don\'t know" draft; 1 = all.'
        ),
    )
    system_prompt: str | None = Field(
        None, description="Put before every question (and into the drafts), if given."
    )
    seed: int = Field(0, ge=0, description="Random seed for reproducible samples.")
    idk_reply: str = Field(
        DEFAULT_IDK_REPLY,
        min_length=1,
        max_length=2000,
        description="The assistant's reply in the drafted \"I don't know\" examples.",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")


def is_refusal(text: str) -> bool:
    """Does the reply decline to answer? A match of :data:`REFUSAL_PATTERNS` (case-insensitive,
    tolerant of curly or missing apostrophes), unless :data:`HEDGE_PATTERNS` shows an answer
    follows anyway. "I know that..." or "I'm sure it is 4" are not refusals."""
    normal = text.translate(_APOSTROPHES).lower()
    normal = _MISSING_APOSTROPHE.sub(lambda m: _MISSING_APOSTROPHES[m.group(0)], normal)
    normal = re.sub(r"\s+", " ", normal)
    return bool(_REFUSAL.search(normal)) and not _HEDGE.search(normal)


def question_id(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]


def prompt_messages(problem: dict[str, Any], system_prompt: str | None) -> list[dict[str, Any]]:
    """The conversation that asks the question (the problem's prompt, with the system prompt
    put first when given and the prompt has none)."""
    messages = problem.get("prompt") or [{"role": "user", "content": problem["question"]}]
    if system_prompt and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return [dict(m) for m in messages]


# A sampler answers a batch of conversations: ``samples`` reply texts for each, or None for a
# conversation that does not fit the model's context window. ``seed`` varies per batch.
Sampler = Callable[[list[list[dict[str, Any]]], int, Callable[[], bool]], list[list[str] | None]]


def load_sampler(checkpoint: Path, cfg: FactualityConfig) -> Sampler:
    """The generation engine on ``checkpoint``, as a :data:`Sampler` (tests replace this)."""
    from training.core.generate import Engine, SamplingParams, chat_prompt

    engine = Engine.load(checkpoint, device=cfg.device)
    tokenizer = engine.tokenizer

    def sample(
        conversations: list[list[dict[str, Any]]], seed: int, should_stop: Callable[[], bool]
    ) -> list[list[str] | None]:
        texts = [chat_prompt(tokenizer, messages) for messages in conversations]
        fits = [
            len(tokenizer.encode(text, add_special_tokens=False)) < engine.context_window
            for text in texts
        ]
        usable = [i for i, ok in enumerate(fits) if ok]
        replies: list[list[str] | None] = [[] if ok else None for ok in fits]
        drawn = 0
        while usable and drawn < cfg.samples:
            count = min(ENGINE_MAX_N, cfg.samples - drawn)
            params = SamplingParams(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                n=count,
                seed=seed + drawn,
            )
            done = engine.generate([texts[i] for i in usable], params, should_stop=should_stop)
            for completion in done:
                target = replies[usable[completion.prompt_index]]
                assert target is not None
                target.append(completion.text.strip())
            drawn += count
        return replies

    return sample


def read_questions(inputs: dict[str, list[Path]], cfg: FactualityConfig) -> list[dict[str, Any]]:
    from training.core.problems import read_problems

    folders = [Path(p) for p in inputs.get("questions") or []]
    checkpoints = inputs.get("checkpoint") or []
    if len(checkpoints) != 1 or not folders:
        raise ValueError(
            "the factuality probe needs exactly one checkpoint and at least one question snapshot"
        )
    splits = ("train", "validation") if cfg.split == "all" else (cfg.split,)
    questions = []
    for folder in folders:
        problems = read_problems(folder)
        questions.extend(p for split in splits for p in problems[split])
    if not questions:
        where = "" if cfg.split == "all" else f" {cfg.split}"
        raise ValueError(f"the question snapshots hold no{where} questions")
    return questions[: cfg.max_questions]


def judge(problem: dict[str, Any], reply: str) -> Literal["correct", "wrong", "refused"]:
    """A reply's verdict: refused (:func:`is_refusal`), else correct or wrong by the checker."""
    from training.core.checkers import check

    if is_refusal(reply):
        return "refused"
    return "correct" if check(problem, reply).correct else "wrong"


def consistently_wrong(wrong: int, samples: int, threshold: float) -> bool:
    """``wrong / samples >= threshold``, exact for thresholds such as 0.6 of 5."""
    return samples > 0 and wrong >= threshold * samples - 1e-9


def run(
    cfg: FactualityConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    questions = read_questions(inputs, cfg)
    total = len(questions)
    reporter.progress(0, total, "loading the model")
    if reporter.should_stop():
        raise Cancelled()
    sample = load_sampler(Path(inputs["checkpoint"][0]), cfg)
    rows: list[dict[str, Any]] = []
    drafts: list[dict[str, Any]] = []
    skipped = 0
    for start in range(0, total, QUESTIONS_PER_BATCH):
        if reporter.should_stop():
            raise Cancelled()
        batch = questions[start : start + QUESTIONS_PER_BATCH]
        conversations = [prompt_messages(p, cfg.system_prompt) for p in batch]
        replies = sample(conversations, cfg.seed * 1_000_003 + start * 64, reporter.should_stop)
        if reporter.should_stop():  # the engine stopped mid-batch: its replies are cut short
            raise Cancelled()
        for offset, (problem, messages, texts) in enumerate(
            zip(batch, conversations, replies, strict=True)
        ):
            if texts is None:
                skipped += 1
                continue
            row = _judge_question(start + offset, problem, texts, cfg)
            rows.append(row)
            if row["consistently_wrong"]:
                drafts.append(_draft(row, messages, cfg.idk_reply))
        reporter.progress(start + len(batch), total, f"{start + len(batch)} of {total} questions")

    result = _summary(rows, skipped, len(drafts))
    reporter.metrics(
        {
            f"factuality/{key}": result[key]
            for key in ("correct_rate", "wrong_rate", "refusal_rate")
        },
        total,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "factuality.json").write_text(
        json.dumps({"summary": result, "questions": rows}, indent=1, ensure_ascii=False)
    )
    with open(out_dir / "idk_drafts.jsonl", "w", encoding="utf-8") as handle:
        for draft in drafts:
            handle.write(json.dumps(draft, ensure_ascii=False) + "\n")
    manifest = {"kind": "factuality", "config": cfg.model_dump(), "stats": result}
    (out_dir / "orchard.json").write_text(json.dumps(manifest, indent=1))
    return result


def _judge_question(
    index: int, problem: dict[str, Any], texts: list[str], cfg: FactualityConfig
) -> dict[str, Any]:
    verdicts = [judge(problem, text) for text in texts]
    wrong = verdicts.count("wrong")
    question = problem.get("question") or problem["prompt"][-1]["content"]
    return {
        "index": index,
        "question_id": question_id(question),
        "question": question,
        "answer": problem.get("answer"),
        "checker": problem.get("checker", "number"),
        "correct": verdicts.count("correct"),
        "wrong": wrong,
        "refused": verdicts.count("refused"),
        "consistently_wrong": consistently_wrong(
            wrong, len(texts), cfg.consistently_wrong_threshold
        ),
        "samples": [text[:SAMPLE_CHARS] for text in texts],
        "verdicts": verdicts,
    }


def _draft(row: dict[str, Any], messages: list[dict[str, Any]], reply: str) -> dict[str, Any]:
    return {
        "messages": [*messages, {"role": "assistant", "content": reply}],
        "question_id": row["question_id"],
        "question": row["question"],
        "answer": row["answer"],
        "wrong": row["wrong"],
        "samples": len(row["samples"]),
    }


def _summary(rows: list[dict[str, Any]], skipped: int, drafts: int) -> dict[str, Any]:
    counts = {key: sum(r[key] for r in rows) for key in ("correct", "wrong", "refused")}
    samples = sum(counts.values())
    answered = counts["correct"] + counts["wrong"]
    return {
        "questions": len(rows),
        "skipped": skipped,
        "samples": samples,
        **counts,
        "correct_rate": counts["correct"] / samples if samples else 0.0,
        "wrong_rate": counts["wrong"] / samples if samples else 0.0,
        "refusal_rate": counts["refused"] / samples if samples else 0.0,
        "answered_accuracy": counts["correct"] / answered if answered else None,
        "consistently_wrong": sum(r["consistently_wrong"] for r in rows),
        "drafts": drafts,
    }
