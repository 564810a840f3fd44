"""Labeling pages as plain HTTP: the no-JavaScript editor, autosave, review, seeds, export."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labeling import services
from labeling.models import Conversation, ConversationStatus, Item, Snapshot
from tests.labeling.conftest import GOOD
from tests.support.data import SHARED_DATA

pytestmark = pytest.mark.django_db


def editor_post(client: Any, conversation: Any, turns: list[dict], action: str = "save") -> Any:
    return client.post(
        f"/labeling/conversations/{conversation.pk}/",
        {
            "version": conversation.version,
            "role": [t["role"] for t in turns],
            "content": [t["content"] for t in turns],
            "draft": ["" for _ in turns],
            "action": action,
        },
    )


def test_project_pages(client_for: Any, project: Any) -> None:
    page = client_for("lena").get(f"/labeling/projects/{project.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<strong>steps</strong>" in html  # guidelines rendered as Markdown
    assert "Start the next task" in html and "Add tasks" not in html  # labelers do not manage
    managed = client_for("tom").get(f"/labeling/projects/{project.pk}/").content.decode()
    assert "Add tasks" in managed
    listing = client_for("rita").get("/labeling/").content.decode()
    assert project.name in listing


def test_empty_states(client_for: Any, people: dict) -> None:
    assert "No labeling projects yet" in client_for("lena").get("/labeling/").content.decode()
    assert "Create the first one" in client_for("tom").get("/labeling/").content.decode()


def test_create_project_form(client_for: Any) -> None:
    response = client_for("tom").post(
        "/labeling/projects/new/",
        {
            "name": "Tools",
            "guidelines": "Use the calculator.",
            "system_prompts_text": "You are careful.\n---\nYou are terse.",
            "required_turns": 2,
            "overlap": 3,
            "lease_minutes": 30,
        },
    )
    assert response.status_code == 302
    from labeling.models import Project

    project = Project.objects.get(name="Tools")
    assert project.system_prompts == ["You are careful.", "You are terse."]
    assert (project.required_turns, project.overlap) == (2, 3)
    bad = client_for("tom").post("/labeling/projects/new/", {"name": "", "overlap": 0})
    assert bad.status_code == 200 and "This field is required" in bad.content.decode()


def test_queue_to_editor_to_submission_without_javascript(client_for: Any, project: Any) -> None:
    tom, lena = client_for("tom"), client_for("lena")
    added = tom.post(
        f"/labeling/projects/{project.pk}/items/",
        {"kind": "reply", "prompts": "What is 2 + 3?\nWhat is 7 * 6?"},
    )
    assert added.status_code == 302 and Item.objects.count() == 2
    opened = lena.post(f"/labeling/projects/{project.pk}/next/")
    conversation = Conversation.objects.get()
    assert opened.url == f"/labeling/conversations/{conversation.pk}/"
    page = lena.get(opened.url).content.decode()
    assert "What is 2 + 3?" in page and "&lt;|im_start|&gt;" in page  # ChatML view rendered
    turns = [*conversation.messages]
    add = editor_post(lena, conversation, turns, action="add:assistant")
    assert add.status_code == 302
    conversation.refresh_from_db()
    assert conversation.messages[-1] == {"role": "assistant", "content": ""}
    turns = [*conversation.messages[:-1], {"role": "assistant", "content": "5"}]
    refused = editor_post(lena, conversation, turns[:2], action="submit")  # no assistant turn
    assert refused.status_code == 400
    assert "assistant" in refused.content.decode()
    conversation.refresh_from_db()
    done = editor_post(lena, conversation, turns, action="submit")
    assert done.status_code == 302
    conversation.refresh_from_db()
    assert conversation.status == ConversationStatus.SUBMITTED
    assert conversation.messages[-1]["content"] == "5"


def test_editor_move_and_delete_without_javascript(client_for: Any, project: Any, people: dict):
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    lena = client_for("lena")
    editor_post(lena, conversation, GOOD, action="up:2")
    conversation.refresh_from_db()
    assert [m["role"] for m in conversation.messages] == ["system", "assistant", "user"]
    editor_post(lena, conversation, conversation.messages, action="delete:0")
    conversation.refresh_from_db()
    assert [m["role"] for m in conversation.messages] == ["assistant", "user"]


def test_stale_editor_post_keeps_the_typed_text(client_for: Any, project: Any, people: dict):
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    services.conversation_save(
        conversation=conversation,
        user=people["lena"],
        messages=[*GOOD[:2], {"role": "assistant", "content": "Saved elsewhere."}],
        expected_version=conversation.version,
    )
    typed = [*GOOD[:2], {"role": "assistant", "content": "My long careful answer."}]
    response = editor_post(client_for("lena"), conversation, typed)  # carries the old version
    assert response.status_code == 409
    assert "My long careful answer." in response.content.decode()  # shown back, not lost


def test_autosave_json_and_beacon(client_for: Any, project: Any, people: dict) -> None:
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    lena = client_for("lena")
    url = f"/labeling/conversations/{conversation.pk}/autosave/"
    turns = [*GOOD[:2], {"role": "assistant", "content": "Five."}]
    ok = lena.post(
        url, json.dumps({"version": conversation.version, "turns": turns}), "application/json"
    )
    assert ok.status_code == 200
    version = ok.json()["version"]
    stale = lena.post(
        url, json.dumps({"version": conversation.version, "turns": GOOD}), "application/json"
    )
    assert stale.status_code == 409
    assert stale.json()["turns"][-1]["content"] == "Five."
    beacon = lena.post(url, {"payload": json.dumps({"version": version, "turns": GOOD})})
    assert beacon.status_code == 200
    conversation.refresh_from_db()
    assert conversation.messages == GOOD
    assert client_for("leo").post(url, {"payload": "{}"}).status_code == 403
    garbage = lena.post(url, "not json", "application/json")
    assert garbage.status_code == 400


def test_tool_call_turns_round_trip(client_for: Any, project: Any, people: dict) -> None:
    conversation = services.conversation_create(project=project, user=people["lena"], messages=[])
    call = {"name": "calculator", "arguments": {"expr": "12345*6789"}}
    turns = [
        {"role": "user", "content": "What is 12345 * 6789?"},
        {"role": "tool_call", "content": json.dumps(call)},
        {"role": "tool", "content": "83810205"},
        {"role": "assistant", "content": "12345 × 6789 = 83,810,205."},
    ]
    assert editor_post(client_for("lena"), conversation, turns).status_code == 302
    conversation.refresh_from_db()
    assert conversation.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": call}],
    }
    bad = [*turns[:1], {"role": "tool_call", "content": "calculator(2+2)"}]
    response = editor_post(client_for("lena"), conversation, bad)
    assert response.status_code == 400 and "tool call is JSON" in response.content.decode()


def test_a_stale_autosave_names_its_own_unanswered_save(
    client_for: Any, project: Any, people: dict
) -> None:
    """The server saved an autosave holding a tool call, then died before replying; the editor's
    next save still carries the old version. The server, which stores tool-call JSON in its own
    form, tells the editor the newer copy is its own."""
    conversation = services.conversation_create(project=project, user=people["lena"], messages=[])
    lena = client_for("lena")
    url = f"/labeling/conversations/{conversation.pk}/autosave/"
    lost = [
        {"role": "user", "content": "What is 12345 * 6789?"},
        {
            "role": "tool_call",
            "content": '{ "name":"calculator",\n "arguments": {"expr": "12345*6789"} }',
        },
    ]
    landed = lena.post(
        url, json.dumps({"version": conversation.version, "turns": lost}), "application/json"
    )
    assert landed.status_code == 200  # its reply is the one the browser never got
    typed_on = [*lost, {"role": "tool", "content": "83810205"}]

    def save(unanswered: list) -> Any:
        body = {"version": conversation.version, "turns": typed_on, "unanswered": unanswered}
        return lena.post(url, json.dumps(body), "application/json")

    own = save([[{"role": "user", "content": "older"}], lost])
    assert own.status_code == 409 and own.json()["own_save"] is True
    assert own.json()["turns"][1]["content"] != lost[1]["content"]  # reformatted when stored
    assert own.json()["version"] == landed.json()["version"]
    for unanswered in ([typed_on], [], "not a list", [[{"role": "tool_call", "content": "bad"}]]):
        other = save(unanswered)
        assert other.status_code == 409 and other.json()["own_save"] is False
    conversation.refresh_from_db()
    assert conversation.version == landed.json()["version"]  # a 409 never writes


def test_markdown_preview_is_sanitised(client_for: Any, people: dict) -> None:
    html = (
        client_for("lena")
        .post(
            "/labeling/preview/",
            {"text": "**bold** <script>alert(1)</script><img src=x onerror=x>"},
        )
        .content.decode()
    )
    assert "<strong>bold</strong>" in html
    assert "<script" not in html and "onerror" not in html


def test_chatml_view_marks_trained_tokens(
    client_for: Any, project: Any, people: dict, tiny_checkpoint: Any
) -> None:
    project.draft_checkpoint = tiny_checkpoint
    project.save()
    conversation = services.conversation_create(project=project, user=people["lena"], messages=GOOD)
    html = (
        client_for("lena")
        .post(
            f"/labeling/conversations/{conversation.pk}/chatml/",
            {"role": [m["role"] for m in GOOD], "content": [m["content"] for m in GOOD]},
        )
        .content.decode()
    )
    assert "tokens (" in html and 'class="assistant' in html and "tiny" in html


def test_model_draft_is_recorded_with_the_turn(
    client_for: Any, project: Any, people: dict, tiny_checkpoint: Any
) -> None:
    project.draft_checkpoint = tiny_checkpoint
    project.save()
    hello = [{"role": "user", "content": "Hi"}]  # the tiny model's window is 64 tokens
    conversation = services.conversation_create(
        project=project, user=people["lena"], messages=hello
    )
    lena = client_for("lena")
    response = lena.post(
        f"/labeling/conversations/{conversation.pk}/draft/", {"role": ["user"], "content": ["Hi"]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["draft"]["checkpoint"] == tiny_checkpoint.pk
    assert body["draft"]["text"] == body["text"]
    # plain-HTTP path: the draft is appended and stored with its provenance
    assert editor_post(lena, conversation, hello, action="draft").status_code == 302
    conversation.refresh_from_db()
    assert conversation.messages[-1]["role"] == "assistant"
    assert conversation.messages[-1]["draft"]["checkpoint"] == tiny_checkpoint.pk
    refused = lena.post(
        f"/labeling/conversations/{conversation.pk}/draft/",
        {"role": ["assistant"], "content": ["hi"]},
    )
    assert refused.status_code == 400 and "user" in refused.json()["error"]


def test_review_page_flow(client_for: Any, submitted: Any) -> None:
    conversation = submitted()
    rita = client_for("rita")
    claimed = rita.post(f"/labeling/projects/{conversation.project_id}/review/")
    assert claimed.url == f"/labeling/conversations/{conversation.pk}/review/"
    page = rita.get(claimed.url).content.decode()
    assert "2 + 3 = 5." in page
    refused = rita.post(claimed.url, {"decision": "reject", "comment": "", "version": 2})
    assert refused.status_code == 400 and "needs a comment" in refused.content.decode()
    rita.post(claimed.url, {"decision": "reject", "comment": "Show steps", "version": 2})
    conversation.refresh_from_db()
    assert conversation.status == ConversationStatus.REJECTED
    # the author sees the feedback in the editor and in My work
    lena = client_for("lena")
    assert "Show steps" in lena.get(f"/labeling/conversations/{conversation.pk}/").content.decode()
    assert "Show steps" in lena.get("/labeling/mine/").content.decode()
    history = lena.get(f"/labeling/conversations/{conversation.pk}/history/").content.decode()
    assert "requested changes" in history and "rita" in history


def test_others_cannot_open_a_labelers_conversation(client_for: Any, submitted: Any) -> None:
    conversation = submitted()
    assert client_for("leo").get(f"/labeling/conversations/{conversation.pk}/").status_code == 403
    assert client_for("rita").get(f"/labeling/conversations/{conversation.pk}/").status_code == 200


def test_seed_identity_and_idk(client_for: Any, project: Any) -> None:
    tom = client_for("tom")
    tom.post(
        f"/labeling/projects/{project.pk}/seed/identity/",
        {
            "assistant_name": "Pip",
            "maker": "the Orchard team",
            "purpose": "help with math",
            "limitations": "I cannot browse.\nI can be wrong",
            "approve": "on",
        },
    )
    identity = Conversation.objects.filter(tags=["identity"])
    assert identity.count() == 6
    assert all(c.status == ConversationStatus.APPROVED for c in identity)
    texts = " ".join(c.messages[-1]["content"] for c in identity)
    assert "Pip" in texts and "the Orchard team" in texts and "I can be wrong." in texts
    tom.post(
        f"/labeling/projects/{project.pk}/seed/idk/",
        {"questions": "What did I eat today?\n\nWhat is my PIN?", "answer": "I don't know."},
    )
    idk = Conversation.objects.filter(source="seed:idk")
    assert idk.count() == 2 and all(c.status == ConversationStatus.SUBMITTED for c in idk)
    assert all(services.submission_problems(c) == [] for c in idk)


def test_import_reports_every_bad_line(client_for: Any, project: Any) -> None:
    lines = [
        json.dumps({"messages": GOOD, "tags": ["math"]}),
        "{not json",
        json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),
        json.dumps({"messages": GOOD[1:]}),
    ]
    upload = SimpleUploadedFile("c.jsonl.gz", gzip.compress("\n".join(lines).encode()))
    page = client_for("tom").post(
        f"/labeling/projects/{project.pk}/import/",
        {"file": upload, "format": "auto", "status": "approved", "tags": "batch1"},
    )
    html = page.content.decode()
    assert "<strong>2</strong> imported, <strong>2</strong> skipped" in html
    assert "line 2" in html and "line 3" in html
    imported = Conversation.objects.order_by("id")
    assert [c.tags for c in imported] == [["batch1", "math"], ["batch1"]]
    assert imported[0].revisions.get().action == "import"


@pytest.mark.skipif(not (SHARED_DATA / "conversations").is_dir(), reason="shared data missing")
def test_import_openassistant_trees(client_for: Any, project: Any) -> None:
    path = SHARED_DATA / "conversations" / "oasst_en_100_tree.jsonl"
    upload = SimpleUploadedFile("oasst.jsonl", path.read_bytes())
    client_for("tom").post(
        f"/labeling/projects/{project.pk}/import/",
        {"file": upload, "format": "oasst", "status": "submitted"},
    )
    assert Conversation.objects.filter(source="import:oasst").count() == 95  # 5 synthetic roots


def test_export_snapshot_and_download(client_for: Any, project: Any, submitted: Any, people):
    conversation = submitted()
    tom = client_for("tom")
    empty = tom.post(
        f"/labeling/projects/{project.pk}/export/", {"name": "v0", "validation_fraction": 0.1}
    )
    assert "No approved conversations" in empty.content.decode()
    services.review_decide(
        conversation=conversation,
        user=people["rita"],
        expected_version=conversation.version,
        review=services.ReviewInput("approve"),
    )
    preview = tom.get(f"/labeling/projects/{project.pk}/export/").content.decode()
    assert "<strong>1</strong> approved conversation" in preview
    made = tom.post(  # no validation split: the one conversation must be in train.jsonl
        f"/labeling/projects/{project.pk}/export/", {"name": "v1", "validation_fraction": 0.0}
    )
    snapshot = Snapshot.objects.get()
    assert made.url == f"/labeling/snapshots/{snapshot.pk}/"
    assert snapshot.artifact.kind == "dataset"
    assert list(snapshot.conversations.all()) == [conversation]
    assert snapshot.card["labelers"] == ["lena"]
    detail = tom.get(made.url).content.decode()
    assert snapshot.card["content_sha256"] in detail
    download = tom.get(f"/labeling/snapshots/{snapshot.pk}/files/train.jsonl")
    rows = [json.loads(line) for line in b"".join(download.streaming_content).splitlines()]
    assert rows == [{"messages": GOOD}]
    assert tom.get(f"/labeling/snapshots/{snapshot.pk}/files/..%2Fsecret").status_code == 404


def test_stats_page_explains_its_numbers(client_for: Any, submitted: Any) -> None:
    conversation = submitted()
    html = client_for("tom").get(f"/labeling/projects/{conversation.project_id}/stats/")
    text = html.content.decode()
    assert "lena" in text and "Levenshtein" in text
    own = client_for("leo").get(f"/labeling/projects/{conversation.project_id}/stats/")
    assert "lena" not in own.content.decode()  # labelers see only their own row


def test_conversation_list_filters_by_tag_before_paging(client_for, project, people) -> None:
    for index in range(60):
        services.conversation_create(
            project=project, user=people["lena"], messages=GOOD, tags=["idk"] if index < 3 else []
        )
    page = client_for("tom").get(f"/labeling/projects/{project.pk}/conversations/?tag=idk")
    listed = page.context["page"]
    assert listed.paginator.count == 3 and all("idk" in c.tags for c in listed.object_list)


def test_unchanged_guidelines_from_a_browser_make_no_new_version(client_for, project) -> None:
    crlf = project.guidelines.replace("\n", "\r\n")
    client_for("tom").post(
        f"/labeling/projects/{project.pk}/edit/",
        {"name": project.name, "guidelines": crlf, "required_turns": 1, "overlap": 2,
         "lease_minutes": 60, "system_prompts_text": "You are a helpful assistant."},
    )  # fmt: skip
    project.refresh_from_db()
    assert project.guideline_version == 1


def test_continue_tasks_from_a_file_of_conversations(client_for, project, people) -> None:
    seeds = "\n".join(json.dumps({"messages": GOOD[1:]}) for _ in range(2)) + "\n{broken\n"
    added = client_for("tom").post(
        f"/labeling/projects/{project.pk}/items/",
        {"kind": "continue", "seed_file": SimpleUploadedFile("seeds.jsonl", seeds.encode())},
        follow=True,
    )
    assert "Added 2 tasks" in added.content.decode() and "line 3" in added.content.decode()
    opened = client_for("lena").post(f"/labeling/projects/{project.pk}/next/")
    conversation = Conversation.objects.get()
    assert opened.url == f"/labeling/conversations/{conversation.pk}/"
    assert conversation.messages[1:] == GOOD[1:]  # the system prompt, then the seed to continue
    assert conversation.source == "task:continue"
