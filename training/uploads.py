"""Data coming in: text corpora and raw web data, uploaded or taken from the server's import
folder, validated in full before anything is kept.

One mechanism for every kind of data file: the bytes go to a private staging folder, a validator
from ``training.core`` reads the whole file (and names the line or record that is wrong), and
only then does the file become an immutable artifact. A refused file leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile

from training.core.checkpoints import sha256_file
from training.models import Artifact, ArtifactKind
from training.services import artifact_register_dir, artifacts_root


class UploadRefused(ValueError):
    pass


@dataclass(frozen=True)
class DataFormat:
    kind: str  # the artifact kind the file becomes
    suffixes: tuple[str, ...]
    validate: Callable[[Path], dict[str, Any]]  # facts kept as meta; raises UploadRefused
    describe: str  # what is accepted, for error messages and help texts

    def suffix_of(self, filename: str) -> str | None:
        lowered = filename.lower()
        return next(
            (s for s in sorted(self.suffixes, key=len, reverse=True) if lowered.endswith(s)), None
        )


def _validate_corpus(path: Path) -> dict[str, Any]:
    from training.core.corpus import CorpusError, validate_corpus

    try:
        stats = validate_corpus(path)
    except CorpusError as exc:
        raise UploadRefused(str(exc)) from None
    return {"format": stats.format, "documents": stats.documents, "characters": stats.characters}


def _validate_webdata(path: Path) -> dict[str, Any]:
    from training.core.pipeline.sources import SourceError, validate_source

    try:
        stats = validate_source(path)
    except SourceError as exc:
        raise UploadRefused(str(exc)) from None
    return {"format": stats.format, "documents": stats.documents, "skipped": stats.skipped}


CORPUS = DataFormat(
    kind=ArtifactKind.CORPUS,
    suffixes=(".txt", ".jsonl", ".txt.gz", ".jsonl.gz"),
    validate=_validate_corpus,
    describe="a .txt or .jsonl file (optionally .gz) with one document per paragraph or "
    "`text` field",
)


WEBDATA = DataFormat(
    kind=ArtifactKind.WEBDATA,
    suffixes=(
        ".warc",
        ".warc.gz",
        ".wet",
        ".wet.gz",
        ".html",
        ".htm",
        ".html.gz",
        ".htm.gz",
        ".zip",
        ".jsonl",
        ".jsonl.gz",
        ".txt",
        ".txt.gz",
    ),
    validate=_validate_webdata,
    describe="WARC/WET (.warc, .warc.gz), HTML pages (.html or a .zip of them), JSONL with "
    "`text` (and optional `url`) or plain text",
)


def _validate_blocklist(path: Path) -> dict[str, Any]:
    entries = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise UploadRefused(f"line {number}: not UTF-8 text") from None
            if line and not line.startswith("#"):
                if any(ch.isspace() for ch in line) or "/" in line:
                    raise UploadRefused(f"line {number}: expected one domain name, got {line!r}")
                entries += 1
    if not entries:
        raise UploadRefused("the list holds no domains")
    return {"format": "domains", "documents": entries}


BLOCKLIST = DataFormat(
    kind=ArtifactKind.BLOCKLIST,
    suffixes=(".txt",),
    validate=_validate_blocklist,
    describe="a .txt file with one domain per line (# starts a comment)",
)


def store(
    *, fmt: DataFormat, filename: str, chunks: Iterable[bytes], name: str, user: Any, origin: str
) -> Artifact:
    """Validate a data file streamed in ``chunks`` and keep it as an artifact of ``fmt.kind``."""
    suffix = fmt.suffix_of(filename)
    if suffix is None:
        raise UploadRefused(f"expected {fmt.describe}")
    incoming = artifacts_root() / ".incoming" / uuid.uuid4().hex
    incoming.mkdir(parents=True)
    try:
        target = incoming / f"{fmt.kind}{suffix}"
        with open(target, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        if target.stat().st_size == 0:
            raise UploadRefused(f"{os.path.basename(filename)} is empty")
        meta = {
            "original_name": os.path.basename(filename)[:200],
            "origin": origin,
            **fmt.validate(target),
            "sha256_file": sha256_file(target),
        }
        return artifact_register_dir(
            source=incoming,
            kind=fmt.kind,
            name=name or meta["original_name"] or fmt.kind,
            run=None,
            parents=[],
            user=user,
            meta=meta,
        )
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def upload(*, fmt: DataFormat, uploaded: UploadedFile, name: str, user: Any) -> Artifact:
    return store(
        fmt=fmt,
        filename=uploaded.name or "",
        chunks=uploaded.chunks(),
        name=name,
        user=user,
        origin="upload",
    )


def corpus_upload(*, uploaded: UploadedFile, name: str, user: Any) -> Artifact:
    return upload(fmt=CORPUS, uploaded=uploaded, name=name, user=user)


def importable_files(fmt: DataFormat) -> list[str]:
    """Files of this format under the server's import folder, relative to it."""
    from training.model_import import import_root

    root = import_root()
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and fmt.suffix_of(p.name) and root in p.resolve().parents
    )


def import_file(*, fmt: DataFormat, relative: str, name: str, user: Any) -> Artifact:
    """Copy a file from the import folder (chosen from a list, confined to the folder)."""
    from training.model_import import import_root

    root = import_root()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        raise UploadRefused("choose a file inside the import folder")

    def chunks() -> Iterable[bytes]:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                yield block

    return store(
        fmt=fmt,
        filename=path.name,
        chunks=chunks(),
        name=name,
        user=user,
        origin=f"import:{relative}",
    )


# --- downloads: a file fetched from a URL (training.downloads) goes through store() too -------


def download_file(*, fmt: DataFormat, url: str, name: str, user: Any) -> Artifact:
    """Fetch ``url`` into a private staging folder, then validate and keep it like an upload."""
    from training.downloads import DownloadRefused, download, filename_from_url

    if fmt.suffix_of(filename_from_url(url)) is None:  # before spending time on the download
        raise UploadRefused(f"the URL must name {fmt.describe}")
    staging = artifacts_root() / ".incoming" / f"download-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        try:
            path = download(url, staging)
        except DownloadRefused as exc:
            raise UploadRefused(str(exc)) from None

        def chunks() -> Iterable[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        return store(
            fmt=fmt,
            filename=path.name,
            chunks=chunks(),
            name=name,
            user=user,
            origin=f"download:{url}",
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
