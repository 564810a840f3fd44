"""Reading text corpora: shared by the tokenizer stage and pretraining.

Supported files, chosen by name:

- ``.txt``: plain UTF-8 text. If the file contains the ``<|endoftext|>`` marker anywhere, documents
  are the pieces between markers (a trailing piece after the last marker is a document too);
  otherwise documents are separated by one or more blank lines.
- ``.jsonl``: one JSON object per line with a string ``text`` field; blank lines are skipped.
- either of the above compressed with gzip (``.txt.gz``, ``.jsonl.gz``).
- a corpus version: the folder the ``corpus`` stage writes (see :mod:`training.core.pipeline.run`).
  Its documents are the ``text`` fields of ``shards/kept-*.jsonl.gz``, shards in name order.

Plain-text documents lose their surrounding line breaks; JSONL texts are kept exactly. Empty or
whitespace-only documents are dropped.

Everything streams: memory is bounded by the longest line (at most ``MAX_LINE_BYTES``; longer lines
are an error) and the longest document (plain-text documents longer than ``MAX_DOCUMENT_CHARS`` are
cut into pieces at line boundaries). Deciding how a ``.txt`` file is split needs one extra pass that
stops at the first ``<|endoftext|>``.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

END_OF_TEXT = "<|endoftext|>"
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
CORPUS_VERSION_FORMAT = "corpus"
SHARD_GLOB = "shards/kept-*.jsonl.gz"
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENT_CHARS = 16 * 1024 * 1024
_CHUNK_BYTES = 1024 * 1024


class CorpusError(ValueError):
    """A corpus file that cannot be read: unsupported name, bad encoding, bad JSON, no documents."""


@dataclass(frozen=True)
class CorpusStats:
    """What a full pass over a corpus file found.

    ``bytes`` counts the uncompressed content (for ``.gz`` files this differs from the file size);
    ``characters`` counts the characters of the documents themselves.
    """

    format: str
    documents: int
    characters: int
    bytes: int


def corpus_format(path: Path) -> str:
    """``"txt"``, ``"jsonl"``, ``"txt.gz"``, ``"jsonl.gz"`` or ``"corpus"`` (a corpus-version
    folder); CorpusError for anything else."""
    if path.is_dir():
        if not (path / "shards").is_dir():
            raise CorpusError(
                f"{path.name}: a folder, but not a corpus version (it has no shards/ folder)"
            )
        return CORPUS_VERSION_FORMAT
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix[1:]
    supported = ", ".join(SUPPORTED_SUFFIXES)
    raise CorpusError(f"{path.name}: unsupported corpus file type (expected one of {supported})")


def corpus_shards(path: Path) -> list[Path]:
    """The files holding a corpus's documents: the file itself, or a corpus version's shards."""
    if corpus_format(path) == CORPUS_VERSION_FORMAT:
        return sorted(path.glob(SHARD_GLOB))
    return [path]


def stored_size(path: Path) -> int:
    """Bytes of the corpus as stored (all shards of a corpus version): the progress total."""
    return sum(shard.stat().st_size for shard in corpus_shards(path))


def iter_documents(path: Path) -> Iterator[str]:
    """Stream the documents of a corpus file; CorpusError at the first bad line."""
    for text, _offset in iter_documents_with_offsets(path):
        yield text


def iter_documents_with_offsets(path: Path) -> Iterator[tuple[str, int]]:
    """Like :func:`iter_documents`, with the bytes of the file (as stored) consumed so far.

    The offset lets callers report progress against the file size (:func:`stored_size`), which
    is known up front even for compressed files and corpus versions.
    """
    sink = _ErrorSink(path, limit=1)
    yield from _documents(path, sink)


def validate_corpus(path: Path, max_errors: int = 5) -> CorpusStats:
    """Read the whole file once and describe it, or raise CorpusError listing what is wrong.

    Up to ``max_errors`` bad lines are collected (each named by line number) before giving up, so
    an upload form can show several problems at once. A file without documents is an error too.
    """
    fmt = corpus_format(path)
    sink = _ErrorSink(path, limit=max(1, max_errors))
    documents = characters = 0
    for text, _offset in _documents(path, sink):
        documents += 1
        characters += len(text)
    sink.raise_if_any()
    if documents == 0:
        raise CorpusError(f"{path.name}: the corpus contains no documents")
    return CorpusStats(format=fmt, documents=documents, characters=characters, bytes=sink.bytes)


class _ErrorSink:
    """Where problems with single lines go.

    Iteration uses ``limit=1`` (raise at the first problem); validation collects up to ``limit``
    problems, skipping the bad lines, so one pass reports several at once.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.problems: list[str] = []
        self.bytes = 0  # uncompressed bytes seen, for CorpusStats

    def report(self, lineno: int, problem: str) -> None:
        self.problems.append(f"line {lineno}: {problem}")
        if len(self.problems) >= self.limit:
            self.raise_if_any()

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise CorpusError(f"{self.path.name}: {self.problems[0]}")
        more = ", there may be more" if len(self.problems) >= self.limit else ""
        listed = "; ".join(self.problems)
        raise CorpusError(f"{self.path.name}: {len(self.problems)} problems{more}: {listed}")


