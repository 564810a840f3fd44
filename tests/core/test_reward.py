"""The reward stage: TRL's RewardTrainer on conftest's tiny Llama and tiny preference sets."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from tests.support.precision import auto_dtype_on_cpu
from training.core.checkpoints import COMPLETE
from training.core.reporting import RecordingReporter
from training.core.reward import (
    RewardConfig,
    load_reward_model,
    pairwise_accuracy,
    prepare,
    read_pairs,
    run,
    score,
)

REPO = Path(__file__).resolve().parents[2]

FAST: dict[str, Any] = {
    "max_length": 128,
    "batch_size": 8,
    "log_every": 1,
    "eval_every": 0,
    "save_every": 1000,
    "device": "cpu",
}
# The easy signal: good replies use words from one pool, bad replies from the other (all are
# words of conftest's tokenizer corpus, "document number {i} about apples").
GOOD, BAD = ["apples", "about"], ["number", "document"]


def reply(rng: random.Random, words: list[str]) -> list[dict[str, str]]:
    text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) + f" {rng.randint(0, 9)}"
    return [{"role": "assistant", "content": text}]


def preference_rows(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        prompt = [{"role": "user", "content": f"document {rng.randint(0, 99)} {i}?"}]
        if i % 3 == 0:  # a multi-turn prompt with a system message
            prompt = [
                {"role": "system", "content": "about"},
                {"role": "user", "content": "number 1"},
                {"role": "assistant", "content": "apples"},
                *prompt,
            ]
        rows.append({"prompt": prompt, "chosen": reply(rng, GOOD), "rejected": reply(rng, BAD)})
    return rows


def implicit(row: dict[str, Any]) -> dict[str, Any]:
    return {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_snapshot(
    folder: Path, train: list[Any], validation: list[Any] | None = None, raw: str | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = raw if raw is not None else "".join(json.dumps(c) + "\n" for c in train)
    (folder / "train.jsonl").write_text(lines)
    (folder / "validation.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in validation or [])
    )
    return folder


def cfg(**overrides: Any) -> RewardConfig:
    return RewardConfig(**{**FAST, **overrides})


class Trained(NamedTuple):
    out: Path
    result: dict[str, Any]
    reporter: RecordingReporter
    work: Path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """conftest's tiny Llama and tokenizer, with a 256-token context for multi-turn prompts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("base") / "model"
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.max_position_embeddings = 256
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prefs")
    train = preference_rows(48, seed=1)
    train[1::4] = [implicit(r) for r in train[1::4]]  # both forms in one file
    return write_snapshot(root / "polite", train, preference_rows(20, seed=2))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, prefs: Path) -> Trained:
    root = tmp_path_factory.mktemp("full")
    reporter = RecordingReporter()
    config = cfg(max_steps=24, learning_rate=3e-3, eval_every=8)
    inputs = {"base": [base_dir], "datasets": [prefs]}
    result = run(config, inputs, root / "out", reporter, work_dir=root / "work")
    return Trained(root / "out", result, reporter, root / "work")


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, prefs: Path) -> Trained:
    root = tmp_path_factory.mktemp("lora")
    reporter = RecordingReporter()
    config = cfg(method="lora", max_steps=16, learning_rate=1e-2, center_rewards_coefficient=0.01)
    inputs = {"base": [base_dir], "datasets": [prefs]}
    result = run(config, inputs, root / "out", reporter, work_dir=root / "work")
    return Trained(root / "out", result, reporter, root / "work")


# ------------------------------------------------------------------------------------ config


def test_config_defaults_and_validation() -> None:
    default = RewardConfig()
    assert default.method == "full" and default.max_length == 512 and default.epochs == 1.0
    assert default.peak_learning_rate() == 1e-4
    assert RewardConfig(method="lora").peak_learning_rate() == 1e-3
    assert RewardConfig(learning_rate=0.02).peak_learning_rate() == 0.02
    assert default.center_rewards_coefficient is None and default.validation_fraction == 0.1
    assert all(f.description for f in RewardConfig.model_fields.values())
    for bad, field_name in [
        ({"colour": "red"}, "colour"),
        ({"method": "dpo"}, "method"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"max_length": 8}, "max_length"),
        ({"validation_fraction": 0.9}, "validation_fraction"),
        ({"center_rewards_coefficient": -1}, "center_rewards_coefficient"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValidationError) as caught:
            RewardConfig(**bad)
        assert caught.value.errors()[0]["loc"][0] == field_name


