"""`manage.py orchard_demo --quick --in-process`: the whole chain, data to chat, as ordinary runs.

CI size: a few steps per stage, so only the stages that improve reliably in a few steps are held
to it (corpus, tokenizer, pretraining, SFT). The RL stages and the evaluation are held to having
run, produced their artifact and reported finite metrics; ``make demo`` (the default profile) is
where they visibly improve.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from demo.pipeline import (
    QUICK,
    STAGES,
    SUMMARIES,
    DemoPipeline,
    first_last,
    series,
    smoothed_first_last,
)
from tests.support.data import SHARED_DATA
from training.models import Artifact, Run, RunStatus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(900),  # about a minute on idle cores; a busy CI machine is slower
]


@pytest.fixture(autouse=True)
def _no_leftover_messages() -> Any:
    """run_create sends each run to the broker too; nothing consumes them here."""
    yield
    from tests.support.workers import purge_broker

    purge_broker()


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def demo_runs() -> dict[str, Run]:
    runs = {run.kind: run for run in Run.objects.order_by("pk")}
    assert sorted(runs) == sorted(STAGES)
    return runs


def check_chain(runs: dict[str, Run]) -> dict[str, Artifact]:
    """Every stage succeeded, left an artifact on disk, and read its predecessor's output."""
    outputs = {}
    for kind in STAGES:
        run = runs[kind]
        assert run.status == RunStatus.SUCCEEDED, f"{kind}: {run.error}\n{run.traceback}"
        artifact = Artifact.objects.get(run=run)
        assert artifact.abspath().is_dir() and any(artifact.abspath().iterdir()), kind
        outputs[kind] = artifact
    parents = {kind: set(outputs[kind].parents.all()) for kind in STAGES}
    assert outputs["corpus"] in parents["tokenizer"]
    assert {outputs["corpus"], outputs["tokenizer"]} <= parents["pretrain"]
    assert outputs["pretrain"] in parents["sft"]
    assert outputs["sft"] in parents["reward"]
    assert {outputs["sft"], outputs["reward"]} <= parents["ppo"]
    assert outputs["ppo"] in parents["grpo"]
    assert {outputs[k] for k in ("pretrain", "sft", "ppo", "grpo")} <= parents["evaluate"]
    return outputs


def check_metrics(runs: dict[str, Run]) -> None:
    corpus = SUMMARIES["corpus"](runs["corpus"])[1]
    assert 0 < corpus["documents_kept"] < corpus["documents_in"]  # the filters dropped junk

    tokenizer = SUMMARIES["tokenizer"](runs["tokenizer"])[1]
    assert tokenizer["bytes_per_token"] > 1.5  # merges compress text well beyond raw bytes

    pretrain = SUMMARIES["pretrain"](runs["pretrain"])[1]
    assert pretrain["loss_last"] < pretrain["loss_first"] - 0.3  # from ~ln(vocab): falls fast

    # a base model has never seen ChatML: fine-tuning brings the assistant tokens' loss down
    # (single steps are noisy at batch 8: compare the first and last few)
    sft_first, sft_last = smoothed_first_last(runs["sft"], "train/loss")
    assert sft_last < sft_first

    # Reward model, PPO and GRPO: a few steps on a barely trained model move their metrics by
    # noise, so only their presence and finiteness are checked here.
    reward = SUMMARIES["reward"](runs["reward"])[1]
    assert finite(reward["loss_last"]) and 0 <= reward["val_accuracy"] <= 1
    assert all(finite(v) for v in series(runs["ppo"], "reward/mean"))
    assert all(finite(v) for v in first_last(runs["ppo"], "kl"))
    grpo = SUMMARIES["grpo"](runs["grpo"])[1]
    assert 0 <= grpo["pass1_first"] <= 1 and 0 <= grpo["pass1_last"] <= 1
    assert finite(grpo["reward_last"])

    scores = runs["evaluate"].result["checkpoints"]
    assert [row["checkpoint"] for row in scores] == [0, 1, 2, 3]
    assert all(0 <= row["pass@1"] <= 1 and 0 <= row["pass@k"] <= 1 for row in scores)


# The figure each training stage's own follow-up evaluation must produce (training/evaluations.py).
FOLLOW_UP_FIGURES = {
    "pretrain": "val_bpb",
    "sft": "sft_loss",
    "reward": "rm_accuracy",
    "ppo": "win_rate",
    "grpo": "pass@1",
}


def check_follow_up_evaluations(outputs: dict[str, Artifact], output: str) -> None:
    """Every training stage was followed by an evaluation of its checkpoint that succeeded."""
    for kind, figure in FOLLOW_UP_FIGURES.items():
        follow_ups = [
            run
            for run in Run.objects.filter(kind="evaluate").order_by("pk")
            if run.inputs.get("checkpoints") == [outputs[kind].pk]
        ]
        assert len(follow_ups) == 1, kind
        run = follow_ups[0]
        assert run.status == RunStatus.SUCCEEDED, f"{kind}: {run.error}"
        assert finite(run.result["checkpoints"][0][figure]), (kind, run.result)
        assert f"evaluation of {kind} (run #{run.pk}): " in output


def test_the_quick_demo_runs_the_whole_chain_on_generated_data(settings) -> None:
    settings.ORCHARD_AUTO_EVALUATE = True  # the demo runs each stage's evaluation in-process
    out = io.StringIO()
    call_command("orchard_demo", "--quick", "--in-process", stdout=out)
    output = out.getvalue()
    runs = demo_runs()
    outputs = check_chain(runs)
    check_metrics(runs)
    check_follow_up_evaluations(outputs, output)

    for number, kind in enumerate(STAGES, start=1):  # a start line and a summary line each
        assert len(re.findall(rf"^\[{number}/8\] {kind}: ", output, re.MULTILINE)) == 2, output
    chat = re.search(r"Chat with the final checkpoint: (\S+)", output).group(1)
    assert chat == f"http://127.0.0.1:8000/chat/?checkpoint={outputs['grpo'].pk}"

    client = Client()
    client.force_login(runs["grpo"].created_by)
    page = client.get(chat.removeprefix("http://127.0.0.1:8000"))
    assert page.status_code == 200
    assert f'<option value="{outputs["grpo"].pk}" selected>' in page.content.decode()


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data at {SHARED_DATA}")
def test_the_quick_demo_runs_on_a_data_folder() -> None:
    out = io.StringIO()
    result = DemoPipeline(profile=QUICK, data_dir=SHARED_DATA, stdout=out).run()
    runs = demo_runs()
    check_chain(runs)
    check_metrics(runs)
    output = out.getvalue()
    assert "OpenAssistant" in output and "HH-RLHF" in output
    sources = Artifact.objects.get(run=runs["corpus"]).parents.all()
    assert {a.meta["original_name"] for a in sources} == {
        p.name for p in (SHARED_DATA / "web" / "warc").glob("*.warc.gz")
    }
    assert result.final_checkpoint == Artifact.objects.get(run=runs["grpo"])
