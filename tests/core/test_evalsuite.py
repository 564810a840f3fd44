"""The evaluation figures (training.core.evalsuite) and the ``evaluate`` stage that combines them,
checked against independent computations on tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_ppo import build_reward_model
from tests.core.test_reward import one_thread, preference_rows, write_snapshot  # noqa: F401
from training.core import evalsuite
from training.core.evaluate import NOTHING_TO_MEASURE, EvaluateConfig, run
from training.core.problems import parse_multiple_choice, write_problem_snapshot
from training.core.reporting import RecordingReporter
from training.core.sft import load_for_generation

CONVERSATIONS = [
    [
        {"role": "system", "content": "about apples"},
        {"role": "user", "content": "document number 3"},
        {"role": "assistant", "content": "apples about number 7"},
    ],
    [
        {"role": "user", "content": "number 1"},
        {"role": "assistant", "content": "document"},
        {"role": "user", "content": "about 2"},
        {"role": "assistant", "content": "apples 9"},
    ],
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> tuple[Any, Any]:
    return load_for_generation(tiny_model_dir)


@pytest.fixture(scope="module")
def reward_dirs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("judges")
    return (
        build_reward_model(root / "rm", tiny_model_dir, 1.0),
        build_reward_model(root / "contrarian", tiny_model_dir, -1.0),
    )


def test_roles_tell_reward_models_from_generative_ones(tiny_model_dir, reward_dirs) -> None:
    assert evalsuite.model_role(tiny_model_dir) == "generative"
    assert evalsuite.model_role(reward_dirs[0]) == "reward"


def test_held_out_documents_follow_pretrainings_rule(tmp_path: Path) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n\n".join(f"doc {i}" for i in range(1, 5)))  # documents 1-4
    second.write_text("\n\n".join(f"doc {i}" for i in range(5, 8)))  # documents 5-7
    assert list(evalsuite.held_out_documents([first, second], 3)) == ["doc 3", "doc 6"]


def test_text_figures_match_the_models_own_loss(loaded) -> None:
    import torch

    from training.core.corpus import END_OF_TEXT

    model, tok = loaded
    documents = ["document number 12 about apples", "apples about 3"]
    figures = evalsuite.text_figures(model, tok, documents, max_tokens=10_000)

    eot = tok.convert_tokens_to_ids(END_OF_TEXT)
    ids = [t for d in documents for t in [*tok.encode(d, add_special_tokens=False), eot]]
    assert figures["eval_tokens"] == len(ids) - 1
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert figures["val_loss"] == pytest.approx(float(reference), rel=1e-5)
    # Bits per byte: the loss of the text tokens over the documents' UTF-8 bytes (the
    # end-of-text tokens stand for no text, and byte-level BPE covers every byte exactly once).
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0]
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    text = [i for i, target in enumerate(ids[1:]) if target != eot]
    nbytes = sum(len(d.encode()) for d in documents) - len(tok.decode(ids[:1]).encode())
    expected = float(losses[text].sum()) / (math.log(2) * nbytes)
    assert figures["val_bpb"] == pytest.approx(expected, rel=1e-4)


def test_held_out_sft_loss_counts_only_the_assistants_tokens(loaded) -> None:
    import torch

    model, tok = loaded
    figures = evalsuite.conversation_figures(model, tok, CONVERSATIONS, max_new_tokens=4)
    nats = tokens = 0.0
    for messages in CONVERSATIONS:
        encoded = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor([encoded["input_ids"]])
        labels = ids.clone()
        labels[0, torch.tensor(encoded["assistant_masks"]) == 0] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss  # mean over the reply's tokens
        count = int((labels[0, 1:] != -100).sum())
        nats += float(loss) * count
        tokens += count
    assert figures["conversations"] == 2
    assert figures["sft_loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert figures["replies"] == 2 and 0.0 <= figures["stop_rate"] <= 1.0


def test_multiple_choice_picks_the_likeliest_letter(loaded) -> None:
    import torch

    from training.core.generate import chat_prompt

    model, tok = loaded
    problem = {
        "prompt": [{"role": "user", "content": "Which? A. apples B. number C. about"}],
        "choices": ["apples", "number", "about"],
        "checker": "choice",
    }
    ids = tok.encode(chat_prompt(tok, problem["prompt"]), add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    letters = "ABC"
    firsts = [tok.encode(letter, add_special_tokens=False)[0] for letter in letters]
    likeliest = letters[int(torch.argmax(logits[firsts]))]
    wrong = next(letter for letter in letters if letter != likeliest)
    right = evalsuite.choice_figures(model, tok, [{**problem, "answer": likeliest}])
    assert right == {"mc_accuracy": 1.0, "mc_scored": 1}
    assert evalsuite.choice_figures(model, tok, [{**problem, "answer": wrong}])["mc_accuracy"] == 0
    number = {"prompt": problem["prompt"], "answer": "3", "checker": "number"}
    assert evalsuite.choice_figures(model, tok, [number])["mc_scored"] == 0


def test_factuality_counts_a_refusal_apart_from_wrong() -> None:
    rows = [
        {"greedy": "42", "greedy_correct": True},
        {"greedy": "41", "greedy_correct": False},
        {"greedy": "I don't know.", "greedy_correct": False},
        {"greedy": "7", "greedy_correct": False},
    ]
    assert evalsuite.factuality_figures(rows) == {
        "correct_rate": 0.25,
        "wrong_rate": 0.5,
        "refusal_rate": 0.25,
    }


def test_win_rate_counts_ties_half_and_skips_unanswered_prompts() -> None:
    prompts = [[{"role": "user", "content": str(i)}] for i in range(4)]
    mine = [{"reply": "long reply"}, {"reply": "x"}, {"reply": "same"}, None]
    theirs = [{"reply": "short"}, {"reply": "longer"}, {"reply": "same"}, {"reply": "y"}]

    def by_length(conversations: list[list[dict[str, Any]]]) -> list[float]:
        return [float(len(c[-1]["content"])) for c in conversations]

    figures = evalsuite.win_rate(mine, theirs, prompts, by_length)
    assert figures == {"win_rate": pytest.approx((1 + 0 + 0.5) / 3), "win_pairs": 3}


def test_reward_accuracy_on_held_out_pairs_flips_with_the_judge(tmp_path, reward_dirs) -> None:
    prefs = write_snapshot(tmp_path / "prefs", preference_rows(4, 1), preference_rows(24, 2))
    rm, contrarian = (evalsuite.reward_accuracy(d, [prefs]) for d in reward_dirs)
    assert rm["rm_pairs"] == contrarian["rm_pairs"] == 24
    # The contrarian scores every reply as minus the other: each pair's verdict flips (a tie
    # stays a tie, worth half either way).
    assert rm["rm_accuracy"] + contrarian["rm_accuracy"] == pytest.approx(1.0)
    empty = write_snapshot(tmp_path / "no-held-out", preference_rows(4, 1), [])
    assert evalsuite.reward_accuracy(reward_dirs[0], [empty]) == {
        "rm_accuracy": None,
        "rm_pairs": 0,
    }


def test_the_evaluate_stage_measures_what_its_inputs_allow(
    tmp_path: Path, tiny_model_dir: Path, reward_dirs
) -> None:
    rm = reward_dirs[0]
    problems = tmp_path / "problems"
    write_problem_snapshot(
        [
            {"question": f"What is {i} + 1?", "answer": str(i + 1), "checker": "number"}
            for i in range(6)
        ]
        + parse_multiple_choice(
            [json.dumps({"question": "Fruit?", "choices": ["apples", "number"], "answer": 0})]
        )[0],
        problems,
        validation_fraction=0.0,
    )
    conversations = tmp_path / "sft"
    conversations.mkdir()
    (conversations / "train.jsonl").write_text("")
    (conversations / "validation.jsonl").write_text(
        "".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS)
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document number {i} about apples" for i in range(40)))
    prefs = write_snapshot(tmp_path / "prefs", preference_rows(4, 1), preference_rows(8, 2))
    cfg = EvaluateConfig(split="train", k=2, max_new_tokens=4, max_prompts=4, max_text_tokens=256)
    inputs = {
        "checkpoints": [tiny_model_dir, rm],
        "problems": [problems],
        "text": [corpus],
        "conversations": [conversations],
        "preferences": [prefs],
        "judge": [rm],
        "baseline": [tiny_model_dir],
    }
    reporter = RecordingReporter()
    summary = run(cfg, inputs, tmp_path / "out", reporter)

    generative, reward = summary["checkpoints"]
    assert generative["role"] == "generative" and reward["role"] == "reward"
    for key in ("pass@1", "mc_accuracy", "wrong_rate", "val_bpb", "sft_loss", "stop_rate"):
        assert generative[key] is not None, key
    assert generative["win_rate"] == 0.5  # against itself: the same greedy replies, a tie each
    assert set(reward) == {"checkpoint", "role", "rm_accuracy"}
    assert summary["measured"] == ["problems", "text", "conversations", "preferences", "win_rate"]
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert saved[0]["win_examples"] and saved[0]["per_problem"]
    assert any("checkpoint0/val_bpb" in values for values, _ in reporter.metric_calls)


def test_the_evaluate_stage_refuses_inputs_it_cannot_use(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = EvaluateConfig()
    with pytest.raises(ValueError, match="needs something to measure") as caught:
        run(cfg, {"checkpoints": [tiny_model_dir]}, tmp_path / "out", RecordingReporter())
    assert str(caught.value) == NOTHING_TO_MEASURE
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(ValueError, match="is not a reward model"):
        run(
            cfg,
            {
                "checkpoints": [tiny_model_dir],
                "judge": [tiny_model_dir],
                "baseline": [tiny_model_dir],
                "prompts": [prompts],
            },
            tmp_path / "out",
            RecordingReporter(),
        )
    with pytest.raises(ValueError, match="needs both a judge"):
        run(
            cfg,
            {"checkpoints": [tiny_model_dir], "baseline": [tiny_model_dir], "prompts": [prompts]},
            tmp_path / "out",
            RecordingReporter(),
        )
