"""Every URL × every role (anonymous, labeler, reviewer, trainer, another trainer, admin).

Routes are enumerated from the URL resolver: a new route that is not classified here fails this
test, so no page or endpoint ships without a decision about who may use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver

from training import services, uploads
from training.models import ArenaBattle, ChatMessage, ChatSession, Run, RunStatus

pytestmark = pytest.mark.django_db

PERSONAS = ["anon", "lena", "rita", "tom", "tess", "ada"]  # tom owns the objects under test


@dataclass
class Case:
    method: str
    path: Callable[[dict[str, Any]], str]
    expect: dict[str, int]
    data: Callable[[], dict] | None = None


def codes(anon: int, labeler: int, reviewer: int, owner: int, other: int, admin: int) -> dict:
    return dict(zip(PERSONAS, [anon, labeler, reviewer, owner, other, admin], strict=True))


# Pages need a login (302 to it) and a role (403); the API answers 401, then 403.
PAGE_VIEW_RUNS = codes(302, 403, 403, 200, 200, 200)
API_VIEW_RUNS = codes(401, 403, 403, 200, 200, 200)
EVERYONE = codes(302, 200, 200, 200, 200, 200)


def corpus_file() -> dict:
    return {"file": SimpleUploadedFile("c.txt", b"one document\n\nanother one\n")}


CASES: dict[str, Case] = {
    "home": Case("GET", lambda o: "/", EVERYONE),
    "healthz": Case("GET", lambda o: "/healthz", codes(200, 200, 200, 200, 200, 200)),
    "login": Case("GET", lambda o: "/login/", codes(200, 302, 302, 302, 302, 302)),
    "logout": Case("POST", lambda o: "/logout/", codes(302, 302, 302, 302, 302, 302)),
    "api-schema": Case("GET", lambda o: "/api/schema/", codes(401, 200, 200, 200, 200, 200)),
    "api-docs": Case("GET", lambda o: "/api/docs/", codes(401, 200, 200, 200, 200, 200)),
    "training:run-list": Case("GET", lambda o: "/runs/", PAGE_VIEW_RUNS),
    "training:run-new": Case("GET", lambda o: "/runs/new/", PAGE_VIEW_RUNS),
    "training:run-launch": Case("GET", lambda o: "/runs/new/tokenizer/", PAGE_VIEW_RUNS),
    "training:run-estimate": Case("GET", lambda o: "/runs/new/pretrain/estimate/", PAGE_VIEW_RUNS),
    "training:run-detail": Case("GET", lambda o: f"/runs/{o['run'].pk}/", PAGE_VIEW_RUNS),
    "training:run-cancel": Case(
        "POST", lambda o: f"/runs/{o['run'].pk}/cancel/", codes(302, 403, 403, 302, 403, 302)
    ),
    "training:run-retry": Case(
        "POST", lambda o: f"/runs/{o['failed'].pk}/retry/", codes(302, 403, 403, 302, 403, 302)
    ),
    "training:artifact-list": Case("GET", lambda o: "/artifacts/", PAGE_VIEW_RUNS),
    "training:artifact-detail": Case(
        "GET", lambda o: f"/artifacts/{o['corpus'].pk}/", PAGE_VIEW_RUNS
    ),
    "training:corpus-upload": Case("GET", lambda o: "/corpora/upload/", PAGE_VIEW_RUNS),
    "training:webdata-upload": Case("GET", lambda o: "/webdata/upload/", PAGE_VIEW_RUNS),
    "training:blocklist-upload": Case("GET", lambda o: "/blocklists/upload/", PAGE_VIEW_RUNS),
    # An uploaded text corpus has no pipeline run to inspect: 404 once the role may look.
    "training:corpus-inspector": Case(
        "GET",
        lambda o: f"/artifacts/{o['corpus'].pk}/inspect/",
        codes(302, 403, 404, 404, 404, 404),
    ),
    "training:corpus-count-tokens": Case(
        "POST",
        lambda o: f"/artifacts/{o['corpus'].pk}/inspect/tokens/",
        codes(302, 403, 404, 404, 404, 404),
    ),
    "training:corpus-document": Case(
        "GET",
        lambda o: f"/artifacts/{o['corpus'].pk}/inspect/document/?id=x",
        codes(302, 403, 404, 404, 404, 404),
    ),
    "training:checkpoint-list": Case("GET", lambda o: "/checkpoints/", PAGE_VIEW_RUNS),
    "training:checkpoint-import": Case("GET", lambda o: "/checkpoints/import/", PAGE_VIEW_RUNS),
    "training:playground": Case("GET", lambda o: "/playground/", EVERYONE),
    "training:compare": Case("GET", lambda o: "/checkpoints/compare/", EVERYONE),
    "training:score-explorer": Case("GET", lambda o: "/reward/scores/", PAGE_VIEW_RUNS),
    "training:chat": Case("GET", lambda o: "/chat/", EVERYONE),
    "training:arena": Case("GET", lambda o: "/arena/", EVERYONE),
    "training:arena-leaderboard": Case("GET", lambda o: "/arena/leaderboard/", EVERYONE),
    "training:arena-battle": Case(
        "GET", lambda o: f"/arena/{o['battle'].pk}/", codes(302, 200, 404, 404, 404, 404)
    ),
    "training:arena-vote": Case(
        "POST", lambda o: f"/arena/{o['battle'].pk}/vote/", codes(302, 302, 404, 404, 404, 404)
    ),
    # lena's chat: only she may open or act on it (404 for everyone else, not 403: a chat's
    # existence is private too).
    "training:chat-session": Case(
        "GET", lambda o: f"/chat/{o['chat'].pk}/", codes(302, 200, 404, 404, 404, 404)
    ),
    "training:chat-send": Case(
        "POST", lambda o: f"/chat/{o['chat'].pk}/send/", codes(302, 302, 404, 404, 404, 404)
    ),
    "training:chat-settings": Case(
        "POST", lambda o: f"/chat/{o['chat'].pk}/settings/", codes(302, 302, 404, 404, 404, 404)
    ),
    "training:chat-delete": Case(
        "POST", lambda o: f"/chat/{o['chat'].pk}/delete/", codes(302, 302, 404, 404, 404, 404)
    ),
    "training:chat-regenerate": Case(
        "POST",
        lambda o: f"/chat/{o['chat'].pk}/messages/{o['reply'].pk}/regenerate/",
        codes(302, 302, 404, 404, 404, 404),
    ),
    "training:chat-show": Case(
        "POST",
        lambda o: f"/chat/{o['chat'].pk}/messages/{o['reply'].pk}/show/",
        codes(302, 302, 404, 404, 404, 404),
    ),
    "training:chat-feedback": Case(
        "POST",
        lambda o: f"/chat/{o['chat'].pk}/messages/{o['reply'].pk}/feedback/",
        codes(302, 302, 404, 404, 404, 404),
    ),
    "training:tokenizer-playground": Case("GET", lambda o: "/tokenizers/playground/", EVERYONE),
    "training:playground-stream": Case(
        "POST", lambda o: "/playground/stream/", codes(302, 400, 400, 400, 400, 400)
    ),
    "api-run-list": Case("GET", lambda o: "/api/runs/", API_VIEW_RUNS),
    "api-run-detail": Case("GET", lambda o: f"/api/runs/{o['run'].pk}/", API_VIEW_RUNS),
    "api-run-cancel": Case(
        "POST", lambda o: f"/api/runs/{o['run'].pk}/cancel/", codes(401, 403, 403, 200, 403, 200)
    ),
    "api-run-retry": Case(
        "POST", lambda o: f"/api/runs/{o['failed'].pk}/retry/", codes(401, 403, 403, 200, 403, 200)
    ),
    "api-run-metrics": Case("GET", lambda o: f"/api/runs/{o['run'].pk}/metrics/", API_VIEW_RUNS),
    "api-artifact-list": Case("GET", lambda o: "/api/artifacts/", API_VIEW_RUNS),
    "api-artifact-detail": Case(
        "GET", lambda o: f"/api/artifacts/{o['corpus'].pk}/", API_VIEW_RUNS
    ),
    "api-corpus-upload": Case(
        "POST", lambda o: "/api/corpora/", codes(401, 403, 403, 201, 201, 201), corpus_file
    ),
}
LABELING_ANY = codes(302, 200, 200, 200, 200, 200)
LABELING_MANAGE = codes(302, 403, 403, 200, 200, 200)
LABELING_LABEL = codes(302, 200, 200, 403, 403, 200)
API_LABELING_ANY = codes(401, 200, 200, 200, 200, 200)
API_LABELING_MANAGE = codes(401, 403, 403, 200, 200, 200)


def conversations_file() -> dict:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    line = json.dumps({"messages": messages}).encode()
    return {"file": SimpleUploadedFile("c.jsonl", line)}


CASES.update(
    {
        "labeling:project-list": Case("GET", lambda o: "/labeling/", LABELING_ANY),
        "labeling:my-work": Case("GET", lambda o: "/labeling/mine/", LABELING_LABEL),
        "labeling:project-new": Case("GET", lambda o: "/labeling/projects/new/", LABELING_MANAGE),
        "labeling:project-detail": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/", LABELING_ANY
        ),
        "labeling:project-edit": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/edit/", LABELING_MANAGE
        ),
        "labeling:conversation-list": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/conversations/", LABELING_ANY
        ),
        "labeling:items-add": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/items/",
            codes(302, 403, 403, 302, 302, 302),
        ),
        "labeling:task-next": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/next/",
            codes(302, 302, 302, 403, 403, 302),
        ),
        "labeling:conversation-new": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/write/",
            codes(302, 302, 302, 403, 403, 302),
        ),
        "labeling:review-next": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/review/",
            codes(302, 403, 302, 403, 403, 302),
        ),
        "labeling:project-stats": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/stats/", LABELING_ANY
        ),
        "labeling:seed-identity": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/seed/identity/", LABELING_MANAGE
        ),
        "labeling:seed-idk": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/seed/idk/", LABELING_MANAGE
        ),
        "labeling:conversation-import": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/import/", LABELING_MANAGE
        ),
        "labeling:snapshot-new": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/export/", LABELING_MANAGE
        ),
        # lena's conversation: its author, reviewers and project managers may open it.
        "labeling:conversation-edit": Case(
            "GET", lambda o: f"/labeling/conversations/{o['conversation'].pk}/", LABELING_ANY
        ),
        "labeling:conversation-autosave": Case(
            "POST",
            lambda o: f"/labeling/conversations/{o['conversation'].pk}/autosave/",
            codes(302, 400, 403, 403, 403, 400),  # 400: the empty body; only the author writes
        ),
        "labeling:conversation-chatml": Case(
            "POST",
            lambda o: f"/labeling/conversations/{o['conversation'].pk}/chatml/",
            LABELING_ANY,
        ),
        "labeling:conversation-draft": Case(
            "POST",
            lambda o: f"/labeling/conversations/{o['conversation'].pk}/draft/",
            codes(302, 400, 403, 403, 403, 400),  # 400: no drafting checkpoint
        ),
        "labeling:task-skip": Case(
            "POST",
            lambda o: f"/labeling/conversations/{o['conversation'].pk}/skip/",
            codes(302, 404, 404, 403, 403, 404),  # 404: not a queued task of theirs
        ),
        "labeling:conversation-review": Case(
            "GET",
            lambda o: f"/labeling/conversations/{o['conversation'].pk}/review/",
            codes(302, 403, 200, 403, 403, 200),
        ),
        "labeling:conversation-history": Case(
            "GET",
            lambda o: f"/labeling/conversations/{o['conversation'].pk}/history/",
            LABELING_ANY,
        ),
        "labeling:markdown-preview": Case("POST", lambda o: "/labeling/preview/", LABELING_ANY),
        "labeling:chat-correction": Case(
            "POST",
            lambda o: f"/labeling/from-chat/{o['reply'].pk}/correction/",
            codes(302, 302, 404, 404, 404, 404),
        ),
        "labeling:factuality-drafts": Case(
            "POST",
            lambda o: f"/labeling/from-factuality/{o['run'].pk}/",
            codes(302, 403, 403, 404, 404, 404),  # 404: the countdown run is no probe
        ),
        "labeling:arena-import": Case(
            "POST", lambda o: "/labeling/from-arena/", codes(302, 403, 403, 302, 302, 302)
        ),
        "labeling:chat-rank": Case(
            "POST",
            lambda o: f"/labeling/from-chat/{o['reply'].pk}/rank/",
            codes(302, 302, 404, 404, 404, 404),
        ),
        "labeling:task-rank": Case(
            "GET",
            lambda o: f"/labeling/tasks/{o['assignment'].pk}/rank/",
            codes(302, 200, 404, 403, 403, 404),  # only the labeler holding the task
        ),
        "labeling:problems": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/problems/", LABELING_ANY
        ),
        "labeling:problems-generate": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/problems/generate/",
            codes(302, 403, 403, 302, 302, 302),
        ),
        "labeling:problems-import": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/problems/import/",
            codes(302, 403, 403, 302, 302, 302),
        ),
        "labeling:problems-export": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/problems/export/",
            codes(302, 403, 403, 302, 302, 302),
        ),
        "labeling:problem-review": Case(
            "POST",
            lambda o: f"/labeling/projects/{o['project'].pk}/problems/{o['problem'].pk}/review/",
            codes(302, 403, 302, 403, 403, 302),
        ),
        "labeling:responses-new": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/responses/", LABELING_MANAGE
        ),
        "labeling:agreement": Case(
            "GET", lambda o: f"/labeling/projects/{o['project'].pk}/agreement/", LABELING_ANY
        ),
        "labeling:preference-export": Case(
            "GET",
            lambda o: f"/labeling/projects/{o['project'].pk}/preferences/export/",
            LABELING_MANAGE,
        ),
        "labeling:preference-import": Case(
            "GET",
            lambda o: f"/labeling/projects/{o['project'].pk}/preferences/import/",
            LABELING_MANAGE,
        ),
        "labeling:snapshot-detail": Case(
            "GET", lambda o: f"/labeling/snapshots/{o['snapshot'].pk}/", PAGE_VIEW_RUNS
        ),
        "labeling:snapshot-file": Case(
            "GET",
            lambda o: f"/labeling/snapshots/{o['snapshot'].pk}/files/card.json",
            PAGE_VIEW_RUNS,
        ),
        "api-project-list": Case("GET", lambda o: "/api/labeling/projects/", API_LABELING_ANY),
        "api-project-detail": Case(
            "GET", lambda o: f"/api/labeling/projects/{o['project'].pk}/", API_LABELING_ANY
        ),
        "api-project-items": Case(
            "POST",
            lambda o: f"/api/labeling/projects/{o['project'].pk}/items/",
            codes(401, 403, 403, 201, 201, 201),
            lambda: {"kind": "write", "count": 1},
        ),
        "api-next-task": Case(
            "POST",
            lambda o: f"/api/labeling/projects/{o['project'].pk}/next-task/",
            codes(401, 200, 204, 403, 403, 204),  # lena: her current task; others: none left
        ),
        "api-project-conversations": Case(
            "GET",
            lambda o: f"/api/labeling/projects/{o['project'].pk}/conversations/",
            API_LABELING_ANY,
        ),
        "api-project-import": Case(
            "POST",
            lambda o: f"/api/labeling/projects/{o['project'].pk}/import/",
            codes(401, 403, 403, 201, 201, 201),
            conversations_file,
        ),
        "api-project-snapshots": Case(
            "GET",
            lambda o: f"/api/labeling/projects/{o['project'].pk}/snapshots/",
            API_VIEW_RUNS,
        ),
        "api-conversation": Case(
            "GET",
            lambda o: f"/api/labeling/conversations/{o['conversation'].pk}/",
            API_LABELING_ANY,
        ),
        "api-conversation-submit": Case(
            "POST",
            lambda o: f"/api/labeling/conversations/{o['conversation'].pk}/submit/",
            codes(401, 200, 403, 403, 403, 200),
        ),
        "api-conversation-review": Case(
            "POST",
            lambda o: f"/api/labeling/conversations/{o['conversation'].pk}/review/",
            codes(401, 403, 409, 403, 403, 409),  # 409: version 0 is stale
            lambda: {"decision": "approve", "version": 0},
        ),
        "api-ranking-submit": Case(
            "POST",
            lambda o: f"/api/labeling/tasks/{o['assignment'].pk}/ranking/",
            codes(401, 201, 404, 403, 403, 404),  # only the labeler holding the task
            lambda: {"order": [[1], [0]]},
        ),
        "api-snapshot-detail": Case(
            "GET", lambda o: f"/api/labeling/snapshots/{o['snapshot'].pk}/", API_VIEW_RUNS
        ),
    }
)
# The OpenAI-compatible API (/v1/): everyone who may chat; 400 for the empty request body,
# 404 for a model that does not exist.
CASES.update(
    {
        "openai-model-list": Case(
            "GET", lambda o: "/v1/models", codes(401, 200, 200, 200, 200, 200)
        ),
        "openai-model-detail": Case(
            "GET", lambda o: "/v1/models/orchard-0", codes(401, 404, 404, 404, 404, 404)
        ),
        "openai-chat-completions": Case(
            "POST", lambda o: "/v1/chat/completions", codes(401, 400, 400, 400, 400, 400)
        ),
    }
)


def report_checkpoint(o: dict[str, Any]) -> int:
    """A checkpoint (made once per objects dict) for the report card routes; the card reads only
    the database, so no files are needed."""
    from training.models import Artifact

    if "checkpoint" not in o:
        o["checkpoint"] = Artifact.objects.create(kind="checkpoint", name="ckpt", sha256="0" * 64)
        o["checkpoint"].parents.set([o["corpus"]])
    return o["checkpoint"].pk


# A checkpoint's report card (page, Markdown, JSON): whoever may see runs.
CASES.update(
    {
        "training:report-card": Case(
            "GET", lambda o: f"/checkpoints/{report_checkpoint(o)}/report/", PAGE_VIEW_RUNS
        ),
        "training:report-card-md": Case(
            "GET", lambda o: f"/checkpoints/{report_checkpoint(o)}/report.md", PAGE_VIEW_RUNS
        ),
        "training:report-card-json": Case(
            "GET", lambda o: f"/checkpoints/{report_checkpoint(o)}/report.json", PAGE_VIEW_RUNS
        ),
    }
)
# Launching through the API, separately from listing (same route, another capability).
API_CREATE = Case(
    "POST",
    lambda o: "/api/runs/",
    codes(401, 403, 403, 201, 201, 201),
    lambda: {"kind": "countdown", "config": {"steps": 1}},
)


def route_names(patterns: list, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            namespace = f"{prefix}{pattern.namespace}:" if pattern.namespace else prefix
            names |= route_names(pattern.url_patterns, namespace)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(prefix + pattern.name)
    return names


def test_every_route_is_classified() -> None:
    names = {n for n in route_names(get_resolver().url_patterns) if not n.startswith("admin:")}
    assert names - set(CASES) == set(), "classify new routes in CASES"
    assert set(CASES) - names == set(), "CASES names routes that no longer exist"


@pytest.fixture
def objects(people) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        tom = people["tom"]
        corpus = uploads.corpus_upload(uploaded=corpus_file()["file"], name="c", user=tom)
        run = services.run_create(kind="countdown", config={}, inputs={}, user=tom)
        failed = services.run_create(kind="countdown", config={}, inputs={}, user=tom)
        Run.objects.filter(pk=failed.pk).update(status=RunStatus.FAILED)
        chat = ChatSession.objects.create(user=people["lena"], title="mine")
        question = ChatMessage.objects.create(session=chat, role="user", content="Hi")
        reply = ChatMessage.objects.create(
            session=chat, parent=question, role="assistant", content="Hello"
        )
        battle = ArenaBattle.objects.create(
            user=people["lena"],
            prompt="Hi",
            checkpoint_a=corpus,
            checkpoint_b=corpus,
            reply_a="a",
            reply_b="b",
        )
        return {
            "corpus": corpus,
            "run": run,
            "failed": failed,
            "battle": battle,
            "chat": chat,
            "reply": reply,
            **labeling_objects(people),
        }

    return make


def labeling_objects(people: dict[str, Any]) -> dict[str, Any]:
    """tom's project, lena's submitted conversation, and a snapshot of leo's approved one."""
    from datetime import timedelta

    from django.utils import timezone

    from labeling import data
    from labeling import services as labeling
    from labeling.models import Assignment, Item, Problem

    project = labeling.project_create(user=people["tom"], name="p")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    draft = labeling.conversation_create(project=project, user=people["lena"], messages=messages)
    conversation = labeling.conversation_submit(
        conversation=draft, user=people["lena"], expected_version=draft.version
    )
    labeling.conversation_create(
        project=project, user=people["leo"], messages=messages, status="approved"
    )
    snapshot = data.snapshot_create(project=project, user=people["tom"], name="s")
    ranked = Item.objects.create(
        project=project,
        kind="rank",
        seed_messages=messages[:1],
        responses=[{"text": "a"}, {"text": "b"}],
        overlap=1,
        taken=1,  # lena holds the only slot
    )
    assignment = Assignment.objects.create(
        item=ranked, labeler=people["lena"], lease_expires_at=timezone.now() + timedelta(hours=1)
    )
    problem = Problem.objects.create(
        project=project, question="1+1?", answer="2", author=people["lena"]
    )
    return {
        "problem": problem,
        "project": project,
        "conversation": conversation,
        "snapshot": snapshot,
        "assignment": assignment,
    }


