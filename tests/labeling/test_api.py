"""The labeling REST API (/api/labeling/): what scripts can do, under the same rules as pages."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from labeling import services
from labeling.models import (
    Assignment,
    AssignmentStatus,
    Conversation,
    ConversationStatus,
    GuidelineVersion,
    Item,
    Project,
    Review,
    Revision,
    Snapshot,
)
from tests.labeling.conftest import GOOD

pytestmark = pytest.mark.django_db

API = "/api/labeling"
NO_ASSISTANT = GOOD[:2]  # system + user: valid as a draft, not for review


@pytest.fixture
def api(people: dict[str, Any]) -> Callable[[str | None], APIClient]:
    """A client logged in with a session (as the browser is); None for an anonymous one."""

    def make(name: str | None) -> APIClient:
        client = APIClient()
        if name is not None:
            client.force_login(people[name])
        return client

    return make


def draft(project: Project, author: Any, messages: list[dict] | None = None) -> Conversation:
    return services.conversation_create(
        project=project, user=author, messages=list(messages or NO_ASSISTANT)
    )


def problems_of(response: Any) -> list[str]:
    detail = response.json()["detail"]
    assert isinstance(detail, list) and all(isinstance(p, str) for p in detail)
    return detail


# --- projects ---------------------------------------------------------------------------------


def test_projects_list_create_and_detail(api: Callable, people: dict, project: Project) -> None:
    tom = api("tom")
    made = tom.post(
        f"{API}/projects/",
        {
            "name": "Support bot",
            "guidelines": "Be brief.",
            "system_prompts": ["You answer support questions."],
            "overlap": 3,
            "required_turns": 2,
        },
        format="json",
    )
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["name"] == "Support bot" and body["overlap"] == 3
    assert body["guideline_version"] == 1
    created = Project.objects.get(pk=body["id"])
    assert created.created_by == people["tom"]
    assert GuidelineVersion.objects.get(project=created).text == "Be brief."

    refused = api("lena").post(f"{API}/projects/", {"name": "Mine"}, format="json")
    assert refused.status_code == 403
    assert api("rita").post(f"{API}/projects/", {"name": "Mine"}, format="json").status_code == 403
    bad = tom.post(f"{API}/projects/", {"name": "Zero", "overlap": 0}, format="json")
    assert bad.status_code == 400  # the overlap constraint is a 400, not a database error
    assert Project.objects.count() == 2

    listed = api("lena").get(f"{API}/projects/")
    assert listed.status_code == 200
    assert {p["name"] for p in listed.json()["results"]} == {"Support bot", "Arithmetic helper"}
    assert api(None).get(f"{API}/projects/").status_code == 401

    detail = api("leo").get(f"{API}/projects/{project.pk}/")
    assert detail.status_code == 200
    assert detail.json()["system_prompts"] == ["You are a helpful assistant."]
    assert detail.json()["guidelines"] == project.guidelines
    assert api("leo").get(f"{API}/projects/999999/").status_code == 404


# --- conversations: bulk create and list ------------------------------------------------------


def test_bulk_create_is_all_or_nothing(api: Callable, project: Project) -> None:
    tom = api("tom")
    url = f"{API}/projects/{project.pk}/conversations/"
    rows = [
        {"messages": GOOD, "tags": ["math"]},
        {"messages": NO_ASSISTANT},  # nothing for the model to learn: refused for review
        {"messages": GOOD},
    ]
    refused = tom.post(url, {"conversations": rows, "status": "submitted"}, format="json")
    assert refused.status_code == 400
    problems = refused.json()["conversations"]
    assert list(problems) == ["1"]  # names the bad one by its index, and only it
    assert any("assistant" in p for p in problems["1"])
    malformed = tom.post(
        url, {"conversations": [{"messages": GOOD}, {"messages": "hi"}]}, format="json"
    )
    assert malformed.status_code == 400
    assert "1" in json.dumps(malformed.json()["conversations"])
    assert not Conversation.objects.exists()
    assert not Revision.objects.exists()


@pytest.mark.parametrize("wanted", ["approved", "submitted", "draft"])
def test_bulk_create_with_a_status(api: Callable, project: Project, people: dict, wanted) -> None:
    rows = [{"messages": GOOD, "tags": ["b", "a", "b"]}, {"messages": GOOD}]
    if wanted == "draft":
        rows.append({"messages": NO_ASSISTANT})  # a draft need not be finished
    made = api("tom").post(
        f"{API}/projects/{project.pk}/conversations/",
        {"conversations": rows, "status": wanted},
        format="json",
    )
    assert made.status_code == 201, made.content
    created = Conversation.objects.filter(pk__in=made.json()["created"]).order_by("id")
    assert len(created) == len(rows)
    assert {c.status for c in created} == {wanted}
    assert {c.source for c in created} == {"api"}
    assert created[0].tags == ["a", "b"]
    assert created[0].author == people["tom"]
    assert created[0].guideline_version == project.guideline_version
    assert all(c.revisions.get().action == Revision.Action.CREATE for c in created)
    if wanted == "draft":
        assert all(c.submitted_at is None for c in created)
    else:
        assert all(c.submitted_messages == GOOD and c.submitted_at for c in created)


def test_bulk_create_defaults_to_submitted_and_needs_a_manager(api, project: Project) -> None:
    url = f"{API}/projects/{project.pk}/conversations/"
    one = {"conversations": [{"messages": GOOD}]}
    assert api("lena").post(url, one, format="json").status_code == 403
    made = api("tess").post(url, one, format="json")
    assert made.status_code == 201
    assert Conversation.objects.get().status == ConversationStatus.SUBMITTED
    bad_status = api("tom").post(
        url, {"conversations": [{"messages": GOOD}], "status": "rejected"}, format="json"
    )
    assert bad_status.status_code == 400 and "status" in bad_status.json()


def test_conversation_list_filters_and_hides_others_work(
    api: Callable, project: Project, people: dict, submitted: Callable
) -> None:
    mine = submitted("lena")
    theirs = submitted("leo")
    draft(project, people["lena"])
    url = f"{API}/projects/{project.pk}/conversations/"
    everything = api("rita").get(url).json()
    assert everything["count"] == 3
    only_submitted = api("tom").get(url, {"status": "submitted"}).json()["results"]
    assert {c["id"] for c in only_submitted} == {mine.pk, theirs.pk}
    assert only_submitted[0]["author"] in {"lena", "leo"}
    lenas = api("lena").get(url, {"status": "submitted"}).json()["results"]
    assert [c["id"] for c in lenas] == [mine.pk]
    assert api("tom").get(url, {"status": "nonsense"}).status_code == 400


# --- items and the queue ----------------------------------------------------------------------


def test_items_and_next_task(api: Callable, project: Project, people: dict) -> None:
    tom = api("tom")
    items_url = f"{API}/projects/{project.pk}/items/"
    written = tom.post(items_url, {"kind": "write", "count": 2}, format="json")
    assert written.status_code == 201 and written.json() == {"created": 2}
    seeds = [[{"role": "user", "content": "What is 7 * 6?"}]]
    replies = tom.post(items_url, {"kind": "reply", "seeds": seeds}, format="json")
    assert replies.status_code == 201 and replies.json() == {"created": 1}
    by_labeler = api("lena").post(items_url, {"kind": "write", "count": 1}, format="json")
    assert by_labeler.status_code == 403
    assert tom.post(items_url, {"kind": "nope"}, format="json").status_code == 400
    assert Item.objects.filter(project=project).count() == 3
    assert set(Item.objects.values_list("overlap", flat=True)) == {2}

    lena = api("lena")
    next_url = f"{API}/projects/{project.pk}/next-task/"
    first = lena.post(next_url)
    assert first.status_code == 200
    task = first.json()
    assert task["status"] == "draft" and task["author"] == "lena"
    assert task["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    again = lena.post(next_url)
    assert again.json()["id"] == task["id"]  # the current task until it is done

    seen = set()
    for _ in range(3):
        task = lena.post(next_url).json()
        assert task["id"] not in seen
        seen.add(task["id"])
        messages = task["messages"]
        if messages[-1]["role"] != "user":  # a reply seed already ends with the user's turn
            messages = [*messages, {"role": "user", "content": "Hi"}]
        messages = [*messages, {"role": "assistant", "content": "Hello."}]
        saved = lena.put(
            f"{API}/conversations/{task['id']}/",
            {"messages": messages, "version": task["version"]},
            format="json",
        )
        assert saved.status_code == 200, saved.content
        done = lena.post(
            f"{API}/conversations/{task['id']}/submit/",
            {"version": saved.json()["version"]},
            format="json",
        )
        assert done.status_code == 200, done.content
    seeded = Conversation.objects.get(source="task:reply")
    assert seeded.messages[1] == {"role": "user", "content": "What is 7 * 6?"}
    empty = lena.post(next_url)
    assert empty.status_code == 204 and not empty.content  # lena did each item once
    lenas = Assignment.objects.filter(labeler=people["lena"])
    assert [a.status for a in lenas] == [AssignmentStatus.DONE] * 3
    assert api("leo").post(next_url).status_code == 200  # overlap 2: leo still has work
    assert api("tom").post(next_url).status_code == 403  # trainers do not label


# --- saving, submitting, reviewing ------------------------------------------------------------


def test_put_with_versions(api: Callable, project: Project, people: dict) -> None:
    conversation = draft(project, people["lena"])
    url = f"{API}/conversations/{conversation.pk}/"
    lena = api("lena")
    saved = lena.put(url, {"messages": GOOD, "tags": ["x"], "version": 1}, format="json")
    assert saved.status_code == 200, saved.content
    assert saved.json()["version"] == 2 and saved.json()["messages"] == GOOD
    conversation.refresh_from_db()
    assert (conversation.version, conversation.messages, conversation.tags) == (2, GOOD, ["x"])

    stale = lena.put(url, {"messages": NO_ASSISTANT, "version": 1}, format="json")
    assert stale.status_code == 409
    assert "version 2" in stale.json()["detail"]
    assert stale.json()["current"]["version"] == 2
    assert stale.json()["current"]["messages"] == GOOD
    missing = lena.put(url, {"messages": NO_ASSISTANT}, format="json")
    assert missing.status_code == 400 and "version" in missing.json()
    overwrite = {"messages": NO_ASSISTANT, "version": 2}
    assert api("leo").put(url, overwrite, format="json").status_code == 403
    assert api("leo").get(url).status_code == 403
    # A reviewer may read it, but only the author edits.
    assert api("rita").get(url).json()["messages"] == GOOD
    assert api("rita").put(url, overwrite, format="json").status_code == 403
    too_big = lena.put(
        url, {"messages": [{"role": "user", "content": "x" * 100_001}], "version": 2}, format="json"
    )
    assert too_big.status_code == 400 and "longer than" in problems_of(too_big)[0]
    conversation.refresh_from_db()
    assert (conversation.version, conversation.messages) == (2, GOOD)  # none of those changed it


def test_submit_reports_plain_problems(api: Callable, project: Project, people: dict) -> None:
    conversation = draft(project, people["lena"])
    url = f"{API}/conversations/{conversation.pk}/submit/"
    lena = api("lena")
    refused = lena.post(url, {"version": 1}, format="json")
    assert refused.status_code == 400
    problems = problems_of(refused)
    assert "This project asks for at least 1 assistant turn; this conversation has 0." in problems
    assert not any("Traceback" in p or "{" in p for p in problems)
    assert lena.post(url, {"version": "one"}, format="json").status_code == 400
    assert api("leo").post(url, {"version": 1}, format="json").status_code == 403
    conversation.refresh_from_db()
    assert conversation.status == ConversationStatus.DRAFT and conversation.version == 1

    services.conversation_save(
        conversation=conversation, user=people["lena"], messages=GOOD, expected_version=1
    )
    assert lena.post(url, {"version": 1}, format="json").status_code == 409
    done = lena.post(url, {"version": 2}, format="json")
    assert done.status_code == 200
    assert done.json()["status"] == "submitted" and done.json()["version"] == 3
    assert done.json()["submitted_at"]


def test_review_through_the_api(
    api: Callable, project: Project, people: dict, submitted: Callable
) -> None:
    rita = api("rita")
    first, second, third = submitted(), submitted(), submitted()

    def review(conversation: Conversation, **body: Any) -> Any:
        return rita.post(f"{API}/conversations/{conversation.pk}/review/", body, format="json")

    no_comment = review(first, decision="reject", version=first.version)
    assert no_comment.status_code == 400 and "comment" in no_comment.json()
    assert review(first, decision="reject", comment="  ", version=first.version).status_code == 400
    assert review(first, decision="approve", version=first.version - 1).status_code == 409
    lena_reviews = api("lena").post(
        f"{API}/conversations/{first.pk}/review/",
        {"decision": "approve", "version": first.version},
        format="json",
    )
    assert lena_reviews.status_code == 403  # labelers do not review
    assert not Review.objects.exists()

    approved = review(first, decision="approve", version=first.version)
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "approved"
    assert approved.json()["version"] == first.version + 1
    assert Review.objects.get(conversation=first).reviewer == people["rita"]
    again = review(first, decision="approve", version=first.version + 1)
    assert again.status_code == 403 and "approved" in again.json()["detail"]

    rejected = review(second, decision="reject", comment="Show the steps.", version=second.version)
    assert rejected.json()["status"] == "rejected"
    assert Review.objects.get(conversation=second).comment == "Show the steps."

    bad_edit = review(third, decision="edit", messages=NO_ASSISTANT, version=third.version)
    assert bad_edit.status_code == 400 and problems_of(bad_edit)
    better = [*GOOD[:2], {"role": "assistant", "content": "2 + 3 = 5, because 2 + 3 is five."}]
    edited = review(third, decision="edit", messages=better, version=third.version)
    assert edited.status_code == 200
    assert edited.json()["status"] == "approved" and edited.json()["messages"] == better
    third_review = Review.objects.get(conversation=third)
    assert third_review.decision == "edit" and third_review.edit_distance > 0
    third.refresh_from_db()
    assert third.submitted_messages == GOOD  # what the author sent is kept for comparison

    ritas_own = submitted("rita")
    own = review(ritas_own, decision="approve", version=ritas_own.version)
    assert own.status_code == 403 and "own" in own.json()["detail"]
    ritas_own.refresh_from_db()
    assert ritas_own.status == ConversationStatus.SUBMITTED


# --- imports ----------------------------------------------------------------------------------

IMPORT_LINES = [
    json.dumps({"messages": GOOD, "tags": ["math"]}),
    "{not json",
    json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
    json.dumps({"messages": GOOD[1:]}),
]


@pytest.mark.parametrize("compressed", [False, True], ids=["jsonl", "gzip"])
def test_import_a_jsonl_file(api: Callable, project: Project, compressed: bool) -> None:
    text = "\n".join(IMPORT_LINES).encode()
    name, payload = ("c.jsonl.gz", gzip.compress(text)) if compressed else ("c.jsonl", text)
    response = api("tom").post(
        f"{API}/projects/{project.pk}/import/",
        {
            "file": SimpleUploadedFile(name, payload),
            "status": "approved",
            "tags": ["batch1", "batch2"],
        },
        format="multipart",
    )
    assert response.status_code == 201, response.content
    report = response.json()
    assert (report["imported"], report["skipped"]) == (2, 2)
    assert [p["line"] for p in report["problems"]] == [2, 3]
    assert "JSON" in report["problems"][0]["message"]
    assert "wizard" in report["problems"][1]["message"]
    imported = Conversation.objects.order_by("id")
    assert [c.tags for c in imported] == [["batch1", "batch2", "math"], ["batch1", "batch2"]]
    assert {c.status for c in imported} == {ConversationStatus.APPROVED}
    assert {c.author for c in imported} == {None}
    assert imported[0].messages == GOOD


def test_import_needs_a_manager_and_a_multipart_file(api: Callable, project: Project) -> None:
    url = f"{API}/projects/{project.pk}/import/"
    upload = SimpleUploadedFile("c.jsonl", IMPORT_LINES[0].encode())
    assert api("lena").post(url, {"file": upload}, format="multipart").status_code == 403
    assert api("tom").post(url, {"messages": GOOD}, format="json").status_code == 415
    assert api("tom").post(url, {}, format="multipart").status_code == 400
    assert not Conversation.objects.exists()


# --- snapshots --------------------------------------------------------------------------------


def test_snapshot_export_strips_drafts(api: Callable, project: Project, people: dict) -> None:
    tom = api("tom")
    url = f"{API}/projects/{project.pk}/snapshots/"
    empty = tom.post(url, {"name": "v0"}, format="json")
    assert empty.status_code == 400
    assert "No approved conversations" in empty.json()["detail"][0]

    drafted = [
        *GOOD[:2],
        {
            "role": "assistant",
            "content": "2 + 3 = 5.",
            "draft": {"text": "2 + 3 = 6.", "checkpoint": 1},
        },
    ]
    other = [*GOOD[:2], {"role": "assistant", "content": "Five."}]
    made = tom.post(
        f"{API}/projects/{project.pk}/conversations/",
        {"conversations": [{"messages": drafted}, {"messages": other}], "status": "approved"},
        format="json",
    )
    assert made.status_code == 201
    assert Conversation.objects.get(pk=made.json()["created"][0]).messages[2]["draft"]
    draft(project, people["lena"])  # drafts and submitted work stay out of the snapshot

    created = tom.post(url, {"name": "v1", "validation_fraction": 0.0}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    snapshot = Snapshot.objects.get()
    assert body["id"] == snapshot.pk and body["artifact"] == snapshot.artifact_id
    assert body["project"] == project.pk
    assert sorted(body["conversations"]) == sorted(made.json()["created"])
    assert body["card"]["conversations"] == 2
    assert body["card"]["splits"] == {"train": 2, "validation": 0}
    assert body["card"]["role_turns"] == {"system": 2, "user": 2, "assistant": 2}
    assert snapshot.artifact.kind == "dataset"

    listed = tom.get(url)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()["results"]] == [snapshot.pk]
    detail = tom.get(f"{API}/snapshots/{snapshot.pk}/")
    assert detail.status_code == 200 and detail.json() == body
    assert api("lena").get(url).status_code == 403
    assert api("lena").post(url, {"name": "v2"}, format="json").status_code == 403

    train = snapshot.artifact.abspath() / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    without_draft = [*GOOD[:2], {"role": "assistant", "content": "2 + 3 = 5."}]
    assert rows == [{"messages": without_draft}, {"messages": other}]
    assert "draft" not in train.read_text(encoding="utf-8")
    assert all(set(row) == {"messages"} for row in rows)


# --- token auth and the schema ----------------------------------------------------------------


def test_token_auth_works_for_a_script(people: dict, project: Project) -> None:
    from django.test import Client
    from rest_framework.authtoken.models import Token

    tom = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=people['tom']).key}")
    assert tom.get(f"{API}/projects/").status_code == 200
    # No CSRF token needed: a script is not a browser.
    script = Client(
        enforce_csrf_checks=True,
        HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=people['tom']).key}",
    )
    made = script.post(
        f"{API}/projects/{project.pk}/conversations/",
        {"conversations": [{"messages": GOOD}], "status": "approved"},
        content_type="application/json",
    )
    assert made.status_code == 201
    lena = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=people['lena']).key}")
    assert lena.post(f"{API}/projects/{project.pk}/conversations/").status_code == 403
    assert Client(HTTP_AUTHORIZATION="Token nope").get(f"{API}/projects/").status_code == 401
    # A browser session must still send its CSRF token for writes.
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(people["tom"])
    assert browser.post(f"{API}/projects/", {"name": "x"}).status_code == 403


def test_openapi_schema_has_no_warnings(api: Callable) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--format",
            "openapi-json",
        ],
        cwd=root,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "Error" not in result.stderr
    paths = json.loads(result.stdout)["paths"]
    assert {
        "/api/labeling/projects/",
        "/api/labeling/projects/{id}/",
        "/api/labeling/projects/{id}/items/",
        "/api/labeling/projects/{id}/next-task/",
        "/api/labeling/projects/{id}/conversations/",
        "/api/labeling/projects/{id}/import/",
        "/api/labeling/projects/{id}/snapshots/",
        "/api/labeling/conversations/{id}/",
        "/api/labeling/conversations/{id}/submit/",
        "/api/labeling/conversations/{id}/review/",
        "/api/labeling/snapshots/{id}/",
    } <= set(paths)
    assert api("tom").get("/api/schema/", HTTP_ACCEPT="application/json").status_code == 200


def test_found_by_fuzzing_bad_system_prompts_and_nul_characters(api, project, people) -> None:
    """Inputs schemathesis turned into 500s: each is now a 400 naming the problem."""
    tom = api("tom")
    for bad in (1.5, "text", False):
        response = tom.post(
            "/api/labeling/projects/", {"name": "x", "system_prompts": bad}, format="json"
        )
        assert response.status_code == 400, bad
    form = tom.post("/api/labeling/projects/", {"name": "x", "system_prompts": "null"})
    assert form.status_code in (201, 400)  # a form field "null" is a one-item list or refused
    nul = [{"role": "user", "content": "a\x00b"}, {"role": "assistant", "content": "ok"}]
    bulk = tom.post(
        f"/api/labeling/projects/{project.pk}/conversations/",
        {"conversations": [{"messages": nul}], "status": "draft"},
        format="json",
    )
    assert bulk.status_code == 400 and "NUL" in json.dumps(bulk.json())
    items = tom.post(
        f"/api/labeling/projects/{project.pk}/items/",
        {"kind": "reply", "seeds": [[{"role": "user", "content": "\x00"}]]},
        format="json",
    )
    assert items.status_code == 400
    draft = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    put = api("lena").put(
        f"/api/labeling/conversations/{draft.pk}/",
        {"messages": nul, "version": draft.version},
        format="json",
    )
    assert put.status_code == 400
    assert Conversation.objects.get(pk=draft.pk).messages == GOOD