def test_pairwise_accuracy_counts_ties_as_half() -> None:
    assert pairwise_accuracy([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, -1.0]) == 0.625
    with pytest.raises(ValueError, match="3 chosen scores but 2 rejected"):
        pairwise_accuracy([1.0, 2.0, 3.0], [0.0, 1.0])


def test_implicit_pairs_split_at_the_shared_messages(tmp_path: Path) -> None:
    row = preference_rows(3, seed=5)[0]  # a multi-turn prompt
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(implicit(row)) + "\n\n" + json.dumps({**row, "margin": 2}) + "\n")
    first, second = read_pairs(path)
    assert first.prompt == row["prompt"] and first.chosen == row["chosen"]
    assert first.rejected == row["rejected"] and first.margin is None
    assert second.prompt == row["prompt"] and second.margin == 2.0
    assert second.where == f"{path}, line 3"


# ---------------------------------------------------------------------------------- training


def test_reward_model_learns_the_preference(full: Trained) -> None:
    result, reporter = full.result, full.reporter
    assert result["steps"] == 24 and not result["stopped_early"]
    assert result["pairs"] == 48 and result["validation_pairs"] == 20
    assert result["dropped_too_long"] == 0 and result["resumed_from_step"] is None
    assert result["val_accuracy"] >= 0.8 and result["train_accuracy"] >= 0.8
    assert result["train_loss_last"] < 0.6 * result["train_loss_first"]
    assert result["trainable_params"] == result["total_params"] > 0
    assert (result["device"], result["dtype"]) == ("cpu", auto_dtype_on_cpu())
    assert result["seconds"] > 0
    assert [step for step, _, _ in reporter.progress_calls] == list(range(1, 25))
    names = {name for values, _ in reporter.metric_calls for name in values}
    assert {"train/loss", "train/accuracy", "train/margin", "val/loss", "val/accuracy"} <= names
    assert [s for v, s in reporter.metric_calls if "val/accuracy" in v] == [8, 16, 24]
    last_val = [v for v, _ in reporter.metric_calls if "val/accuracy" in v][-1]
    assert last_val["val/accuracy"] == result["val_accuracy"]


def test_worst_pairs_are_recorded_with_their_scores(full: Trained) -> None:
    (record,) = [(p, s) for name, p, s in full.reporter.records if name == "worst_pairs"]
    payload, step = record
    assert step == 24 and payload["validation_pairs"] == 20
    pairs = payload["pairs"]
    assert len(pairs) == 20  # fewer than 20 wrong ones: the closest correct ones fill the list
    margins = [p["margin"] for p in pairs]
    assert margins == sorted(margins)
    for pair in pairs:
        assert pair["margin"] == pytest.approx(pair["chosen_score"] - pair["rejected_score"])
        assert pair["prompt"].startswith(("user: document", "system: about"))
        assert pair["chosen"] and pair["rejected"]
    wrong = sum(m <= 0 for m in margins)
    assert payload["wrong"] == wrong
    assert payload["accuracy"] == full.result["val_accuracy"]


