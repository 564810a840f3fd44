"""Reading web data: documents out of WARC, WET, HTML, zip, JSONL and plain-text files.

Every reader yields ``(document, offset)``: ``offset`` is how many bytes of the file (as stored,
compressed or not) have been consumed, for progress reports. A document is a dict with ``id``,
``url`` (``None`` when unknown), ``source`` (the file name) and one of

- ``html``: a web page, still to be extracted;
- ``text``: text that needs no extraction (WET, JSONL, plain text);
- ``skip``: a record that carries no usable document, with the reason (``not_html``, ``too_large``,
  ``undecodable``) and ``detail``. They are passed on so the run can count them in its funnel.

Formats, chosen by file name:

- ``.warc``, ``.warc.gz`` (and ``.wet``/``.wat`` likewise): WARC files, read with warcio (which
  undoes chunked transfer and gzip/deflate/brotli content encoding; fastwarc does not).
  ``response`` records are web pages when ``WARC-Identified-Payload-Type`` is ``text/html`` or
  ``application/xhtml+xml``; when that header is missing (older crawls, wget) the payload itself
  is sniffed for HTML tags (datatrove uses libmagic; a tag check needs no system library).
  ``conversion`` records (WET) are text. ``request``, ``metadata``, ``revisit`` and other records
  are not documents and are not counted. id = ``WARC-Record-ID``, url = ``WARC-Target-URI``.
  Payloads over 32 MiB (after decoding) are skipped as ``too_large``.
- ``.html``, ``.htm`` (optionally ``.gz``): one page; id and source are the file name.
- ``.zip``: every ``.html``/``.htm`` member is a page (id ``archive.zip/member``); other members
  are skipped as ``not_html``.
- ``.jsonl`` (optionally ``.gz``): one object per line with a string ``text`` and optional ``url``
  and ``id`` (default ``file:line``).
- ``.txt`` (optionally ``.gz``): documents split as for the tokenizer (``<|endoftext|>`` markers,
  else blank lines; see :mod:`training.core.corpus`); id ``file:n``.

Decoding a page: strict UTF-8 first (valid UTF-8 with non-ASCII bytes is practically never
anything else), then the charset from the HTTP ``Content-Type`` header, then the ``<meta>``
charset or uchardet detection (resiliparse); names are mapped as browsers do (gb2312 -> gb18030,
latin-1 -> windows-1252). A page none of them decodes is skipped as ``undecodable``.

Gzip files are decompressed with Python's gzip module and a decompression error (a truncated or
corrupt file) is raised once reading stops, instead of ending early without notice (warcio
takes it for the end of the file).
"""

from __future__ import annotations

import codecs
import gzip
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from isal import igzip, isal_zlib

from training.core.corpus import CorpusError, iter_documents_with_offsets, iter_json_records

Document = dict[str, Any]

FORMATS = {
    ".warc": "warc",
    ".warc.gz": "warc",
    ".wet": "warc",
    ".wet.gz": "warc",
    ".wat": "warc",
    ".wat.gz": "warc",
    ".html": "html",
    ".htm": "html",
    ".html.gz": "html",
    ".htm.gz": "html",
    ".zip": "zip",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".txt": "text",
    ".txt.gz": "text",
}
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024  # larger pages are skipped (they are rarely articles)
SNIFF_BYTES = 4096
_HTML_TAG = re.compile(rb"<(?:!doctype\s+html|html|head|body|title|meta\s|script|div|p\b)", re.I)
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.I)
# Labels browsers decode with a wider code page (WHATWG encoding standard).
_WIDER_CODEC = {
    "ascii": "cp1252",
    "latin-1": "cp1252",
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
    "iso8859-9": "cp1254",
    "tis-620": "cp874",
    "iso8859-11": "cp874",
}


class SourceError(CorpusError):
    """A source file that cannot be used: unsupported, empty, corrupt, or without documents."""


@dataclass(frozen=True)
class SourceStats:
    """What a full pass over a source file found."""

    format: str
    documents: int
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0


def source_format(path: Path) -> str:
    """``warc``, ``html``, ``zip``, ``jsonl`` or ``text``; SourceError for anything else."""
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    known = ", ".join(sorted(FORMATS))
    raise SourceError(f"{path.name}: unsupported source file type (expected one of {known})")


