"""Corpus reading: formats, document splitting, and errors that name the line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.core.corpus import (
    CorpusError,
    CorpusStats,
    corpus_format,
    iter_documents,
    iter_documents_with_offsets,
    validate_corpus,
)


def write(path: Path, content: str | bytes) -> Path:
    data = content.encode() if isinstance(content, str) else content
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz"])
def test_txt_blank_lines_separate_documents(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "first line\nstill first\n\n\n  \nsecond\n\nthird")
    assert list(iter_documents(path)) == ["first line\nstill first", "second", "third"]


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz"])
def test_txt_endoftext_marker_wins_over_blank_lines(tmp_path: Path, name: str) -> None:
    content = "one\n\nstill one<|endoftext|>\ntwo<|endoftext|><|endoftext|>three\nmore"
    path = write(tmp_path / name, content)
    assert list(iter_documents(path)) == ["one\n\nstill one", "two", "three\nmore"]


def test_txt_marker_at_the_end_leaves_no_empty_document(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "a<|endoftext|>\nb<|endoftext|>\n")
    assert list(iter_documents(path)) == ["a", "b"]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_jsonl_reads_text_fields_and_skips_blank_lines(tmp_path: Path, name: str) -> None:
    content = jsonl({"text": "alpha", "id": 1}, {"text": "naïve 日本語"}) + "\n   \n"
    content += jsonl({"text": "multi\nline"})
    path = write(tmp_path / name, content)
    assert list(iter_documents(path)) == ["alpha", "naïve 日本語", "multi\nline"]


def test_offsets_grow_to_the_stored_file_size(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "a\n\nb\n\nc\n")
    offsets = [offset for _text, offset in iter_documents_with_offsets(path)]
    assert offsets == sorted(offsets)
    assert offsets[-1] == path.stat().st_size


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", b"\xef\xbb\xbf" + jsonl({"text": "x"}).encode())
    assert list(iter_documents(path)) == ["x"]


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl", "c.txt.gz", "c.jsonl.gz"])
def test_validate_counts(tmp_path: Path, name: str) -> None:
    if ".jsonl" in name:
        content = jsonl({"text": "héllo"}, {"text": "world"})
    else:
        content = "héllo\n\nworld\n"
    path = write(tmp_path / name, content)
    stats = validate_corpus(path)
    assert stats == CorpusStats(
        format=name[2:], documents=2, characters=10, bytes=len(content.encode())
    )


@pytest.mark.parametrize("name", ["c.csv", "c.gz", "c.json", "c"])
def test_unsupported_file_type(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "x")
    with pytest.raises(CorpusError, match="unsupported corpus file type"):
        corpus_format(path)
    with pytest.raises(CorpusError, match="unsupported"):
        validate_corpus(path)


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ("{not json}", "not valid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"title": "no text"}', 'missing the "text" field'),
        ('{"text": 42}', '"text" must be a string, got int'),
        ('{"text": null}', '"text" must be a string, got NoneType'),
    ],
)
@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_jsonl_errors_name_the_line(tmp_path: Path, name: str, lines: str, problem: str) -> None:
    path = write(tmp_path / name, jsonl({"text": "ok"}) + "\n" + lines + "\n")
    with pytest.raises(CorpusError) as exc:
        validate_corpus(path)
    assert "line 3" in str(exc.value)
    assert problem in str(exc.value)
    assert name in str(exc.value)
    with pytest.raises(CorpusError, match="line 3"):
        list(iter_documents(path))


@pytest.mark.parametrize("name", ["c.txt", "c.jsonl"])
def test_invalid_utf8_names_the_line(tmp_path: Path, name: str) -> None:
    good = jsonl({"text": "ok"}) if name.endswith(".jsonl") else "ok\n"
    path = write(tmp_path / name, good.encode() * 2 + b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"line 3: invalid UTF-8"):
        validate_corpus(path)
    with pytest.raises(CorpusError, match=r"line 3: invalid UTF-8"):
        list(iter_documents(path))


def test_validate_collects_several_problems_up_to_max_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", "oops\n" * 10)
    with pytest.raises(CorpusError) as exc:
        validate_corpus(path, max_errors=3)
    message = str(exc.value)
    assert "3 problems" in message
    assert all(f"line {n}:" in message for n in (1, 2, 3))
    assert "line 4:" not in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("c.txt", ""),
        ("c.txt", "\n\n   \n"),
        ("c.txt", "<|endoftext|>\n<|endoftext|>"),
        ("c.jsonl", "\n"),
        ("c.jsonl", jsonl({"text": ""}, {"text": "  "})),
        ("c.txt.gz", ""),
    ],
)
def test_empty_corpus_is_an_error(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(CorpusError, match="no documents"):
        validate_corpus(path)


def test_corrupt_gzip_is_a_corpus_error(tmp_path: Path) -> None:
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"hello\n" * 1000)[:-20])
    with pytest.raises(CorpusError, match="cannot read"):
        validate_corpus(path)