def call(client_for, persona: str, case: Case, objs: dict[str, Any]) -> int:
    client = client_for(None if persona == "anon" else persona)
    data = case.data() if case.data else {}
    if case.method == "GET":
        return client.get(case.path(objs)).status_code
    if case.data in (corpus_file, conversations_file):
        return client.post(case.path(objs), data).status_code
    return client.post(case.path(objs), data, content_type="application/json").status_code


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("name", [*sorted(CASES), "api-run-create"])
def test_route_answers_each_role_as_expected(client_for, objects, persona, name) -> None:
    case = API_CREATE if name == "api-run-create" else CASES[name]
    assert call(client_for, persona, case, objects()) == case.expect[persona]


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_admin_site_is_for_admins_only(client_for, persona) -> None:
    client = client_for(None if persona == "anon" else persona)
    expected = 200 if persona == "ada" else 302
    assert client.get("/admin/").status_code == expected


def test_token_auth_reaches_the_api(people, client_for) -> None:
    from django.test import Client
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=people["tom"])
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/runs/").status_code == 200
    assert Client(HTTP_AUTHORIZATION="Token nope").get("/api/runs/").status_code == 401


def test_unsafe_requests_without_a_csrf_token_are_refused(people) -> None:
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(people["tom"])
    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 403
    assert client.post(f"/api/runs/{run.pk}/cancel/").status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
