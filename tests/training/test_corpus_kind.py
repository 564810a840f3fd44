"""Web data → corpus run → inspector → spot checks → tokenizer, in-process on real WARC files."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import SHARED_DATA
from training import services, uploads
from training.models import Artifact, Run, SpotCheck

pytestmark = pytest.mark.django_db

WARCS = ["dolma_sample-0001.warc.gz", "resiliparse_cc_warcfile.warc.gz"]


@pytest.fixture
def corpus_version(people):
    sources = [
        uploads.upload(
            fmt=uploads.WEBDATA,
            uploaded=SimpleUploadedFile(name, (SHARED_DATA / "web" / "warc" / name).read_bytes()),
            name=name,
            user=people["tom"],
        )
        for name in WARCS
    ]
    run = services.run_create(
        kind="corpus",
        config={"workers": 1},
        inputs={"sources": [s.pk for s in sources]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=run.pk) == "succeeded", Run.objects.get(pk=run.pk).error
    return Artifact.objects.get(run=run)


def test_the_corpus_run_keeps_clean_english_and_records_why_others_went(corpus_version):
    meta = corpus_version.meta
    assert corpus_version.kind == "corpus" and meta["stage"] == "corpus"
    assert 0 < meta["documents_kept"] < meta["documents_in"]
    assert meta["characters"] > 0


def test_the_inspector_shows_the_funnel_and_dropped_documents_with_reasons(
    client_for, corpus_version
):
    page = client_for("tom").get(f"/artifacts/{corpus_version.pk}/inspect/")
    body = page.content.decode()
    assert page.status_code == 200 and "Documents reaching each stage" in body
    assert "language" in body  # the zh/ru pages fail language ID
    rows = page.context["rows"]
    assert rows and all(row["stage"] and row["reason"] for row in rows)
    kept = client_for("tom").get(f"/artifacts/{corpus_version.pk}/inspect/?view=kept")
    assert kept.context["rows"] and all(r.get("text") for r in kept.context["rows"])


def test_search_and_stage_filters_narrow_the_list(client_for, corpus_version):
    client = client_for("tom")
    stage = client.get(f"/artifacts/{corpus_version.pk}/inspect/").context["rows"][0]["stage"]
    filtered = client.get(f"/artifacts/{corpus_version.pk}/inspect/?stage={stage}")
    assert all(r["stage"] == stage for r in filtered.context["rows"])
    nothing = client.get(f"/artifacts/{corpus_version.pk}/inspect/?view=kept&q=zzqqxxnothing")
    assert nothing.context["rows"] == [] and "No kept documents match" in nothing.content.decode()


def test_a_reviewer_spot_checks_documents_and_sees_precision(client_for, corpus_version):
    rita = client_for("rita")  # a reviewer: may inspect and judge, not launch runs
    first = rita.get(f"/artifacts/{corpus_version.pk}/inspect/?random=1")
    assert first.status_code == 302 and "/inspect/document/?id=" in first["Location"]
    document = rita.get(first["Location"])
    body = document.content.decode()
    assert document.status_code == 200 and "Extracted text" in body and "Raw HTML" in body
    assert "<script" not in body.split("Raw HTML")[1].split("Extracted text")[0].replace(
        "&lt;script", ""
    )
    saved = rita.post(first["Location"], {"correct": "1", "note": "fine"})
    assert saved.status_code == 302 and saved["Location"].endswith("?random=1")
    check = SpotCheck.objects.get()
    assert check.correct and check.reviewer.username == "rita"
    rita.post(first["Location"], {"correct": "0"})  # changing one's mind updates, never doubles
    assert SpotCheck.objects.count() == 1 and not SpotCheck.objects.get().correct
    inspector = rita.get(f"/artifacts/{corpus_version.pk}/inspect/").content.decode()
    assert "0.00 (0/1)" in inspector


def test_a_tokenizer_trains_on_the_corpus_version(people, corpus_version):
    run = services.run_create(
        kind="tokenizer",
        config={"vocab_size": 512},
        inputs={"corpus": [corpus_version.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=run.pk) == "succeeded", Run.objects.get(pk=run.pk).error


def test_an_uploaded_text_corpus_has_nothing_to_inspect(client_for, people):
    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("c.txt", b"a\n\nb\n"), name="c", user=people["tom"]
    )
    assert client_for("tom").get(f"/artifacts/{corpus.pk}/inspect/").status_code == 404


def test_a_blocklist_is_uploaded_and_used_by_a_corpus_run(client_for, people):
    response = client_for("tom").post(
        "/blocklists/upload/",
        {"file": SimpleUploadedFile("mine.txt", b"# my list\nallenai.org\ncreativecommons.org\n")},
    )
    blocklist = Artifact.objects.get(kind="blocklist")
    assert response.status_code == 302 and blocklist.meta["documents"] == 2
    bad = client_for("tom").post(
        "/blocklists/upload/", {"file": SimpleUploadedFile("bad.txt", b"not a domain at all\n")}
    )
    assert bad.status_code == 400 and "line 1" in bad.content.decode()
    source = uploads.upload(
        fmt=uploads.WEBDATA,
        uploaded=SimpleUploadedFile(WARCS[0], (SHARED_DATA / "web/warc" / WARCS[0]).read_bytes()),
        name="dolma",
        user=people["tom"],
    )
    run = services.run_create(
        kind="corpus",
        config={"workers": 1},
        inputs={"sources": [source.pk], "url_blocklists": [blocklist.pk]},
        user=people["tom"],
    )
    assert services.run_execute(run_id=run.pk) == "succeeded", Run.objects.get(pk=run.pk).error
    run.refresh_from_db()
    url_row = next(r for r in run.result["funnel"] if r["stage"] == "url_filter")
    assert url_row["dropped"] > 0


def test_tokens_are_counted_once_a_tokenizer_is_chosen(client_for, people, corpus_version):
    from training.core.token_view import load_tokenizer

    run = services.run_create(
        kind="tokenizer",
        config={"vocab_size": 512},
        inputs={"corpus": [corpus_version.pk]},
        user=people["tom"],
    )
    services.run_execute(run_id=run.pk)
    tokenizer = Artifact.objects.get(run=run)
    response = client_for("tom").post(
        f"/artifacts/{corpus_version.pk}/inspect/tokens/", {"tokenizer": tokenizer.pk}, follow=True
    )
    corpus_version.refresh_from_db()
    counted = corpus_version.meta["tokens"][str(tokenizer.pk)]["tokens"]
    kept = client_for("tom").get(f"/artifacts/{corpus_version.pk}/inspect/?view=kept")
    texts = [row["text"] for row in kept.context["rows"]]
    expected = sum(
        len(load_tokenizer(tokenizer.abspath()).encode(t, add_special_tokens=False).ids)
        for t in texts
    )
    assert not kept.context["more"]  # every kept document is on this first page
    assert counted == expected
    assert f"{counted:,} tokens with" in response.content.decode()


def test_word_lists_are_uploaded_on_the_launch_form(client_for, people):
    source = uploads.upload(
        fmt=uploads.WEBDATA,
        uploaded=SimpleUploadedFile(WARCS[0], (SHARED_DATA / "web/warc" / WARCS[0]).read_bytes()),
        name="dolma",
        user=people["tom"],
    )
    tom = client_for("tom")
    form = tom.get("/runs/new/corpus/").content.decode()
    assert 'enctype="multipart/form-data"' in form and 'name="upload_url_banned_words"' in form
    assert '<textarea name="config_url_banned_words"' in form  # one entry per line

    published = SHARED_DATA / "url_filter" / "datatrove_banned_words.txt"
    response = tom.post(
        "/runs/new/corpus/",
        {
            "input_sources": [source.pk],
            "config_url_banned_words": "typedword\n",
            "upload_url_banned_words": SimpleUploadedFile("words.txt", published.read_bytes()),
        },
    )
    assert response.status_code == 302
    words = Run.objects.get(kind="corpus").config["url_banned_words"].splitlines()
    assert words[0] == "typedword"
    assert words[1:] == [line.rstrip() for line in published.read_text().splitlines()]

    # A file that is not a text list is refused with the reason; what was typed stays.
    for content, reason in [
        (b"\xff\xfe\x00bad", "not UTF-8 text"),
        (b"x" * ((1 << 20) + 1), "lists up to"),
    ]:
        refused = tom.post(
            "/runs/new/corpus/",
            {
                "input_sources": [source.pk],
                "config_url_soft_banned_words": "keep me",
                "upload_url_soft_banned_words": SimpleUploadedFile("w.txt", content),
            },
        )
        page = refused.content.decode()
        assert refused.status_code == 400 and reason in page and "keep me" in page
    assert Run.objects.filter(kind="corpus").count() == 1