def iter_documents(path: Path) -> Iterator[tuple[Document, int]]:
    """Stream the documents of one source file; SourceError when the file is unreadable."""
    readers: dict[str, Callable[[Path], Iterator[tuple[Document, int]]]] = {
        "warc": _warc_documents,
        "html": _html_file_documents,
        "zip": _zip_documents,
        "jsonl": _jsonl_documents,
        "text": _text_documents,
    }
    reader = readers[source_format(path)]
    if not path.is_file():
        raise SourceError(f"source file not found: {path}")
    if path.stat().st_size == 0:
        raise SourceError(f"{path.name}: the file is empty")
    try:
        yield from reader(path)
    except SourceError:
        raise
    except CorpusError as exc:  # from the shared JSONL / text readers: same message, our type
        raise SourceError(str(exc)) from exc
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path.name}: cannot read the file ({exc})") from exc


def validate_source(path: Path) -> SourceStats:
    """Read a whole source file once, as the upload form does; SourceError unless it holds at
    least one usable document. The message says what was skipped and why."""
    fmt = source_format(path)
    documents = 0
    skipped: Counter[str] = Counter()
    for doc, _offset in iter_documents(path):
        if "skip" in doc:
            skipped[doc["skip"]] += 1
        else:
            documents += 1
    if documents == 0:
        raise SourceError(f"{path.name}: {_nothing_found(fmt, skipped)}")
    return SourceStats(fmt, documents, dict(sorted(skipped.items())), path.stat().st_size)


def _nothing_found(fmt: str, skipped: Counter[str]) -> str:
    what = {
        "warc": "no HTML responses or WET text records",
        "html": "no HTML page",
        "zip": "no .html or .htm files",
    }.get(fmt, "no documents")
    if not skipped:
        return f"{what} found"
    counts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(skipped.items()))
    return f"{what} found ({sum(skipped.values())} records skipped: {counts})"


# --- compressed files -------------------------------------------------------------------------


# What a damaged gzip file raises: ISA-L's errors for bad deflate data, gzip's for bad headers.
_GZIP_ERRORS = (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile)


class _GzipStream:
    """A gzip stream that remembers a decompression error instead of letting the reader see it:
    warcio takes an EOFError for a clean end of file, so a truncated file would look complete.
    Decompression is ISA-L's (``isal.igzip``), about twice as fast as zlib's."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._gzip = igzip.GzipFile(fileobj=fileobj, mode="rb")
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._gzip.read(size)
        except _GZIP_ERRORS as exc:
            self.error = exc
            return b""

    def readline(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._gzip.readline(size)
        except _GZIP_ERRORS as exc:
            self.error = exc
            return b""


@contextmanager
def _open(path: Path) -> Iterator[tuple[Any, Callable[[], int]]]:
    """The file's bytes, gunzipped when they start with the gzip magic, and a function giving
    the position in the stored file. A decompression error is raised when the block ends."""
    with open(path, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raw.seek(0)
            yield raw, raw.tell
            return
        raw.seek(0)
        stream = _GzipStream(raw)
        yield stream, raw.tell
        if stream.error is not None:
            raise SourceError(f"{path.name}: cannot read the file ({stream.error})")


# --- decoding ---------------------------------------------------------------------------------


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return _WIDER_CODEC.get(name, name)


def charset_of(content_type: str | None) -> str | None:
    """The ``charset=`` parameter of a Content-Type header value."""
    match = _CHARSET.search(content_type or "")
    return match[1] if match else None


def decode_html(payload: bytes, declared: str | None = None) -> str | None:
    """Text of a page's bytes (see the module docstring for the order); None if undecodable."""
    payload = payload.removeprefix(codecs.BOM_UTF8)
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from resiliparse.parse.encoding import detect_encoding

    tried = {"utf-8"}
    for label in (declared, lambda: detect_encoding(payload, from_html_meta=True)):
        codec = _codec(label() if callable(label) else label)
        if codec is None or codec in tried:
            continue
        tried.add(codec)
        try:
            return payload.decode(codec)
        except UnicodeDecodeError:
            continue
    return None


def looks_like_html(payload: bytes) -> bool:
    """Whether the start of a payload has HTML tags (the sniffing fallback)."""
    return _HTML_TAG.search(payload[:SNIFF_BYTES]) is not None


