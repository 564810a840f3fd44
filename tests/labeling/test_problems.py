"""The problem bank: labelers write problems, reviewers approve, trainers import and generate,
and a snapshot feeds GRPO."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling.models import Problem, Snapshot

pytestmark = pytest.mark.django_db


def test_a_labeler_writes_problems_a_reviewer_approves(client_for, project, people) -> None:
    lena = client_for("lena")
    url = f"/labeling/projects/{project.pk}/problems/"
    bad = lena.post(url, {"question": "2+2?", "checker": "number", "answer": "four"})
    assert bad.status_code == 400 and "not a number" in bad.content.decode()
    choice = lena.post(
        url,
        {"question": "Sky?", "checker": "choice", "answer": "B", "choices": "green\nblue"},
    )
    assert choice.status_code == 302
    lena.post(url, {"question": "12 × 3?", "checker": "number", "answer": "36"})
    problems = list(Problem.objects.order_by("id"))
    assert [p.status for p in problems] == ["submitted", "submitted"]
    assert problems[0].choices == ["green", "blue"]
    review = f"/labeling/projects/{project.pk}/problems/{problems[1].pk}/review/"
    client_for("rita").post(review, {"decision": "approve"})
    problems[1].refresh_from_db()
    assert problems[1].status == "approved"
    own = Problem.objects.create(project=project, question="x?", answer="1", author=people["rita"])
    client_for("rita").post(
        f"/labeling/projects/{project.pk}/problems/{own.pk}/review/", {"decision": "approve"}
    )
    own.refresh_from_db()
    assert own.status == "submitted"  # nobody approves their own problem


def test_import_generate_and_export(client_for, project) -> None:
    tom = client_for("tom")
    lines = [
        json.dumps({"question": "Tom has 3 apples and buys 4. How many?",
                    "answer": "3+4=<<3+4=7>>7\n#### 7"}),
        json.dumps({"question": "Big?", "answer": "#### 1,000"}),
        json.dumps({"question": "Broken", "answer": "no marker"}),
    ]  # fmt: skip
    tom.post(
        f"/labeling/projects/{project.pk}/problems/import/",
        {
            "file_format": "gsm8k",
            "file": SimpleUploadedFile("gsm8k.jsonl", "\n".join(lines).encode()),
        },
    )
    imported = Problem.objects.filter(source="gsm8k").order_by("id")
    assert [p.answer for p in imported] == ["7", "1000"]
    assert "<<" not in imported[0].solution
    tom.post(
        f"/labeling/projects/{project.pk}/problems/generate/",
        {"count": 30, "difficulty": 1, "seed": 1},
    )
    assert Problem.objects.filter(source="arithmetic-1", status="approved").count() == 30
    exported = tom.post(
        f"/labeling/projects/{project.pk}/problems/export/",
        {"name": "math v1", "validation_fraction": 0.2},
    )
    snapshot = Snapshot.objects.get(kind="problems")
    assert exported.url == f"/labeling/snapshots/{snapshot.pk}/"
    assert snapshot.card["counts"]["total"] == 32
    row = json.loads((snapshot.artifact.abspath() / "train.jsonl").read_text().splitlines()[0])
    assert set(row) >= {"prompt", "answer", "checker"}
    assert "Run GRPO on these problems" in tom.get(exported.url).content.decode()


def test_export_without_problems_says_so(client_for, project) -> None:
    response = client_for("tom").post(
        f"/labeling/projects/{project.pk}/problems/export/",
        {"name": "empty", "validation_fraction": 0.1},
        follow=True,
    )
    assert "No approved problems" in response.content.decode()
