"""A checkpoint's report card and lineage graph, on a hand-made lineage (no training):
corpus → tokenizer → pretrain → SFT (+ conversations) → reward (+ preferences) → PPO (+ prompts),
with an evaluate run that scored the SFT and PPO checkpoints."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from training import services
from training.models import Artifact, Run, RunStatus
from training.report import lineage_graph, report_card, report_markdown

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Lineage:
    def __init__(self, tmp_path: Path, user: Any) -> None:
        self.tmp_path = tmp_path
        self.user = user
        self.count = 0

    def run(self, kind: str, inputs: dict[str, list[Artifact]], result: dict, seconds: float):
        finished = timezone.now()
        run = Run.objects.create(
            kind=kind,
            status=RunStatus.SUCCEEDED,
            config={"seed": 1, "note": f"{kind} settings"},
            inputs={name: [a.pk for a in arts] for name, arts in inputs.items()},
            result={"seconds": seconds, **result},
            created_by=self.user,
            started_at=finished - timedelta(seconds=seconds + 1),
            finished_at=finished,
        )
        run.input_artifacts.set([a for arts in inputs.values() for a in arts])
        return run

    def artifact(
        self,
        kind: str,
        name: str,
        *,
        inputs: dict[str, list[Artifact]] | None = None,
        run_kind: str | None = None,
        result: dict | None = None,
        meta: dict | None = None,
        seconds: float = 10.0,
    ) -> Artifact:
        self.count += 1
        source = self.tmp_path / f"src{self.count}"
        source.mkdir()
        (source / "data.txt").write_text(f"{name} {self.count}")
        inputs = inputs or {}
        run = self.run(run_kind, inputs, result or {}, seconds) if run_kind else None
        stage = {"stage": run_kind} if run_kind else {}
        return services.artifact_register_dir(
            source=source,
            kind=kind,
            name=name,
            run=run,
            parents=[a for arts in inputs.values() for a in arts],
            user=self.user,
            meta={**stage, **(result or {}), **(meta or {})},
        )


@pytest.fixture
def chain(tmp_path: Path, people: dict[str, Any]) -> dict[str, Artifact]:
    make = Lineage(tmp_path, people["tom"])
    corpus = make.artifact(
        "corpus",
        "web corpus",
        run_kind="corpus",
        result={"documents_in": 1000, "documents_kept": 700, "documents_dropped": 300},
        seconds=30,
    )
    tokenizer = make.artifact(
        "tokenizer",
        "bpe 512",
        inputs={"corpus": [corpus]},
        run_kind="tokenizer",
        result={"vocab_size": 512, "bytes_per_token": 3.21},
        seconds=5,
    )
    base = make.artifact(
        "checkpoint",
        "base model",
        inputs={"corpus": [corpus], "tokenizer": [tokenizer]},
        run_kind="pretrain",
        result={
            "val_loss": 2.5,
            "val_bpb": 1.25,
            "parameters": 1_234_567,
            "tokens_seen": 5_000_000,
            "steps": 300,
            "device": "cuda",
            "dtype": "bfloat16",
        },
        seconds=3600,
    )
    conversations = make.artifact(
        "dataset",
        "chats v1",
        meta={
            "stage": "sft-data",
            "card": {
                "labelers": ["lena", "leo"],
                "conversations": 40,
                "guideline_versions": [1, 2],
                "content_sha256": "c" * 64,
            },
        },
    )
    sft = make.artifact(
        "checkpoint",
        HOSTILE,
        inputs={"base": [base], "datasets": [conversations]},
        run_kind="sft",
        result={
            "train_loss_first": 3.0,
            "train_loss_last": 1.5,
            "val_loss": 1.7,
            "stop_rate": 0.95,
            "device": "cuda",
        },
        seconds=120,
    )
    preferences = make.artifact(
        "dataset",
        "prefs v1",
        meta={
            "stage": "preference-data",
            "card": {
                "labelers": {"lena": 10, "rita": 5},
                "rankings": 15,
                "pairs": {"train": 30, "validation": 4},
                "agreement": {"pairwise": 0.8, "alpha": 0.6, "ceiling": 0.75},
                "content_sha256": "d" * 64,
            },
        },
    )
    reward = make.artifact(
        "checkpoint",
        "reward model",
        inputs={"base": [sft], "datasets": [preferences]},
        run_kind="reward",
        result={"val_accuracy": 0.7, "train_accuracy": 0.9},
        seconds=60,
    )
    prompts = make.artifact(
        "dataset", "prompts", meta={"stage": "sft-data", "card": {"labelers": ["leo"]}}
    )
    ppo = make.artifact(
        "checkpoint",
        "ppo policy",
        inputs={"policy": [sft], "reward": [reward], "prompts": [prompts]},
        run_kind="ppo",
        result={
            "reward_first": 0.1,
            "reward_last": 0.9,
            "kl_last": 0.05,
            "best_step": 40,
            "divergence_step": 60,
            "steps": 80,
            "device": "cpu",
        },
        seconds=600,
    )
    evaluate = make.run(
        "evaluate",
        {"checkpoints": [sft, ppo]},
        {
            "problems": 50,
            "split": "validation",
            "k": 4,
            "checkpoints": [
                {"checkpoint": 0, "pass@1": 0.2, "pass@k": 0.4, "accuracy": 0.25, "scored": 50},
                {"checkpoint": 1, "pass@1": 0.3, "pass@k": 0.5, "accuracy": 0.35, "scored": 50},
            ],
        },
        seconds=20,
    )
    return {
        "corpus": corpus,
        "tokenizer": tokenizer,
        "base": base,
        "conversations": conversations,
        "sft": sft,
        "preferences": preferences,
        "reward": reward,
        "prompts": prompts,
        "ppo": ppo,
        "evaluate": evaluate,
    }


def figures(node: dict) -> dict[str, str]:
    return {f["key"]: f["text"] for f in node["figures"]}


def test_the_card_lists_every_ancestor_in_order_with_figures(chain):
    card = report_card(chain["ppo"])
    names = ["corpus", "tokenizer", "base", "conversations", "sft"]
    names += ["preferences", "reward", "prompts", "ppo"]
    assert [n["id"] for n in card["nodes"]] == [chain[k].pk for k in names]
    by_id = {n["id"]: n for n in card["nodes"]}
    assert card["artifact"]["id"] == chain["ppo"].pk

    assert figures(by_id[chain["corpus"].pk])["documents_dropped"] == "300"
    assert figures(by_id[chain["tokenizer"].pk])["vocab_size"] == "512"
    base = by_id[chain["base"].pk]
    assert figures(base)["val_loss"] == "2.5000"
    assert figures(base)["parameters"] == "1,234,567"
    assert base["run"]["device"] == "cuda" and base["run"]["dtype"] == "bfloat16"
    assert base["run"]["tokens_seen"] == 5_000_000 and base["run"]["steps"] == 300
    assert base["run"]["seconds"] == 3600 and base["run"]["duration_seconds"] == 3601
    sft = by_id[chain["sft"].pk]
    assert figures(sft)["train_loss_first→train_loss_last"] == "3.0000 → 1.5000"
    assert figures(sft)["stop_rate"] == "0.950"
    assert sorted(sft["parents"]) == sorted([chain["base"].pk, chain["conversations"].pk])
    reward = figures(by_id[chain["reward"].pk])
    assert reward["val_accuracy"] == "0.700"
    assert reward["ceiling"].startswith("0.750") and "below" in reward["ceiling"]
    ppo = figures(card["artifact"])
    assert ppo["reward_first→reward_last"] == "0.100 → 0.900"
    assert ppo["divergence_step"] == "60" and ppo["best_step"] == "40"

    # evaluate runs that read a checkpoint of the lineage
    assert [(r["run"], r["pass1"], r["passk"]) for r in card["artifact"]["evaluations"]] == [
        (chain["evaluate"].pk, 0.3, 0.5)
    ]
    assert [r["pass1"] for r in sft["evaluations"]] == [0.2]
    assert by_id[chain["base"].pk]["evaluations"] == []


def test_the_card_counts_people_compute_and_data(chain):
    card = report_card(chain["ppo"])
    people = {p["username"]: p for p in card["people"]}
    assert sorted(people) == ["lena", "leo", "rita"]
    assert people["lena"]["rankings"] == 10
    assert {d["id"] for d in people["leo"]["datasets"]} == {
        chain["conversations"].pk,
        chain["prompts"].pk,
    }
    totals = card["totals"]
    assert totals["people"] == 3
    assert totals["artifacts"] == 9 and totals["runs"] == 6  # the evaluate run is not lineage
    assert totals["compute_seconds"] == 30 + 5 + 3600 + 120 + 60 + 600
    assert totals["compute_by_device"]["cuda"] == 3720
    assert totals["tokens_seen"] == 5_000_000
    assert totals["conversations"] == 40 and totals["pairs"] == 34 and totals["rankings"] == 15
    assert totals["launched_by"] == ["tom"]
    data = next(n for n in card["nodes"] if n["id"] == chain["preferences"].pk)["data"]
    assert data["agreement"] == {"pairwise": 0.8, "alpha": 0.6, "ceiling": 0.75}


def test_markdown_and_json(chain):
    card = report_card(chain["ppo"])
    text = report_markdown(card)
    for key in ("corpus", "tokenizer", "base", "conversations", "sft", "reward", "ppo"):
        assert chain[key].sha256 in text
    assert "c" * 64 in text  # the dataset's content hash
    assert "People whose data went in: 3" in text
    assert "<script>" not in text and "\\<script\\>" in text
    assert json.loads(json.dumps(card)) == card


def test_the_graph_has_layers_edges_and_links(chain):
    graph = lineage_graph(chain["ppo"])
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert set(nodes) == {a.pk for k, a in chain.items() if k != "evaluate"}
    edges = {(e["from"], e["to"]) for e in graph["edges"]}
    pk = {k: a.pk for k, a in chain.items()}
    assert edges == {
        (pk["corpus"], pk["tokenizer"]),
        (pk["corpus"], pk["base"]),
        (pk["tokenizer"], pk["base"]),
        (pk["base"], pk["sft"]),
        (pk["conversations"], pk["sft"]),
        (pk["sft"], pk["reward"]),
        (pk["preferences"], pk["reward"]),
        (pk["sft"], pk["ppo"]),
        (pk["reward"], pk["ppo"]),
        (pk["prompts"], pk["ppo"]),
    }
    depth = {k: nodes[pk[k]]["depth"] for k in pk if k != "evaluate"}
    assert depth == {
        "corpus": 0,
        "tokenizer": 1,
        "base": 2,
        "conversations": 0,
        "sft": 3,
        "preferences": 0,
        "reward": 4,
        "prompts": 0,
        "ppo": 5,
    }
    # a dataset is drawn in the row just above its first consumer
    assert nodes[pk["conversations"]]["layer"] == 2
    assert nodes[pk["prompts"]]["layer"] == 4
    assert nodes[pk["ppo"]]["is_target"]
    # boxes link to their run, or to the artifact when it was uploaded
    assert nodes[pk["sft"]]["url"] == f"/runs/{chain['sft'].run_id}/"
    assert nodes[pk["prompts"]]["url"] == f"/artifacts/{pk['prompts']}/"
    for edge in graph["edges"]:  # arrows point down, from a parent row to a later one
        assert nodes[edge["from"]]["y"] < nodes[edge["to"]]["y"]


def test_a_diamond_has_one_node_per_artifact_and_no_overlaps(tmp_path, people):
    make = Lineage(tmp_path, people["tom"])
    base = make.artifact("checkpoint", "base")
    left = make.artifact("checkpoint", "left", inputs={"base": [base]}, run_kind="sft")
    right = make.artifact("checkpoint", "right", inputs={"base": [base]}, run_kind="sft")
    extra = make.artifact("dataset", "extra")
    merged = make.artifact(
        "checkpoint", "merged", inputs={"a": [left, right], "d": [extra]}, run_kind="merge"
    )
    graph = lineage_graph(merged)
    layers = [set(row) for row in graph["layers"]]
    assert layers == [{base.pk}, {left.pk, right.pk, extra.pk}, {merged.pk}]
    assert len(graph["nodes"]) == 5 and len(graph["edges"]) == 5
    row = sorted((n for n in graph["nodes"] if n["layer"] == 1), key=lambda n: n["x"])
    for a, b in zip(row, row[1:], strict=False):
        assert a["x"] + a["w"] < b["x"]
    assert all(n["x"] >= 0 and n["x"] + n["w"] <= graph["width"] for n in graph["nodes"])
    card = report_card(merged)
    assert [n["id"] for n in card["nodes"]][0] == base.pk
    assert card["nodes"][-1]["id"] == merged.pk
    assert sorted(card["artifact"]["parents"]) == sorted([left.pk, right.pk, extra.pk])


def test_a_long_lineage_is_cut(tmp_path, people):
    make = Lineage(tmp_path, people["tom"])
    node = make.artifact("checkpoint", "n0")
    for i in range(1, 8):
        node = make.artifact("checkpoint", f"n{i}", inputs={"base": [node]}, run_kind="sft")
    graph = lineage_graph(node, max_nodes=4)
    assert len(graph["nodes"]) == 4 and graph["truncated"]
    assert report_card(node, max_nodes=4)["truncated"]


def test_the_page_renders_the_graph_figures_and_links(chain, client_for):
    response = client_for("tom").get(f"/checkpoints/{chain['ppo'].pk}/report/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<svg" in page and 'marker-end="url(#lineage-arrow)"' in page
    for key in ("corpus", "tokenizer", "base", "sft", "reward", "ppo"):
        assert f'href="/runs/{chain[key].run_id}/"' in page
        assert chain[key].sha256[:16] in page
    assert f'href="/artifacts/{chain["conversations"].pk}/"' in page
    assert "c" * 64 in page  # the conversations' content hash
    assert "rita" in page and "1 h 13 min" in page  # people and the total compute time
    assert f'href="/runs/{chain["evaluate"].pk}/"' in page
    assert f'href="/checkpoints/{chain["ppo"].pk}/report.md"' in page
    # a hostile artifact name is text, in the SVG and in the tables
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert" in page


def test_the_downloads(chain, client_for):
    tom = client_for("tom")
    markdown = tom.get(f"/checkpoints/{chain['ppo'].pk}/report.md")
    assert markdown.status_code == 200
    assert markdown["Content-Type"].startswith("text/markdown")
    assert "attachment" in markdown["Content-Disposition"]
    assert chain["base"].sha256 in markdown.content.decode()
    data = tom.get(f"/checkpoints/{chain['ppo'].pk}/report.json")
    assert data["Content-Type"] == "application/json"
    card = json.loads(data.content)
    assert card["artifact"]["id"] == chain["ppo"].pk and card["totals"]["people"] == 3
    assert card["nodes"][4]["name"] == HOSTILE  # JSON carries the name as it is


def test_permissions_and_non_checkpoints(chain, client_for):
    pk = chain["ppo"].pk
    for suffix in ("report/", "report.md", "report.json"):
        assert client_for("lena").get(f"/checkpoints/{pk}/{suffix}").status_code == 403
        assert client_for("tom").get(f"/checkpoints/{pk}/{suffix}").status_code == 200
        corpus = f"/checkpoints/{chain['corpus'].pk}/{suffix}"
        assert client_for("tom").get(corpus).status_code == 404
        assert client_for("tom").get(f"/checkpoints/999999/{suffix}").status_code == 404


def test_a_lone_imported_checkpoint_shows_empty_states(tmp_path, people, client_for):
    lone = Lineage(tmp_path, people["tom"]).artifact("checkpoint", "imported", meta={})
    page = client_for("tom").get(f"/checkpoints/{lone.pk}/report/").content.decode()
    assert "No figures were recorded" in page
    assert "No evaluate run has scored this checkpoint yet" in page
    assert "No run in this lineage" in page
    assert "No labeling snapshot in this lineage names its labelers" in page
    card = report_card(lone)
    assert card["totals"]["compute_seconds"] is None and card["totals"]["people"] == 0
    assert "No labeling snapshot" in report_markdown(card)


def test_checkpoint_pages_link_to_the_report_card(chain, client_for):
    tom = client_for("tom")
    link = f'href="/checkpoints/{chain["ppo"].pk}/report/"'
    assert link in tom.get(f"/artifacts/{chain['ppo'].pk}/").content.decode()
    assert link in tom.get("/checkpoints/").content.decode()
    corpus_page = tom.get(f"/artifacts/{chain['corpus'].pk}/").content.decode()
    assert "/report/" not in corpus_page