def _page(base: Document, payload: bytes, declared: str | None) -> Document:
    html = decode_html(payload, declared)
    if html is None:
        return base | {"skip": "undecodable", "detail": declared or "no charset declared"}
    return base | {"html": html}


# --- WARC / WET -------------------------------------------------------------------------------


def _warc_documents(path: Path) -> Iterator[tuple[Document, int]]:
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    with _open(path) as (stream, tell):
        try:
            for record in ArchiveIterator(stream):
                if record.rec_type not in ("response", "conversion"):
                    continue
                headers = record.rec_headers
                base = {
                    "id": headers.get_header("WARC-Record-ID"),
                    # wget writes the URI in angle brackets (an erratum of the WARC 1.0 examples)
                    "url": (headers.get_header("WARC-Target-URI") or "").strip("<>") or None,
                    "source": path.name,
                }
                # content_stream() undoes chunked transfer and gzip/deflate/brotli content
                # encoding; reading one byte past the limit detects oversized (or bomb) payloads
                payload = record.content_stream().read(MAX_PAYLOAD_BYTES + 1)
                if len(payload) > MAX_PAYLOAD_BYTES:
                    yield (
                        base | {"skip": "too_large", "detail": f"over {MAX_PAYLOAD_BYTES} bytes"},
                        tell(),
                    )
                elif record.rec_type == "conversion":
                    yield _wet_text(base, payload), tell()
                else:
                    yield _warc_page(base, record, payload), tell()
        except ArchiveLoadFailed as exc:
            raise SourceError(f"{path.name}: not a readable WARC file ({exc})") from exc


def _warc_page(base: Document, record: Any, payload: bytes) -> Document:
    http = record.http_headers
    content_type = http.get_header("Content-Type") if http is not None else None
    payload_type = record.rec_headers.get_header("WARC-Identified-Payload-Type")
    if payload_type is not None:
        if payload_type.split(";")[0].strip().lower() not in HTML_TYPES:
            return base | {"skip": "not_html", "detail": payload_type}
    elif not looks_like_html(payload):
        return base | {"skip": "not_html", "detail": content_type or "unknown payload type"}
    return _page(base, payload, charset_of(content_type))


def _wet_text(base: Document, payload: bytes) -> Document:
    text = decode_html(payload)  # WET is UTF-8; decode_html only adds a fallback
    if text is None:
        return base | {"skip": "undecodable", "detail": "WET record"}
    return base | {"text": text}


# --- HTML files -------------------------------------------------------------------------------


def _html_file_documents(path: Path) -> Iterator[tuple[Document, int]]:
    with _open(path) as (stream, tell):
        payload = stream.read()
        base = {"id": path.name, "url": None, "source": path.name}
        yield _page(base, payload, None), tell()


def _zip_documents(path: Path) -> Iterator[tuple[Document, int]]:
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for done, member in enumerate(members, start=1):
            base = {"id": f"{path.name}/{member.filename}", "url": None, "source": path.name}
            offset = size * done // len(members)  # members are read in order: a fair estimate
            if not member.filename.lower().endswith((".html", ".htm")):
                yield base | {"skip": "not_html", "detail": member.filename}, offset
                continue
            with archive.open(member) as fh:
                yield _page(base, fh.read(), None), offset


# --- JSONL and plain text ---------------------------------------------------------------------


def _jsonl_documents(path: Path) -> Iterator[tuple[Document, int]]:
    for lineno, record, offset in iter_json_records(path):
        url = record.get("url")
        doc_id = record.get("id")
        yield (
            {
                "id": str(doc_id) if doc_id is not None else f"{path.name}:{lineno}",
                "url": url if isinstance(url, str) and url else None,
                "source": path.name,
                "text": _valid_unicode(record["text"]),
            },
            offset,
        )


def _valid_unicode(text: str) -> str:
    """JSON escapes can spell lone surrogates, which no UTF-8 file can hold: replace them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def _text_documents(path: Path) -> Iterator[tuple[Document, int]]:
    for n, (text, offset) in enumerate(iter_documents_with_offsets(path), start=1):
        yield {"id": f"{path.name}:{n}", "url": None, "source": path.name, "text": text}, offset