def test_output_is_a_reward_model_folder(full: Trained) -> None:
    names = {p.name for p in full.out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "orchard.json",
    } <= names
    assert "adapter_config.json" not in names
    config = json.loads((full.out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == 1 and config["pad_token_id"] == 1
    manifest = json.loads((full.out / "orchard.json").read_text())
    assert manifest["kind"] == "checkpoint" and manifest["stage"] == "reward"
    assert manifest["config"]["max_steps"] == 24
    assert manifest["stats"]["val_accuracy"] == full.result["val_accuracy"]
    assert manifest["stats"]["datasets"][0]["train"] == 48

    model, tok = load_reward_model(full.out)
    assert not model.training and tok.padding_side == "right"
    rows = preference_rows(20, seed=2)
    scores = score(model, tok, [r["prompt"] + r["chosen"] for r in rows])
    rejected = score(model, tok, [r["prompt"] + r["rejected"] for r in rows])
    assert pairwise_accuracy(scores, rejected) == full.result["val_accuracy"]


def test_score_renders_pairs_exactly_as_trl_trained_on_them(
    tmp_path: Path, base_dir: Path, prefs: Path, full: Trained
) -> None:
    """score() on prompt + reply equals the trained model's logit on the rows TRL tokenized and
    collated for training, for both pair forms; and a score does not depend on its batch."""
    import torch

    session = prepare(
        cfg(max_steps=1),
        {"base": [base_dir], "datasets": [prefs]},
        tmp_path / "ck",
        RecordingReporter(),
    )
    rows = [session.trainer.train_dataset[i] for i in range(6)]
    pairs = session.data.train[:6]
    assert pairs[1].where.endswith("line 2") and pairs[0].prompt[0]["role"] == "system"
    model, tok = load_reward_model(full.out)
    batch = session.trainer.data_collator(
        [{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]} for r in rows]
    )
    with torch.no_grad():
        trained_logits = model(**batch).logits.squeeze(-1).tolist()
    conversations = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    ours = score(model, tok, conversations, batch_size=4)
    assert ours == pytest.approx(trained_logits, abs=1e-4)
    # The implicit-form line renders like the prompt + reply it was split into.
    original = json.loads((prefs / "train.jsonl").read_text().splitlines()[1])
    assert "prompt" not in original
    rendered = tok.apply_chat_template(original["rejected"], tokenize=True)
    assert list(rendered["input_ids"]) == rows[1]["rejected_ids"]
    for pair, row in zip(pairs, rows, strict=True):
        rendered = tok.apply_chat_template(pair.prompt + pair.chosen, tokenize=True)
        assert list(rendered["input_ids"]) == row["chosen_ids"]
        assert tok.decode(row["chosen_ids"]).endswith("<|im_end|>\n")

    short = conversations[0]
    long = [*conversations[2][:-1], {"role": "assistant", "content": "apples " * 12}]
    (alone,) = score(model, tok, [short])
    padded = score(model, tok, [long, short, long], batch_size=3)
    assert padded[1] == pytest.approx(alone, abs=1e-4) and padded[0] == padded[2]

    huge = [*short[:-1], {"role": "assistant", "content": "apples " * 200}]
    with pytest.raises(ValueError, match=r"conversation 1 has \d+ tokens, more than the reward"):
        score(model, tok, [short, huge])
    cut = score(model, tok, [short, huge], truncate_left=True)
    assert cut[0] == pytest.approx(alone, abs=1e-4) and math.isfinite(cut[1])


# ------------------------------------------------------------------------------------ resume


def test_stopped_run_resumes_from_the_complete_checkpoint(
    tmp_path: Path, base_dir: Path, prefs: Path
) -> None:
    inputs = {"base": [base_dir], "datasets": [prefs]}
    config = cfg(max_steps=8, learning_rate=3e-3)
    work, out = tmp_path / "work", tmp_path / "out"
    stopper = RecordingReporter(stop_after_progress_calls=3)
    partial = run(config, inputs, out, stopper, work_dir=work)
    assert partial["stopped_early"] and partial["steps"] == 3
    assert partial["val_accuracy"] is None
    assert not (out / "model.safetensors").exists()
    assert not any(name == "worst_pairs" for name, _, _ in stopper.records)
    checkpoints = work / "checkpoints"
    assert (checkpoints / "checkpoint-3" / COMPLETE).is_file()
    for step in (2, 6):  # saves that crashed halfway: no marker
        (checkpoints / f"checkpoint-{step}").mkdir()
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")

    reporter = RecordingReporter()
    result = run(config, inputs, out, reporter, work_dir=work)
    assert result["resumed_from_step"] == 3 and not result["stopped_early"]
    assert [s for s, _, _ in reporter.progress_calls] == list(range(4, 9))
    assert result["steps"] == 8 and (out / "model.safetensors").is_file()
    assert "deleting the incomplete checkpoint checkpoint-6" in reporter.lines
    assert not (checkpoints / "checkpoint-2").exists()
    assert result["train_loss_first"] == partial["train_loss_first"]
    kept = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-3", "checkpoint-8"]


# -------------------------------------------------------------------------------------- LoRA


def test_lora_trains_only_the_adapter_and_the_score_head(
    tmp_path: Path, base_dir: Path, prefs: Path
) -> None:
    import torch

    session = prepare(
        cfg(method="lora", max_steps=3, learning_rate=1e-2, lora_dropout=0.25),
        {"base": [base_dir], "datasets": [prefs]},
        tmp_path / "ck",
        RecordingReporter(),
    )
    model = session.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or ".score.modules_to_save." in n for n in trainable)
    assert any(".score.modules_to_save." in n for n in trainable)
    dropouts = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts and all(
        p == (0.25 if "lora_dropout" in n else 0.0) for n, p in dropouts.items()
    )
    assert any("lora_dropout" in n for n in dropouts)  # TRL's disable_dropout would zero these
    session.trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and changed <= trainable  # the base weights are exactly as loaded
    assert any("lora_B" in n for n in changed) and any("score" in n for n in changed)


