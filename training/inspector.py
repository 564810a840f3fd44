"""Reading a corpus version for people: the funnel, kept and dropped documents, raw HTML.

A corpus version (the output of a corpus run) is a folder of gzipped JSONL shards: ``shards/``
(kept), ``dropped/`` (with the stage and reason), ``raw/`` (the HTML) and ``stats.json``. These
functions stream them with bounded memory; listing stops after ``SCAN_LIMIT`` rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from django.db.models import Count, Q

from training.models import Artifact, SpotCheck

SCAN_LIMIT = 200_000
# Counting runs inside the request: bigger corpora would hold it for too long.
MAX_CHARACTERS_TO_COUNT = 200_000_000
RAW_HTML_CHARS = 200_000
FOLDERS = {"kept": "shards", "dropped": "dropped"}


def is_corpus_version(artifact: Artifact) -> bool:
    return (artifact.abspath() / "stats.json").is_file()


def corpus_stats(artifact: Artifact) -> dict[str, Any]:
    return json.loads((artifact.abspath() / "stats.json").read_text())


def _rows(folder: Path) -> Iterator[dict[str, Any]]:
    from training.core.pipeline.shards import read_rows

    for shard in sorted(folder.glob("*.jsonl.gz")):
        yield from read_rows(shard)


def rows(artifact: Artifact, view: str) -> Iterator[dict[str, Any]]:
    return islice(_rows(artifact.abspath() / FOLDERS[view]), SCAN_LIMIT)


@dataclass(frozen=True)
class Query:
    view: str = "dropped"
    stage: str = ""
    reason: str = ""
    text: str = ""

    def matches(self, row: dict[str, Any]) -> bool:
        if self.stage and row.get("stage") != self.stage:
            return False
        if self.reason and row.get("reason") != self.reason:
            return False
        if self.text:
            needle = self.text.lower()
            haystack = f"{row.get('url') or ''}\n{row.get('text') or ''}".lower()
            return needle in haystack
        return True


def search(artifact: Artifact, query: Query, offset: int, limit: int) -> tuple[list[dict], bool]:
    """One page of matching rows and whether there are more."""
    matching = (row for row in rows(artifact, query.view) if query.matches(row))
    page = list(islice(matching, offset, offset + limit + 1))
    return page[:limit], len(page) > limit


def find(artifact: Artifact, document_id: str) -> tuple[str, dict[str, Any]] | None:
    """(``kept``|``dropped``, row) of a document."""
    for view in ("kept", "dropped"):
        for row in rows(artifact, view):
            if row.get("id") == document_id:
                return view, row
    return None


def raw_html(artifact: Artifact, document_id: str) -> str | None:
    for row in islice(_rows(artifact.abspath() / "raw"), SCAN_LIMIT):
        if row.get("id") == document_id:
            return str(row.get("html") or "")[:RAW_HTML_CHARS]
    return None


def random_unchecked(artifact: Artifact, reviewer: Any, seed: int | None = None) -> str | None:
    """A document id drawn uniformly (reservoir sampling) among those this reviewer has not
    judged yet, from kept and dropped alike."""
    checked = set(
        SpotCheck.objects.filter(corpus=artifact, reviewer=reviewer).values_list(
            "document_id", flat=True
        )
    )
    rng = random.Random(seed)
    chosen, seen = None, 0
    for view in ("kept", "dropped"):
        for row in rows(artifact, view):
            if row.get("id") in checked:
                continue
            seen += 1
            if rng.randrange(seen) == 0:
                chosen = row.get("id")
    return chosen


def precision_by_stage(artifact: Artifact) -> list[dict[str, Any]]:
    """Per stage that decided (``kept`` for documents kept), how often reviewers agreed."""
    counts = (
        SpotCheck.objects.filter(corpus=artifact)
        .values("stage")
        .annotate(checked=Count("id"), correct=Count("id", filter=Q(correct=True)))
        .order_by("stage")
    )
    return [
        {**c, "precision": c["correct"] / c["checked"] if c["checked"] else None} for c in counts
    ]


class TooLargeToCount(Exception):
    pass


def count_tokens(corpus: Artifact, tokenizer: Artifact) -> int:
    """Exact token count of a corpus version's kept documents, cached in its meta (the corpus
    and the tokenizer are immutable, so the count never goes stale)."""
    from training.core.token_view import count_tokens as count
    from training.core.token_view import load_tokenizer

    key = str(tokenizer.pk)
    cached = corpus.meta.get("tokens", {}).get(key)
    if cached is not None:
        return int(cached["tokens"])
    characters = int(corpus_stats(corpus).get("characters") or 0)
    if characters > MAX_CHARACTERS_TO_COUNT:
        raise TooLargeToCount(
            f"{characters:,} characters is too many to count here; a pretraining run on this "
            "corpus reports its exact token count"
        )
    texts = (str(row.get("text") or "") for row in _rows(corpus.abspath() / "shards"))
    tokens = count(load_tokenizer(tokenizer.abspath()), texts)
    counts = {**corpus.meta.get("tokens", {}), key: {"tokens": tokens, "name": tokenizer.name}}
    corpus.meta = {**corpus.meta, "tokens": counts}
    corpus.save(update_fields=["meta"])
    return tokens


def token_counts(corpus: Artifact) -> list[dict[str, Any]]:
    return [{"tokenizer": int(pk), **value} for pk, value in corpus.meta.get("tokens", {}).items()]
