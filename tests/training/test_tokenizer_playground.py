"""The tokenizer playground page: one or two tokenizers, per-character view, corpus sample."""

from __future__ import annotations

import shutil

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from training import services, uploads

pytestmark = pytest.mark.django_db


@pytest.fixture
def tokenizer(tiny_model_dir, people):
    staging = services.artifacts_root() / "staging-tok"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copy(tiny_model_dir / "tokenizer.json", staging / "tokenizer.json")
    return services.artifact_register_dir(
        source=staging, kind="tokenizer", name="apples", run=None, parents=[], user=people["tom"]
    )


def test_it_explains_an_empty_state(client_for):
    assert "No tokenizers yet" in client_for("lena").get("/tokenizers/playground/").content.decode()


def test_it_shows_tokens_ids_and_characters(client_for, tokenizer):
    from training.core.token_view import load_tokenizer

    response = client_for("lena").get(
        "/tokenizers/playground/", {"a": tokenizer.pk, "text": "document apples"}
    )
    assert response.status_code == 200
    ids = load_tokenizer(tokenizer.abspath()).encode("document apples").ids
    body = response.content.decode()
    assert f"<strong>{len(ids)}</strong> tokens for 15 characters" in body
    assert ", ".join(map(str, ids)) in body
    assert body.count('class="char-token') == len(ids)


def test_two_tokenizers_side_by_side_and_a_corpus_sample(client_for, tokenizer, people):
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("c.txt", b"document number 1 about apples\n\nmore apples\n"),
        name="c",
        user=people["tom"],
    )
    response = client_for("lena").get(
        "/tokenizers/playground/",
        {"a": tokenizer.pk, "b": tokenizer.pk, "corpus": corpus.pk, "text": "apples"},
        HTTP_HX_REQUEST="true",
    )
    body = response.content.decode()
    assert "<html" not in body  # the htmx partial only
    assert body.count('class="token-column"') == 2
    assert body.count("On a sample of the corpus") == 2


def test_unknown_tokenizer_is_a_400(client_for, tokenizer):
    assert client_for("lena").get("/tokenizers/playground/", {"a": 999999}).status_code == 400


def test_text_over_the_limit_is_refused(client_for, tokenizer):
    response = client_for("lena").get(
        "/tokenizers/playground/", {"a": tokenizer.pk, "text": "x" * 20_001}
    )
    assert response.status_code == 400
