"""JSONL.gz files of the pipeline: rolling shard writers and readers.

Files are written reproducibly (no name or timestamp in the gzip header), so two runs that make
the same rows make byte-identical files: parallel and serial runs, resumed and uninterrupted
runs can be compared by hash.

Raw HTML is the bulk of the data and is compressed once, quickly, by the workers: the final raw
shards are the chunks' files joined end to end (a gzip file may hold several members; every gzip
reader reads them as one stream). The dropped shards are the same, with a member for each chunk's
duplicates appended after its file.

Compression is ISA-L's (``isal.igzip``): ordinary gzip files, written several times faster than
zlib's at a similar size (levels 0 to 3) and read faster too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from isal import igzip

FINAL_LEVEL = 3  # the output corpus: ISA-L's smallest files (about zlib level 6's size)
SCRATCH_LEVEL = 1  # chunk files, also joined into raw and dropped shards: speed matters more


def _open_gzip(path: Path, level: int, mode: str = "wb") -> IO[bytes]:
    """A gzip writer on ``path``: a new file (``wb``) or one more member at its end (``ab``)."""
    raw = open(path, mode)  # noqa: SIM115 - closed by GzipFile via the wrapper below
    return _ClosingGzip(raw, level)


class _ClosingGzip(igzip.IGzipFile):
    """A GzipFile that also closes the file it writes to."""

    def __init__(self, raw: IO[bytes], level: int) -> None:
        super().__init__(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0)
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def _line(row: dict[str, Any]) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode()


def write_rows(path: Path, rows: Iterable[dict[str, Any]], level: int = SCRATCH_LEVEL) -> int:
    """Write all rows to one file; returns how many."""
    count = 0
    with _open_gzip(path, level) as fh:
        for row in rows:
            fh.write(_line(row))
            count += 1
    return count


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    with igzip.open(path, "rb") as fh:
        for line in fh:
            yield json.loads(line)


class ShardWriter:
    """Rows into ``folder/prefix-00000.jsonl.gz``, ``-00001``, ... with at most ``per_shard`` rows
    each. With ``keep_empty`` an empty first shard is written even when no row comes, so readers
    can tell "no documents" from "not a corpus"."""

    def __init__(
        self, folder: Path, prefix: str, per_shard: int, *, keep_empty: bool = False
    ) -> None:
        self.folder = folder
        self.prefix = prefix
        self.per_shard = per_shard
        self.keep_empty = keep_empty
        self.paths: list[Path] = []
        self.rows = 0
        self._file: IO[bytes] | None = None
        self._in_shard = 0

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None or self._in_shard >= self.per_shard:
            self._next_shard()
        assert self._file is not None
        self._file.write(_line(row))
        self._in_shard += 1
        self.rows += 1

    def _next_shard(self) -> None:
        if self._file is not None:
            self._file.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.jsonl.gz"
        self.paths.append(path)
        self._file = _open_gzip(path, FINAL_LEVEL)
        self._in_shard = 0

    def close(self) -> None:
        if self._file is None and self.keep_empty:
            self._next_shard()
        if self._file is not None:
            self._file.close()
            self._file = None


class ConcatenatedShards:
    """Whole gzip files, and lists of rows as one gzip member each, appended into
    ``folder/prefix-00000.jsonl.gz``, ... A shard is closed once it holds ``per_shard`` rows or
    more, so shards end at file or member boundaries. With ``keep_empty`` an empty first shard is
    written even when no row comes (as :class:`ShardWriter`)."""

    def __init__(
        self, folder: Path, prefix: str, per_shard: int, *, keep_empty: bool = False
    ) -> None:
        self.folder = folder
        self.prefix = prefix
        self.per_shard = per_shard
        self.keep_empty = keep_empty
        self.paths: list[Path] = []
        self.rows = 0
        self._in_shard = 0

    def append(self, path: Path, rows: int) -> None:
        """The gzip file at ``path``, which holds ``rows`` rows."""
        if not rows:
            return
        with open(path, "rb") as src, open(self._shard(), "ab") as dst:
            shutil.copyfileobj(src, dst)
        self._added(rows)

    def append_rows(self, rows: list[dict[str, Any]]) -> None:
        """``rows`` as one more gzip member."""
        if not rows:
            return
        with _open_gzip(self._shard(), SCRATCH_LEVEL, mode="ab") as fh:
            fh.write(b"".join(map(_line, rows)))
        self._added(len(rows))

    def close(self) -> None:
        if not self.paths and self.keep_empty:
            _open_gzip(self._shard(), SCRATCH_LEVEL).close()

    def _shard(self) -> Path:
        """The shard the next rows go to, started when there is none or the last one is full."""
        if not self.paths or self._in_shard >= self.per_shard:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.paths.append(self.folder / f"{self.prefix}-{len(self.paths):05d}.jsonl.gz")
            self._in_shard = 0
        return self.paths[-1]

    def _added(self, rows: int) -> None:
        self._in_shard += rows
        self.rows += rows
