"""Raw web data in: WARC and friends uploaded or taken from the import folder, validated first."""

from __future__ import annotations

import gzip
import shutil

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import SHARED_DATA
from training.models import Artifact

pytestmark = pytest.mark.django_db

WARC = SHARED_DATA / "web" / "warc" / "whirlwind.warc.gz"


def test_a_real_warc_is_stored_with_its_document_count(client_for):
    response = client_for("tom").post(
        "/webdata/upload/", {"file": SimpleUploadedFile(WARC.name, WARC.read_bytes())}
    )
    artifact = Artifact.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/artifacts/{artifact.pk}/"
    assert artifact.kind == "webdata" and artifact.meta["format"] == "warc"
    assert artifact.meta["documents"] == 1 and artifact.meta["origin"] == "upload"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cut.warc.gz", WARC.read_bytes()[:-100], "compressed file ended"),
        ("empty.warc", b"", "empty"),
        ("page.pdf", b"%PDF", "expected warc"),
        ("notes.txt", b"caf\xe9 au lait\n", "utf-8"),
    ],
)
def test_bad_web_data_is_refused_clearly_and_nothing_kept(client_for, name, content, message):
    response = client_for("tom").post(
        "/webdata/upload/", {"file": SimpleUploadedFile(name, content)}
    )
    assert response.status_code == 400
    assert message in response.content.decode().lower()
    assert not Artifact.objects.exists()


def test_a_warc_without_html_is_refused(client_for, tmp_path):
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "meta.warc.gz"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        record = writer.create_warc_record(
            "https://example.org/", "metadata", payload=__import__("io").BytesIO(b"k: v\n")
        )
        writer.write_record(record)
    response = client_for("tom").post(
        "/webdata/upload/", {"file": SimpleUploadedFile(path.name, path.read_bytes())}
    )
    assert response.status_code == 400 and not Artifact.objects.exists()


def test_a_file_from_the_import_folder_is_copied_in(client_for, settings, tmp_path):
    settings.IMPORT_ROOT = tmp_path / "import"
    (settings.IMPORT_ROOT / "crawl").mkdir(parents=True)
    shutil.copy(WARC, settings.IMPORT_ROOT / "crawl" / WARC.name)
    page = client_for("tom").get("/webdata/upload/").content.decode()
    assert f"crawl/{WARC.name}" in page
    response = client_for("tom").post("/webdata/upload/", {"server_file": f"crawl/{WARC.name}"})
    artifact = Artifact.objects.get()
    assert response.status_code == 302 and artifact.meta["origin"] == f"import:crawl/{WARC.name}"
    assert gzip.decompress((artifact.abspath() / "webdata.warc.gz").read_bytes())


def test_choosing_both_an_upload_and_a_server_file_is_refused(client_for, settings, tmp_path):
    settings.IMPORT_ROOT = tmp_path / "import"
    settings.IMPORT_ROOT.mkdir()
    shutil.copy(WARC, settings.IMPORT_ROOT / WARC.name)
    response = client_for("tom").post(
        "/webdata/upload/",
        {"server_file": WARC.name, "file": SimpleUploadedFile(WARC.name, WARC.read_bytes())},
    )
    assert response.status_code == 400 and "not both" in response.content.decode()
