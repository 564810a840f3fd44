"""training.core.corpus reads a corpus-version folder like a corpus file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.core.corpus import (
    CorpusError,
    corpus_format,
    corpus_shards,
    iter_documents,
    iter_documents_with_offsets,
    stored_size,
    validate_corpus,
)


def version(root: Path, shards: list[list[str]]) -> Path:
    (root / "shards").mkdir(parents=True)
    for n, texts in enumerate(shards):
        lines = "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
        (root / "shards" / f"kept-{n:05d}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (root / "dropped").mkdir()  # other folders are not read
    (root / "dropped" / "dropped-00000.jsonl.gz").write_bytes(gzip.compress(b'{"text": "no"}\n'))
    return root


def test_documents_come_from_the_shards_in_order(tmp_path: Path) -> None:
    root = version(tmp_path / "v1", [["a", "b"], [], ["c"]])
    assert corpus_format(root) == "corpus"
    assert list(iter_documents(root)) == ["a", "b", "c"]
    assert [p.name for p in corpus_shards(root)] == [f"kept-{n:05d}.jsonl.gz" for n in range(3)]
    offsets = [offset for _text, offset in iter_documents_with_offsets(root)]
    assert offsets == sorted(offsets)
    assert offsets[-1] == stored_size(root) == sum(p.stat().st_size for p in corpus_shards(root))


def test_validate(tmp_path: Path) -> None:
    stats = validate_corpus(version(tmp_path / "v1", [["héllo"], ["world"]]))
    assert (stats.format, stats.documents, stats.characters) == ("corpus", 2, 10)


def test_a_version_without_documents(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no documents"):
        validate_corpus(version(tmp_path / "v1", [[]]))


def test_a_folder_that_is_not_a_version(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(CorpusError, match="not a corpus version"):
        validate_corpus(tmp_path / "random")


def test_bad_shard_lines_name_the_shard(tmp_path: Path) -> None:
    root = version(tmp_path / "v1", [["a"]])
    (root / "shards" / "kept-00001.jsonl.gz").write_bytes(gzip.compress(b'{"id": 1}\n'))
    with pytest.raises(CorpusError, match=r'kept-00001.jsonl.gz: line 1: missing the "text"'):
        list(iter_documents(root))