def iter_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any], int]]:
    """``(line number, record, stored offset)`` for each record of a ``.jsonl``/``.jsonl.gz`` file
    with a non-blank string ``text``; CorpusError at the first bad line, as for documents."""
    yield from _jsonl_records(path, _ErrorSink(path, limit=1))


def _documents(path: Path, sink: _ErrorSink) -> Iterator[tuple[str, int]]:
    fmt = corpus_format(path)
    if fmt == CORPUS_VERSION_FORMAT:
        return _corpus_version_documents(path, sink)
    if fmt.startswith("jsonl"):
        return _jsonl_documents(path, sink)
    if _contains_marker(path):
        return _marker_documents(path, sink)
    return _paragraph_documents(path, sink)


@contextmanager
def _open_binary(path: Path) -> Iterator[tuple[BinaryIO, Callable[[], int]]]:
    """The decompressed byte stream and a function giving the position in the stored file."""
    with open(path, "rb") as raw:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped, raw.tell
        else:
            yield raw, raw.tell


def _contains_marker(path: Path) -> bool:
    """Whether ``<|endoftext|>`` occurs anywhere; stops reading at the first occurrence."""
    marker = END_OF_TEXT.encode()
    tail = b""
    try:
        with _open_binary(path) as (stream, _tell):
            while chunk := stream.read(_CHUNK_BYTES):
                # Keep the last few bytes so a marker split across two chunks is still found.
                window = tail + chunk
                if marker in window:
                    return True
                tail = window[-(len(marker) - 1) :]
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(f"{path.name}: cannot read the file ({exc})") from exc
    return False


def _lines(path: Path, sink: _ErrorSink) -> Iterator[tuple[int, str, int]]:
    """Decoded lines as ``(line number, text with its newline, stored-file offset)``.

    A line is decoded on its own: a newline byte never occurs inside a multi-byte UTF-8 sequence,
    so an encoding error is always pinned to one line. Bad lines go to ``sink`` and are skipped.
    """
    lineno = 0
    try:
        with _open_binary(path) as (stream, tell):
            while raw := stream.readline(MAX_LINE_BYTES + 1):
                lineno += 1
                sink.bytes += len(raw)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    sink.bytes += _skip_rest_of_line(stream)
                    sink.report(lineno, f"longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB")
                    continue
                if lineno == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    sink.report(lineno, f"invalid UTF-8 at byte {exc.start + 1} of the line")
                    continue
                yield lineno, text, tell()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(f"{path.name}: cannot read the file after line {lineno} ({exc})") from exc


def _skip_rest_of_line(stream: BinaryIO) -> int:
    skipped = 0
    while chunk := stream.readline(_CHUNK_BYTES):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _corpus_version_documents(path: Path, sink: _ErrorSink) -> Iterator[tuple[str, int]]:
    """The kept documents of every shard; offsets run on across shards."""
    done = 0
    for shard in corpus_shards(path):
        sink.path = shard  # errors name the shard
        for text, offset in _jsonl_documents(shard, sink):
            yield text, done + offset
        done += shard.stat().st_size


def _jsonl_documents(path: Path, sink: _ErrorSink) -> Iterator[tuple[str, int]]:
    for _lineno, record, offset in _jsonl_records(path, sink):
        yield record["text"], offset


def _jsonl_records(path: Path, sink: _ErrorSink) -> Iterator[tuple[int, dict[str, Any], int]]:
    for lineno, line, offset in _lines(path, sink):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            sink.report(lineno, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            sink.report(lineno, f"expected a JSON object, got {type(record).__name__}")
            continue
        if "text" not in record:
            sink.report(lineno, 'missing the "text" field')
            continue
        text = record["text"]
        if not isinstance(text, str):
            sink.report(lineno, f'"text" must be a string, got {type(text).__name__}')
            continue
        if text.strip():
            yield lineno, record, offset


def _marker_documents(path: Path, sink: _ErrorSink) -> Iterator[tuple[str, int]]:
    parts: list[str] = []
    size = 0
    offset = 0
    for _lineno, line, offset in _lines(path, sink):
        *finished, rest = line.split(END_OF_TEXT)
        for piece in finished:
            parts.append(piece)
            yield from _emit(parts, offset)
            parts, size = [], 0
        parts.append(rest)
        size += len(rest)
        if size > MAX_DOCUMENT_CHARS:
            yield from _emit(parts, offset)
            parts, size = [], 0
    yield from _emit(parts, offset)


def _paragraph_documents(path: Path, sink: _ErrorSink) -> Iterator[tuple[str, int]]:
    parts: list[str] = []
    size = 0
    offset = 0
    for _lineno, line, offset in _lines(path, sink):
        if not line.strip():
            yield from _emit(parts, offset)
            parts, size = [], 0
            continue
        parts.append(line)
        size += len(line)
        if size > MAX_DOCUMENT_CHARS:
            yield from _emit(parts, offset)
            parts, size = [], 0
    yield from _emit(parts, offset)


def _emit(parts: list[str], offset: int) -> Iterator[tuple[str, int]]:
    """Yield the joined document unless it is blank."""
    text = "".join(parts).strip("\r\n")
    if text.strip():
        yield text, offset