def test_lora_output_is_merged_and_scores_like_the_adapter(base_dir: Path, lora: Trained) -> None:
    import torch
    from peft import PeftModel

    from training.core.reward import _load_seq_cls

    result = lora.result
    assert 0 < result["trainable_params"] < result["total_params"]
    assert result["train_loss_last"] < result["train_loss_first"]
    assert result["val_accuracy"] >= 0.8
    names = {p.name for p in lora.out.iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    manifest = json.loads((lora.out / "orchard.json").read_text())
    assert manifest["method"] == "lora" and manifest["merged"] is True

    merged, tok = load_reward_model(lora.out)
    # The last checkpoint holds the unmerged adapter and the trained score head.
    adapter_dir = lora.work / "checkpoints" / "checkpoint-16"
    unmerged = PeftModel.from_pretrained(_load_seq_cls(base_dir, seed=99), adapter_dir).eval()
    unmerged.config.pad_token_id = tok.pad_token_id
    base = _load_seq_cls(base_dir, seed=1337).eval()  # the head run() started from
    base.config.pad_token_id = tok.pad_token_id
    rows = preference_rows(8, seed=3)
    conversations = [r["prompt"] + r["chosen"] for r in rows]
    want = torch.tensor(score(unmerged, tok, conversations))
    got = torch.tensor(score(merged, tok, conversations))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (torch.tensor(score(base, tok, conversations)) - want).abs().max() > 1e-2


# ---------------------------------------------------------------------------------- refusals


def test_refusals_say_what_to_do(tmp_path: Path, base_dir: Path) -> None:
    base = {"base": [base_dir]}
    good = preference_rows(4, seed=7)
    reporter = RecordingReporter()

    def refuse(inputs: dict[str, Any], match: str, config: RewardConfig | None = None) -> None:
        with pytest.raises(ValueError, match=match):
            prepare(config or cfg(), inputs, tmp_path / "ck", reporter)

    refuse({**base, "datasets": []}, 'at least one preference snapshot as input "datasets"')
    refuse({"base": [], "datasets": []}, 'exactly one model folder as input "base", got 0')
    empty = write_snapshot(tmp_path / "empty", [])
    refuse({**base, "datasets": [empty]}, "The preference snapshot empty has no pairs to train on")
    bad_json = write_snapshot(tmp_path / "badjson", [], raw=json.dumps(good[0]) + "\n{oops\n")
    refuse({**base, "datasets": [bad_json]}, r"badjson/train.jsonl, line 2: not valid JSON")
    text = write_snapshot(tmp_path / "text", [{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    refuse({**base, "datasets": [text]}, r'line 1: "prompt" must be a non-empty list of messages')
    no_reply = {**good[0], "chosen": [{"role": "user", "content": "x"}]}
    ends = write_snapshot(tmp_path / "ends", [good[1], no_reply])
    refuse({**base, "datasets": [ends]}, r'line 2: "chosen" must end with an assistant message')
    role = {**good[0], "rejected": [{"role": "narrator", "content": "x"}]}
    roles = write_snapshot(tmp_path / "roles", [role])
    refuse({**base, "datasets": [roles]}, r"line 1, \"rejected\" message 1: unknown role")
    missing = write_snapshot(tmp_path / "missing", [{"prompt": good[0]["prompt"]}])
    refuse({**base, "datasets": [missing]}, r'line 1: expected an object with "chosen"')
    margin = write_snapshot(tmp_path / "margin", [{**good[0], "margin": "big"}])
    refuse({**base, "datasets": [margin]}, r'line 1: "margin" must be a number')
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    refuse({"base": [adapter], "datasets": [empty]}, "LoRA adapter, not a full model: merge")

    long_pair = {**good[0], "chosen": [{"role": "assistant", "content": "apples " * 100}]}
    all_long = write_snapshot(tmp_path / "long", [long_pair, long_pair])
    refuse(
        {**base, "datasets": [all_long]},
        r"All 2 pairs in the preference snapshot long are longer than max_length \(128 tokens, "
        r"prompt plus reply\); the longest has \d+ tokens: raise max_length",
    )
    with pytest.raises(ValueError, match="not a reward model"):
        load_reward_model(base_dir)  # a causal LM: it has no trained score head


def test_too_long_pairs_are_dropped_and_counted(tmp_path: Path, base_dir: Path) -> None:
    good = preference_rows(6, seed=8)
    long_pair = {**good[0], "rejected": [{"role": "assistant", "content": "number " * 100}]}
    snap = write_snapshot(tmp_path / "some", [*good, long_pair], [long_pair, good[0]])
    reporter = RecordingReporter()
    session = prepare(cfg(), {"base": [base_dir], "datasets": [snap]}, tmp_path / "ck", reporter)
    assert session.data.dropped_too_long == 2
    assert len(session.data.train) == 6 and len(session.data.validation) == 1
    assert len(session.trainer.train_dataset) == 6  # TRL drops nothing more
    assert any(
        "dropped 1 training and 1 validation pairs longer than 128" in x for x in reporter.lines
    )


def test_margins_reach_trl_and_validation_is_split_off(tmp_path: Path, base_dir: Path) -> None:
    rows = preference_rows(10, seed=9)
    for row in rows[:5]:
        row["margin"] = 1.5
    snap = write_snapshot(tmp_path / "m", rows)  # no validation pairs of its own
    inputs = {"base": [base_dir], "datasets": [snap]}
    reporter = RecordingReporter()
    session = prepare(cfg(validation_fraction=0.2), inputs, tmp_path / "ck", reporter)
    assert len(session.data.train) == 8 and len(session.data.validation) == 2
    assert session.data.snapshots[0].split_from_train == 2
    margins = session.trainer.train_dataset["margin"]
    assert set(margins) == {0.0, 1.5}  # pairs without a margin get 0
    again = prepare(cfg(validation_fraction=0.2), inputs, tmp_path / "ck2", reporter)
    assert [p.where for p in again.data.validation] == [p.where for p in session.data.validation]
    plain = prepare(cfg(use_margins=False), inputs, tmp_path / "ck3", reporter)
    assert "margin" not in plain.trainer.train_dataset.column_names


# ----------------------------------------------------------------------------------------- CLI


def test_reward_runs_from_the_shell(tmp_path: Path, base_dir: Path, prefs: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**FAST, "max_steps": 2}))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.core",
            "reward",
            "--config",
            str(config),
            "--input",
            f"base={base_dir}",
            "--input",
            f"datasets={prefs}",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"] == 2 and "[progress] 2/2" in done.stderr
    assert "[worst_pairs]" in done.stderr
    assert (out / "model.safetensors").is_file() and (out / "orchard.json").is_file()
