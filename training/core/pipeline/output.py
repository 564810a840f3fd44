"""Turning the processed chunks into a corpus version: dedup, PII masking, shards, statistics.

Runs once every chunk is processed (:mod:`.worker`). Dedup needs all kept documents: the 15 keys
of each are read column by column from the chunks' ``keys.npy`` files and grouped
(:func:`.dedup.find_duplicates`). Then one pass over the chunks, in order, writes

- ``shards/kept-NNNNN.jsonl.gz``: ``{"id","url","text","language","language_score","source"}``,
  PII masked (after dedup, as FineWeb does);
- ``dropped/dropped-NNNNN.jsonl.gz``: ``{"id","url","stage","reason","scores","text",
  "language"}`` for every dropped document, duplicates included (``scores.duplicate_of`` names
  the kept copy);
- ``raw/raw-NNNNN.jsonl.gz``: ``{"id","html"}`` of every page read, when raw HTML is kept
  (the workers' compressed chunk files joined, so a shard may pass ``shard_documents`` by
  less than one chunk);
- ``stats.json`` and, last, ``orchard.json`` (``{"kind": "corpus", "config", "stats"}``).

Everything is built in a hidden sibling folder of ``out_dir`` and renamed into place at the end,
so ``out_dir`` never holds a half-written corpus version. The output depends only on the inputs
and the config: runs with any number of workers, and resumed runs, write identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.core.pipeline import dedup
from training.core.pipeline.pii import PiiMasker
from training.core.pipeline.shards import ConcatenatedShards, ShardWriter, read_rows
from training.core.pipeline.worker import DROPPED, KEPT, KEYS, RAW

if TYPE_CHECKING:
    from training.core.pipeline.run import CorpusConfig


def dedup_drops(
    cfg: CorpusConfig, chunk_dirs: list[Path], count: int
) -> dict[int, tuple[str, int]]:
    """``{kept-document index: (reason, index of the copy kept)}`` over the ``count`` documents
    the chunks kept."""
    if not (cfg.exact_dedup or cfg.minhash_dedup):
        return {}

    def column(c: int) -> np.ndarray:
        # one column at a time keeps 8 bytes per document in memory; the chunk files are small
        # and read again for each column rather than held open (a large run has many)
        parts = [np.load(folder / KEYS)[:, c] for folder in chunk_dirs]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    return dedup.find_duplicates(column, count, exact=cfg.exact_dedup, near=cfg.minhash_dedup)


class _Assembler:
    """Writes the corpus-version folder from the chunks, collecting statistics on the way."""

    def __init__(self, cfg: CorpusConfig, folder: Path, drops: dict[int, tuple[str, int]]):
        self.cfg = cfg
        self.drops = drops
        per_shard = cfg.shard_documents
        self.kept = ShardWriter(folder / "shards", "kept", per_shard, keep_empty=True)
        # Each chunk's dropped rows as its worker compressed them, then its duplicates: the bulk
        # of the dropped text is not decompressed and compressed again here, on one core.
        self.dropped = ConcatenatedShards(folder / "dropped", "dropped", per_shard, keep_empty=True)
        self.raw = (
            ConcatenatedShards(folder / "raw", "raw", per_shard) if cfg.keep_raw_html else None
        )
        self.masker = PiiMasker(emails=cfg.pii_emails, ips=cfg.pii_ips, phones=cfg.pii_phones)
        self.index = 0  # position of the next kept document among all kept documents
        self.wanted_ids = {kept for _reason, kept in drops.values()}
        self.ids: dict[int, str] = {}  # index -> id of documents that others duplicate
        self.characters = 0
        self.languages: Counter[str] = Counter()
        self.dedup_reasons: Counter[str] = Counter()

    def add_chunk(self, folder: Path, summary: dict[str, Any]) -> None:
        if self.raw is not None:
            self.raw.append(folder / RAW, summary["raw"])
        self.dropped.append(folder / DROPPED, summary["documents"] - summary["kept"])
        duplicates = []
        for row in read_rows(folder / KEPT):
            if (duplicate := self._add_kept(row)) is not None:
                duplicates.append(duplicate)
            self.index += 1
        self.dropped.append_rows(duplicates)

    def _add_kept(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Writes a document the stages kept, or returns its dropped row if dedup drops it."""
        if self.index in self.wanted_ids:
            self.ids[self.index] = row["id"]
        drop = self.drops.get(self.index)
        if drop is not None:
            reason, original = drop
            self.dedup_reasons[reason] += 1
            return {
                "id": row["id"],
                "url": row["url"],
                "stage": "dedup",
                "reason": reason,
                # the kept copy comes earlier, so its id is known by now
                "scores": {"duplicate_of": self.ids[original]},
                "text": row["text"],
                "language": row["language"],
            }
        row["text"] = self.masker.mask(row["text"])
        self.characters += len(row["text"])
        if row["language"] is not None:
            self.languages[row["language"]] += 1
        self.kept.write(row)
        return None

    def close(self) -> dict[str, int]:
        self.kept.close()
        self.dropped.close()
        files = {"kept": len(self.kept.paths), "dropped": len(self.dropped.paths)}
        return files | ({"raw": len(self.raw.paths)} if self.raw is not None else {})


