"""Run and artifact pages: full pages, the htmx live partial, launch forms, uploads."""

from __future__ import annotations

import gzip
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from training import services, uploads
from training.models import Artifact, Run, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def tom(client_for):
    return client_for("tom")


def test_the_run_list_filters_by_kind_and_status(tom, people):
    done = services.run_create(
        kind="countdown", config={"steps": 1, "step_seconds": 0}, inputs={}, user=people["tom"]
    )
    services.run_execute(run_id=done.pk)
    queued = services.run_create(kind="countdown", config={}, inputs={}, user=people["tess"])
    page = tom.get("/runs/?status=queued").content.decode()
    assert f"/runs/{queued.pk}/" in page and f"/runs/{done.pk}/" not in page
    assert tom.get("/runs/?status=bogus").status_code == 400
    assert tom.get("/runs/?kind=created_by__password").status_code == 400


def test_the_run_list_explains_an_empty_state_and_offline_workers(tom):
    page = tom.get("/runs/").content.decode()
    assert "No runs" in page
    assert "No worker is online" in page


def test_the_run_page_renders_fully_and_as_an_htmx_partial(tom, people):
    run = services.run_create(
        kind="countdown", config={"steps": 4, "step_seconds": 0}, inputs={}, user=people["tom"]
    )
    page = tom.get(f"/runs/{run.pk}/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "<html" in body and 'hx-trigger="every 2s"' in body and "Cancel" in body
    partial = tom.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true")
    assert partial.status_code == 200
    assert "<html" not in partial.content.decode()
    assert 'hx-trigger="every 2s"' in partial.content.decode()


def test_the_live_partial_stops_polling_once_the_run_ended(tom, people):
    run = services.run_create(
        kind="countdown", config={"steps": 4, "step_seconds": 0}, inputs={}, user=people["tom"]
    )
    services.run_execute(run_id=run.pk)
    partial = tom.get(f"/runs/{run.pk}/", HTTP_HX_REQUEST="true")
    assert partial.status_code == 286  # htmx: stop polling
    body = partial.content.decode()
    assert "hx-trigger" not in body
    assert "state_mod_97" in body and "<svg" in body and "<polyline" in body  # the chart
    assert "Outputs" in body


def test_cancel_and_retry_buttons_work_without_javascript(tom, people):
    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    response = tom.post(f"/runs/{run.pk}/cancel/", follow=True)
    assert response.redirect_chain[-1][0] == f"/runs/{run.pk}/"
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    tom.post(f"/runs/{run.pk}/retry/")
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def test_wrong_methods_are_refused(tom, people):
    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    assert tom.get(f"/runs/{run.pk}/cancel/").status_code == 405
    assert tom.post(f"/runs/{run.pk}/").status_code == 405
    assert tom.get("/runs/new/nope/").status_code == 404
    assert tom.get("/runs/999999/").status_code == 404


def test_the_launch_form_shows_field_errors_and_queues_nothing(tom):
    response = tom.post("/runs/new/countdown/", {"config_steps": "0"})
    assert response.status_code == 400
    assert "Ensure this value is greater than or equal to 1" in response.content.decode()
    assert Run.objects.count() == 0


def test_the_launch_form_maps_pydantic_errors_onto_fields(tom, people):
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("c.txt", b"a\n\nb\n"), name="c", user=people["tom"]
    )
    response = tom.post(
        "/runs/new/tokenizer/",
        {
            "input_corpus": [corpus.pk],
            "config_vocab_size": "512",
            "config_num_reserved_tokens": "256",
        },
    )
    assert response.status_code == 400
    form = response.context["form"]
    assert form.errors and Run.objects.count() == 0


def test_the_launch_form_queues_a_run_with_defaults(
    tom, people, django_capture_on_commit_callbacks
):
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("c.txt", b"a\n\nb\n"), name="c", user=people["tom"]
    )
    form_page = tom.get(f"/runs/new/tokenizer/?input_corpus={corpus.pk}").content.decode()
    assert f'value="{corpus.pk}" selected' in form_page
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = tom.post("/runs/new/tokenizer/", {"input_corpus": [corpus.pk]})
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.pk}/"
    assert run.config["vocab_size"] == 8192 and run.inputs == {"corpus": [corpus.pk]}
    assert len(callbacks) == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.jsonl", b'{"text": "ok"}\n{"txt": "no"}\n', "line 2"),
        ("c.jsonl", b'{"text": "ok"}\nnot json\n', "line 2"),
        ("c.txt", b"caf\xe9\n", "UTF-8"),
        ("c.txt", b"", "empty"),
        ("c.pdf", b"%PDF-1.4", ".txt or .jsonl"),
    ],
)
def test_a_bad_corpus_is_refused_with_a_clear_message_and_nothing_kept(tom, name, content, message):
    response = tom.post("/corpora/upload/", {"file": SimpleUploadedFile(name, content)})
    assert response.status_code == 400
    assert message.lower() in response.content.decode().lower()
    assert Artifact.objects.count() == 0


