"""Reading web data: WARC/WET records, HTML files and zips, JSONL, text; and refusing bad files."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from tests.core.pipeline.helpers import WARC_DIR, Record, article, html_record, page, write_warc
from training.core.pipeline.sources import (
    SourceError,
    decode_html,
    iter_documents,
    looks_like_html,
    source_format,
    validate_source,
)


def documents(path: Path) -> list[dict]:
    return [doc for doc, _offset in iter_documents(path)]


def test_warc_responses_become_pages_and_other_records_are_ignored(tmp_path: Path) -> None:
    html = page(article(1))
    path = write_warc(
        tmp_path / "crawl.warc.gz",
        [
            html_record("https://example.org/a", html),
            html_record(
                "https://example.org/logo.png",
                b"\x89PNG...".decode("latin-1"),
                content_type="image/png",
                payload_type="image/png",
            ),
        ],
    )
    docs = documents(path)
    # warcinfo and request records are not documents; the image is a counted skip
    assert [d.get("skip") for d in docs] == [None, "not_html"]
    first = docs[0]
    assert first["html"] == html
    assert first["url"] == "https://example.org/a"
    assert first["source"] == "crawl.warc.gz"
    assert first["id"].startswith("<urn:uuid:")
    assert docs[1]["detail"] == "image/png"


@pytest.mark.parametrize("gzip_records", [True, False])
def test_missing_payload_type_is_sniffed(tmp_path: Path, gzip_records: bool) -> None:
    name = "wget.warc.gz" if gzip_records else "wget.warc"
    path = write_warc(
        tmp_path / name,
        [
            html_record("https://example.org/page", page(article(2)), payload_type=None),
            Record("https://example.org/data.json", b'{"a": 1}', "application/json", None),
        ],
        gzip=gzip_records,
    )
    docs = documents(path)
    assert "html" in docs[0]
    assert docs[1]["skip"] == "not_html"


def test_charset_comes_from_the_header_then_detection(tmp_path: Path) -> None:
    russian = page("Привет, мир. " * 40, lang="ru").replace('charset="utf-8"', "")
    chinese = page("你好，世界。今天天气很好，我们去公园散步吧。" * 20, lang="zh")
    chinese = chinese.replace('<meta charset="utf-8">', "")
    path = write_warc(
        tmp_path / "charsets.warc.gz",
        [
            Record("http://a.ru/", russian.encode("cp1251"), "text/html; charset=windows-1251"),
            Record("http://b.cn/", chinese.encode("gb18030"), "text/html"),  # no charset given
            # bytes that are not UTF-8, and undefined in windows-1252 too
            Record("http://c.org/", b"<html>" + b"\x81\x8d\x8f\x90\x9d" * 50, "text/html"),
        ],
    )
    docs = documents(path)
    assert "Привет, мир." in docs[0]["html"]
    assert "今天天气很好" in docs[1]["html"]
    assert docs[2]["skip"] == "undecodable"


def test_decode_html_prefers_valid_utf8_and_maps_latin1_to_windows_1252() -> None:
    assert decode_html("naïve".encode()) == "naïve"
    assert decode_html("“quoted”".encode("cp1252"), "iso-8859-1") == "“quoted”"
    assert decode_html(b"\xef\xbb\xbfbom") == "bom"


def test_sniffing() -> None:
    assert looks_like_html(b"  <!DOCTYPE html><html>")
    assert looks_like_html(b"<?xml version='1.0'?><html xmlns='x'>")
    assert not looks_like_html(b"%PDF-1.4 binary")
    assert not looks_like_html(b'{"json": true}')


def test_wet_conversion_records_are_text(tmp_path: Path) -> None:
    path = write_warc(
        tmp_path / "x.warc.wet.gz",
        [Record("https://example.org/", article(3).encode(), record_type="conversion")],
    )
    (doc,) = documents(path)
    assert doc["text"] == article(3)
    assert doc["url"] == "https://example.org/"


def test_shared_warcs() -> None:
    """Real files: charsets of the Common Crawl WARC, wget WARC without payload types, gzip
    content encoding in warcio's example, a WET file and a WAT file without documents."""
    cc = documents(WARC_DIR / "resiliparse_cc_warcfile.warc.gz")
    assert len(cc) == 16 and all("html" in d for d in cc)
    russian = next(d for d in cc if d["url"] == "http://01spb.ru/company/")
    assert "Компания" in russian["html"] or "компании" in russian["html"]

    wget = documents(WARC_DIR / "dolma_sample-0000.warc.gz")
    assert len(wget) == 22 and all("html" in d for d in wget)
    assert all(d["url"].startswith("https://") for d in wget)  # angle brackets stripped

    (example,) = documents(WARC_DIR / "warcio_example.warc.gz")  # the revisit record is skipped
    assert "Example Domain" in example["html"]  # payload was gzip content-encoded

    (wet,) = documents(WARC_DIR / "whirlwind.warc.wet.gz")
    assert "Escopete" in wet["text"]
    with pytest.raises(SourceError, match="no HTML responses or WET text records found"):
        validate_source(WARC_DIR / "whirlwind.warc.wat.gz")


