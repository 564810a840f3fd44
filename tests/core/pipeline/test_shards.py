"""The pipeline's gzip shard files: readable by any gzip reader, reproducible, rolled by rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from training.core.pipeline.shards import ConcatenatedShards, ShardWriter, read_rows, write_rows


def _plain_gzip_rows(path: Path) -> list[dict]:
    """Rows as Python's own gzip module reads them (every member, in order)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_files_and_row_members_join_into_shards_that_plain_gzip_reads(tmp_path: Path) -> None:
    chunks = []
    for n in range(3):
        path = tmp_path / f"chunk-{n}.jsonl.gz"
        write_rows(path, [{"chunk": n, "row": r, "text": "é" * r} for r in range(3)])
        chunks.append(path)
    shards = ConcatenatedShards(tmp_path / "out", "dropped", per_shard=5, keep_empty=True)
    for n, path in enumerate(chunks):
        shards.append(path, 3)
        shards.append_rows([{"chunk": n, "duplicate": True}])
    shards.append_rows([])  # nothing: no empty member, no new shard
    shards.close()

    # a shard closes at the first file or member boundary at or past 5 rows
    assert [p.name for p in shards.paths] == ["dropped-00000.jsonl.gz", "dropped-00001.jsonl.gz"]
    assert shards.rows == 12
    first, second = (_plain_gzip_rows(p) for p in shards.paths)
    assert [(r["chunk"], r.get("row", "dup")) for r in first] == [
        (0, 0), (0, 1), (0, 2), (0, "dup"), (1, 0), (1, 1), (1, 2)
    ]  # fmt: skip
    assert [(r["chunk"], r.get("row", "dup")) for r in second] == [
        (1, "dup"), (2, 0), (2, 1), (2, 2), (2, "dup")
    ]  # fmt: skip
    assert first[2]["text"] == "éé"
    assert list(read_rows(shards.paths[0])) == first


def test_an_empty_concatenation_keeps_one_readable_empty_shard(tmp_path: Path) -> None:
    shards = ConcatenatedShards(tmp_path / "out", "dropped", per_shard=5, keep_empty=True)
    shards.append(tmp_path / "never-read.jsonl.gz", 0)
    shards.close()
    assert [p.name for p in shards.paths] == ["dropped-00000.jsonl.gz"]
    assert _plain_gzip_rows(shards.paths[0]) == []
    nothing = ConcatenatedShards(tmp_path / "none", "raw", per_shard=5)
    nothing.close()
    assert nothing.paths == [] and not (tmp_path / "none").exists()


def test_the_same_rows_make_the_same_bytes(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"document {i} " * 50} for i in range(40)]
    for name in ("a", "b"):
        writer = ShardWriter(tmp_path / name, "kept", per_shard=15)
        for row in rows:
            writer.write(row)
        writer.close()
    a = sorted((tmp_path / "a").iterdir())
    b = sorted((tmp_path / "b").iterdir())
    assert [p.name for p in a] == [
        "kept-00000.jsonl.gz",
        "kept-00001.jsonl.gz",
        "kept-00002.jsonl.gz",
    ]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [r for p in a for r in _plain_gzip_rows(p)] == rows
    # no file name or time in the gzip header: bytes 4..9 are flags and mtime
    assert all(p.read_bytes()[3] == 0 and p.read_bytes()[4:8] == b"\0\0\0\0" for p in a)