def test_a_good_corpus_is_stored_with_its_hash_and_counts(tom):
    lines = b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(5))
    response = tom.post(
        "/corpora/upload/", {"file": SimpleUploadedFile("d.jsonl.gz", gzip.compress(lines))}
    )
    artifact = Artifact.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/artifacts/{artifact.pk}/"
    assert artifact.meta["documents"] == 5 and artifact.meta["format"] == "jsonl.gz"
    assert (artifact.abspath() / "corpus.jsonl.gz").is_file()
    page = tom.get(f"/artifacts/{artifact.pk}/").content.decode()
    assert artifact.sha256 in page and "Train a tokenizer on it" in page


@override_settings(ORCHARD_MAX_UPLOAD_MB=1)
def test_an_upload_over_the_cap_gets_413_and_nothing_is_kept(tom):
    big = SimpleUploadedFile("big.txt", b"word " * 300_000)
    response = tom.post("/corpora/upload/", {"file": big})
    assert response.status_code == 413
    assert "1 MB upload limit" in response.content.decode()
    assert Artifact.objects.count() == 0
    api = tom.post("/api/corpora/", {"file": SimpleUploadedFile("big.txt", b"word " * 300_000)})
    assert api.status_code == 413


def test_pages_load_htmx_from_our_own_static_files_only(tom):
    body = tom.get("/runs/").content.decode()
    assert '<script src="/static/django_htmx/htmx.min.js' in body or "django_htmx/htmx" in body
    assert "://" not in "".join(
        line for line in body.splitlines() if "<script" in line or "stylesheet" in line
    )


def test_the_eta_extrapolates_from_progress_so_far(people):
    from datetime import timedelta

    from django.utils import timezone

    from training.views import _eta

    run = services.run_create(kind="countdown", config={}, inputs={}, user=people["tom"])
    assert _eta(run) is None  # queued: no estimate
    run.status, run.progress = RunStatus.RUNNING, 0.25
    run.started_at = timezone.now() - timedelta(seconds=60)
    assert timedelta(seconds=175) <= _eta(run) <= timedelta(seconds=185)


def test_the_run_page_shows_samples_from_the_latest_steps_side_by_side(tom, people):
    run = services.run_create(
        kind="countdown",
        config={"steps": 20, "checkpoint_every": 5, "step_seconds": 0},
        inputs={},
        user=people["tom"],
    )
    services.run_execute(run_id=run.pk)
    body = tom.get(f"/runs/{run.pk}/").content.decode()
    assert "step 10</th><th>step 15</th><th>step 20</th>" in body
    assert "after step 20" in body and "after step 5<" not in body


def folder_artifact(file_name: str, *, kind: str, parents: list, user, meta=None):
    """An artifact folder holding one empty JSON file, registered with its parents."""
    folder = services.artifacts_root() / f"tmp-{kind}"
    folder.mkdir()
    (folder / file_name).write_text("{}")
    return services.artifact_register_dir(
        source=folder, kind=kind, name=kind, run=None, parents=parents, user=user, meta=meta
    )


def test_the_checkpoint_registry_shows_lineage(tom, people):
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("c.txt", b"a\n\nb\n"), name="c", user=people["tom"]
    )
    tokenizer = folder_artifact(
        "tokenizer.json", kind="tokenizer", parents=[corpus], user=people["tom"]
    )
    checkpoint = folder_artifact(
        "config.json",
        kind="checkpoint",
        parents=[tokenizer],
        user=people["tom"],
        meta={"stage": "pretrain", "parameters": 1234567},
    )
    body = tom.get("/checkpoints/").content.decode()
    assert f"Corpus #{corpus.pk}</a> → " in body and f"Tokenizer #{tokenizer.pk}</a> → " in body
    assert f"<strong>#{checkpoint.pk}</strong>" in body and "1,234,567" in body