def test_html_file_gz_and_zip(tmp_path: Path) -> None:
    html = page(article(4))
    (tmp_path / "one.html").write_text(html)
    (tmp_path / "two.htm.gz").write_bytes(gzip.compress(html.encode()))
    with zipfile.ZipFile(tmp_path / "site.zip", "w") as archive:
        archive.writestr("a/index.html", html)
        archive.writestr("a/logo.png", b"\x89PNG")
        archive.writestr("b/page.HTM", html)
    assert documents(tmp_path / "one.html")[0] == {
        "id": "one.html",
        "url": None,
        "source": "one.html",
        "html": html,
    }
    assert documents(tmp_path / "two.htm.gz")[0]["html"] == html
    docs = documents(tmp_path / "site.zip")
    assert [d["id"] for d in docs] == [
        "site.zip/a/index.html",
        "site.zip/a/logo.png",
        "site.zip/b/page.HTM",
    ]
    assert docs[1]["skip"] == "not_html"
    stats = validate_source(tmp_path / "site.zip")
    assert (stats.format, stats.documents, stats.skipped) == ("zip", 2, {"not_html": 1})


def test_jsonl_and_text(tmp_path: Path) -> None:
    rows = [{"text": "first", "url": "https://a.org/", "id": 7}, {"text": "second"}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = documents(tmp_path / "docs.jsonl")
    assert docs[0] == {"id": "7", "url": "https://a.org/", "source": "docs.jsonl", "text": "first"}
    assert docs[1]["id"] == "docs.jsonl:2" and docs[1]["url"] is None

    (tmp_path / "book.txt").write_text("one<|endoftext|>two")
    assert [d["text"] for d in documents(tmp_path / "book.txt")] == ["one", "two"]


def test_offsets_reach_the_stored_size(tmp_path: Path) -> None:
    path = write_warc(
        tmp_path / "c.warc.gz",
        [html_record(f"https://e.org/{i}", page(article(i))) for i in range(3)],
    )
    offsets = [offset for _doc, offset in iter_documents(path)]
    assert offsets == sorted(offsets)
    assert 0 < offsets[-1] <= path.stat().st_size


# --- bad input: a clear SourceError ------------------------------------------------------------


def test_truncated_gzip(tmp_path: Path) -> None:
    path = write_warc(
        tmp_path / "c.warc.gz",
        [html_record(f"https://e.org/{i}", page(article(i))) for i in range(5)],
    )
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(SourceError, match=r"cut\.warc\.gz: cannot read the file .*ended"):
        validate_source(cut)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    with pytest.raises(SourceError, match="empty.warc.gz: the file is empty"):
        validate_source(tmp_path / "empty.warc.gz")


def test_non_utf8_text_file(tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("ok\n\ncafé\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"latin.txt: line 3: invalid UTF-8"):
        validate_source(tmp_path / "latin.txt")


def test_warc_without_html_reports_what_it_skipped(tmp_path: Path) -> None:
    path = write_warc(
        tmp_path / "images.warc.gz",
        [Record(f"https://e.org/{i}.png", b"\x89PNG", "image/png", "image/png") for i in range(3)],
    )
    with pytest.raises(
        SourceError, match=r"no HTML responses .* \(3 records skipped: 3 not html\)"
    ):
        validate_source(path)


def test_not_a_warc_and_zip_without_html(tmp_path: Path) -> None:
    (tmp_path / "fake.warc").write_text("not-a-warc-file\n")
    with pytest.raises(SourceError, match="not a readable WARC file"):
        validate_source(tmp_path / "fake.warc")
    with zipfile.ZipFile(tmp_path / "pics.zip", "w") as archive:
        archive.writestr("a.png", b"\x89PNG")
    with pytest.raises(SourceError, match=r"no \.html or \.htm files found \(1 records skipped"):
        validate_source(tmp_path / "pics.zip")
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SourceError, match="bad.zip: cannot read the file"):
        validate_source(tmp_path / "bad.zip")


def test_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unsupported source file type"):
        source_format(tmp_path / "data.csv")


def test_lone_surrogates_in_jsonl_are_replaced(tmp_path: Path) -> None:
    (tmp_path / "odd.jsonl").write_text('{"text": "ok \\ud800 there"}\n')
    (doc,) = documents(tmp_path / "odd.jsonl")
    assert doc["text"] == "ok ? there"