def funnel(
    stages: list[str], summaries: list[dict[str, Any]], dedup_reasons: dict[str, int] | None
) -> list[dict[str, Any]]:
    """``[{"stage", "in", "dropped", "reasons"}]`` in stage order; ``dedup`` last if it ran."""
    rows = []
    for stage in stages:
        reasons: Counter[str] = Counter()
        for summary in summaries:
            reasons.update(summary["reasons"].get(stage, {}))
        reached = sum(summary["reached"].get(stage, 0) for summary in summaries)
        rows.append(_funnel_row(stage, reached, reasons))
    if dedup_reasons is not None:
        reached = sum(summary["kept"] for summary in summaries)
        rows.append(_funnel_row("dedup", reached, Counter(dedup_reasons)))
    return rows


def _funnel_row(stage: str, reached: int, reasons: Counter[str]) -> dict[str, Any]:
    return {
        "stage": stage,
        "in": reached,
        "dropped": sum(reasons.values()),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def write_corpus(
    cfg: CorpusConfig,
    chunk_dirs: list[Path],
    summaries: list[dict[str, Any]],
    stages: list[str],
    out_dir: Path,
    extra_stats: dict[str, Any],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Build the corpus version in a temporary sibling of ``out_dir``, then move it into place."""
    progress("finding duplicates")
    drops = dedup_drops(cfg, chunk_dirs, sum(summary["kept"] for summary in summaries))
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        assembler = _Assembler(cfg, tmp, drops)
        for folder, summary in zip(_announce(chunk_dirs, progress), summaries, strict=True):
            assembler.add_chunk(folder, summary)
        files = assembler.close()
        dedup_reasons = (
            dict(assembler.dedup_reasons) if cfg.exact_dedup or cfg.minhash_dedup else None
        )
        stats = {
            "documents_in": sum(summary["documents"] for summary in summaries),
            "documents_kept": assembler.kept.rows,
            "documents_dropped": assembler.dropped.rows,
            "characters": assembler.characters,
            "languages": dict(sorted(assembler.languages.items(), key=lambda kv: (-kv[1], kv[0]))),
            "funnel": funnel(stages, summaries, dedup_reasons),
            "pii_replaced": dict(sorted(assembler.masker.totals.items())),
            "files": files,
            **extra_stats,
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
        manifest = {"kind": "corpus", "config": cfg.model_dump(), "stats": stats}
        # orchard.json last: its presence means the folder is complete
        (tmp / "orchard.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _announce(chunk_dirs: list[Path], progress: Callable[[str], None]) -> Iterator[Path]:
    for done, folder in enumerate(chunk_dirs):
        progress(f"writing shards: chunk {done + 1} of {len(chunk_dirs)}")
        yield folder


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` must be empty (it is replaced)."""
    if out_dir.exists():
        out_dir.rmdir()  # OSError if it is not empty: never overwrite someone's files
    os.rename(tmp, out_dir)
