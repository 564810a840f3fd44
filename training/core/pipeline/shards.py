"""JSONL.gz files of the pipeline: rolling shard writers and readers.

Files are written reproducibly (no name or timestamp in the gzip header), so two runs that make
the same rows make byte-identical files: parallel and serial runs, resumed and uninterrupted
runs can be compared by hash.

Raw HTML is the bulk of the data and is compressed once, quickly, by the workers: the final raw
shards are the chunks' files joined end to end (a gzip file may hold several members; every gzip
reader reads them as one stream).
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

FINAL_LEVEL = 6  # the output corpus: zlib's usual balance of size and speed
SCRATCH_LEVEL = 1  # chunk files in the work folder: read once, speed matters more


def _open_gzip(path: Path, level: int) -> IO[bytes]:
    raw = open(path, "wb")  # noqa: SIM115 - closed by GzipFile via the wrapper below
    return _ClosingGzip(raw, level)


class _ClosingGzip(gzip.GzipFile):
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
    with gzip.open(path, "rb") as fh:
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
    """Whole gzip files appended into ``folder/prefix-00000.jsonl.gz``, ... A shard is closed
    once it holds ``per_shard`` rows or more, so shards end at file boundaries."""

    def __init__(self, folder: Path, prefix: str, per_shard: int) -> None:
        self.folder = folder
        self.prefix = prefix
        self.per_shard = per_shard
        self.paths: list[Path] = []
        self.rows = 0
        self._in_shard = 0

    def append(self, path: Path, rows: int) -> None:
        if not rows:
            return
        if not self.paths or self._in_shard >= self.per_shard:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.paths.append(self.folder / f"{self.prefix}-{len(self.paths):05d}.jsonl.gz")
            self._in_shard = 0
        with open(path, "rb") as src, open(self.paths[-1], "ab") as dst:
            shutil.copyfileobj(src, dst)
        self._in_shard += rows
        self.rows += rows
