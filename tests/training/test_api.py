"""The REST API: create with field errors, detail with latest metrics, metrics, artifacts."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from training import services
from training.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client_for):
    return client_for("tom")


def test_create_with_a_bad_config_answers_400_naming_the_fields(api):
    response = api.post(
        "/api/runs/",
        {"kind": "countdown", "config": {"steps": -1, "x": 1}},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"steps", "x"}
    assert Run.objects.count() == 0


def test_create_without_a_kind_answers_400(api):
    response = api.post("/api/runs/", {}, content_type="application/json")
    assert response.status_code == 400 and "kind" in response.json()


def test_create_detail_and_metrics(api, people):
    created = api.post(
        "/api/runs/",
        {"kind": "countdown", "config": {"steps": 3, "step_seconds": 0}},
        content_type="application/json",
    )
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert created.json()["status"] == "queued"
    services.run_execute(run_id=run_id)
    detail = api.get(f"/api/runs/{run_id}/").json()
    assert detail["status"] == "succeeded" and detail["progress"] == 1.0
    assert detail["latest_metrics"]["state_mod_97"]["step"] == 3
    assert len(detail["outputs"]) == 1
    metrics = api.get(f"/api/runs/{run_id}/metrics/?name=state_mod_97").json()
    assert [m["step"] for m in metrics] == [1, 2, 3]


def test_list_filters_are_allowlisted(api):
    assert api.get("/api/runs/?status=running").status_code == 200
    assert api.get("/api/runs/?status=nope").status_code == 400
    assert api.get("/api/artifacts/?kind=corpus").status_code == 200
    assert api.get("/api/artifacts/?kind=created_by__password").status_code == 400


def test_cancel_of_a_finished_run_answers_409(api, people):
    run = services.run_create(
        kind="countdown", config={"steps": 1, "step_seconds": 0}, inputs={}, user=people["tom"]
    )
    services.run_execute(run_id=run.pk)
    assert api.post(f"/api/runs/{run.pk}/cancel/").status_code == 409


def test_corpus_upload_through_the_api(api):
    response = api.post("/api/corpora/", {"file": SimpleUploadedFile("c.txt", b"x\n\ny\n")})
    assert response.status_code == 201 and response.json()["kind"] == "corpus"
    bad = api.post("/api/corpora/", {"file": SimpleUploadedFile("c.jsonl", b"[1]\n")})
    assert bad.status_code == 400 and "line 1" in bad.json()["file"][0]


def test_drf_create_token_gives_a_working_token(people, capsys):
    from django.test import Client

    call_command("drf_create_token", "tom")
    key = capsys.readouterr().out.split()[2]
    assert Client(HTTP_AUTHORIZATION=f"Token {key}").get("/api/runs/").status_code == 200


def test_the_openapi_schema_lists_the_run_endpoints(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert {
        "/api/runs/",
        "/api/runs/{id}/",
        "/api/runs/{id}/cancel/",
        "/api/runs/{id}/metrics/",
    } <= set(schema["paths"])
    docs = api.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
