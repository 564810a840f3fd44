"""The per-document part of the pipeline, and the worker process that runs it on chunks.

A document goes through these stages in order (FineWeb's, PIPELINE.md section 1) and stops at
the first one that drops it:

``read`` (records without a usable page: not HTML, undecodable) -> ``url_filter`` -> ``extract``
(HTML to text; text documents only lose surrounding whitespace) -> ``language`` ->
``gopher_repetition`` -> ``gopher_quality`` -> ``c4`` (also rewrites the text) ->
``fineweb_quality``.

Switched-off stages are left out. Documents that pass are kept with their 15 dedup keys
(see :mod:`.dedup`); dedup and PII masking need every kept document and run later, in
:mod:`.output`.

A chunk (a few dozen documents) is processed in one go and its results are saved as one atomic
checkpoint in the work folder (``chunks/step_<index>/``: ``kept``, ``dropped``, ``raw`` rows and
``keys.npy``), with a summary in the checkpoint's metadata. A chunk is the unit of resuming.

Worker processes are plain ``python -m training.core.pipeline.worker`` subprocesses, not
``multiprocessing`` children: a Celery prefork child is a daemonic process and may not start
those. The protocol on stdin/stdout: one JSON line with the setup, then per chunk one JSON header
line followed by the UTF-8 bodies of its documents; the worker answers each chunk with one JSON
line. Anything a library prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from training.core.checkpoints import save_checkpoint
from training.core.pipeline import dedup, filters, url_filter
from training.core.pipeline.extract import ExtractionTimeout, extract
from training.core.pipeline.langid import LanguageFilter, parse_languages
from training.core.pipeline.shards import write_rows

if TYPE_CHECKING:
    from training.core.pipeline.run import CorpusConfig

KEPT, DROPPED, RAW, KEYS = "kept.jsonl.gz", "dropped.jsonl.gz", "raw.jsonl.gz", "keys.npy"
_WARM_UP_HTML = "<html><body><article><p>Orchard warms up.</p></article></body></html>"


@dataclass
class _Work:
    """One document on its way through the stages."""

    id: str
    url: str | None
    source: str
    html: str | None = None
    text: str | None = None
    skip: tuple[str, str] | None = None  # (reason, detail) from the reader
    language: str | None = None
    language_score: float | None = None


Drop = tuple[str, dict[str, Any]]  # (reason, scores)
Stage = Callable[[_Work], Drop | None]


def build_url_filter(cfg: CorpusConfig, blocklists: list[Path]) -> url_filter.UrlFilter:
    """Orchard's shipped lists (unless switched off), plus the config's, plus blocklist files."""

    def entries(name: str, own: str) -> list[str]:
        shipped = url_filter.shipped_list(name) if cfg.url_use_shipped_lists else []
        return shipped + url_filter.parse_list(own)

    domains = entries("domains", cfg.url_blocked_domains)
    for path in blocklists:
        with open(path, encoding="utf-8", errors="replace") as fh:
            domains += url_filter.parse_list(fh)
    return url_filter.UrlFilter(
        domains=domains,
        urls=url_filter.parse_list(cfg.url_blocked_urls),
        banned_words=entries("banned_words", cfg.url_banned_words),
        soft_words=entries("soft_words", cfg.url_soft_banned_words),
        subwords=entries("subwords", cfg.url_banned_subwords),
        soft_word_threshold=cfg.url_soft_word_threshold,
    )


def stage_names(cfg: CorpusConfig) -> list[str]:
    """The per-document stages a config enables, in order."""
    switches = [
        ("read", True),
        ("url_filter", cfg.url_filter),
        ("extract", True),
        ("language", cfg.language_filter),
        ("gopher_repetition", cfg.gopher_repetition),
        ("gopher_quality", cfg.gopher_quality),
        ("c4", cfg.c4_filter),
        ("fineweb_quality", cfg.fineweb_quality),
    ]
    return [name for name, enabled in switches if enabled]


class DocumentPipeline:
    """The enabled per-document stages of a config, ready to run (models loaded)."""

    def __init__(self, cfg: CorpusConfig, blocklists: list[Path] | None = None) -> None:
        self.cfg = cfg
        self.stage_names = stage_names(cfg)
        self.stages: list[tuple[str, Stage]] = [
            (name, getattr(self, f"_{name}")) for name in self.stage_names
        ]
        if cfg.url_filter:
            self.urls = build_url_filter(cfg, blocklists or [])
        if cfg.language_filter:
            self.languages = LanguageFilter(parse_languages(cfg.languages), cfg.language_threshold)
        self.dedup = cfg.exact_dedup or cfg.minhash_dedup
        self._warm_up()

    def _warm_up(self) -> None:
        """Import the extractor and load models now, not inside the first page's time limit."""
        extract(_WARM_UP_HTML, self.cfg.extraction, timeout=0)
        if self.cfg.language_filter:
            self.languages.check("Orchard warms up its language model.")
        if self.cfg.url_filter:
            self.urls.check("https://www.example.org/")
        if self.dedup:
            dedup.keys("Orchard warms up its dedup tables.")

    # --- stages: each returns None to pass the document on, or (reason, scores) to drop it ---

    def _read(self, work: _Work) -> Drop | None:
        if work.skip is None:
            return None
        reason, detail = work.skip
        return reason, {"detail": detail}

    def _url_filter(self, work: _Work) -> Drop | None:
        verdict = self.urls.check(work.url) if work.url else None
        return (verdict.reason, verdict.scores()) if verdict else None

    def _extract(self, work: _Work) -> Drop | None:
        if work.html is not None:
            timeout = self.cfg.extraction_timeout
            try:
                work.text = extract(work.html, self.cfg.extraction, timeout)
            except ExtractionTimeout:
                return "timeout", {"seconds": timeout}
            except Exception as exc:  # a page that breaks the extractor is dropped, not the run
                return "error", {"error": f"{type(exc).__name__}: {exc}"[:300]}
        work.text = (work.text or "").strip()
        return None if work.text else ("empty", {})

    def _language(self, work: _Work) -> Drop | None:
        language, score, reason = self.languages.check(work.text or "")
        work.language, work.language_score = language, score
        return (reason, {"language": language, "language_score": score}) if reason else None

    def _gopher_repetition(self, work: _Work) -> Drop | None:
        return _drop_unless_kept(filters.gopher_repetition(work.text or ""))

    def _gopher_quality(self, work: _Work) -> Drop | None:
        return _drop_unless_kept(filters.gopher_quality(work.text or ""))

    def _c4(self, work: _Work) -> Drop | None:
        verdict = filters.c4_lines(work.text or "", self.cfg.c4_require_terminal_punctuation)
        if not verdict.keep:
            return verdict.reason, verdict.scores
        work.text = verdict.text
        return None

    def _fineweb_quality(self, work: _Work) -> Drop | None:
        return _drop_unless_kept(filters.fineweb_quality(work.text or ""))

    # --- chunks ---

    def process_chunk(self, index: int, docs: list[dict[str, Any]], chunks_root: Path) -> dict:
        """Run every document of a chunk and save the results as checkpoint ``index``."""
        kept: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        raw: list[dict[str, str]] = []
        keys: list[Any] = []
        reached: Counter[str] = Counter()
        reasons: dict[str, Counter[str]] = {name: Counter() for name in self.stage_names}
        for doc in docs:
            work = _work(doc)
            if self.cfg.keep_raw_html and work.html is not None:
                raw.append({"id": work.id, "html": work.html})
            drop = self._run_stages(work, reached, reasons)
            if drop is not None:
                dropped.append(drop)
                continue
            kept.append(_kept_row(work))
            if self.dedup:
                keys.append(dedup.keys(work.text or ""))
        summary = {
            "documents": len(docs),
            "kept": len(kept),
            "raw": len(raw),
            "first_id": docs[0]["id"] if docs else None,
            "reached": dict(reached),
            "reasons": {name: dict(c) for name, c in reasons.items() if c},
        }

        def write(folder: Path) -> None:
            write_rows(folder / KEPT, kept)
            write_rows(folder / DROPPED, dropped)
            write_rows(folder / RAW, raw)
            matrix = np.array(keys, dtype=np.uint64).reshape(-1, dedup.KEY_COLUMNS)
            np.save(folder / KEYS, matrix, allow_pickle=False)

        save_checkpoint(chunks_root, index, write, meta=summary)
        return summary

    def _run_stages(
        self, work: _Work, reached: Counter[str], reasons: dict[str, Counter[str]]
    ) -> dict[str, Any] | None:
        """The dropped row if a stage drops the document, else None."""
        for name, stage in self.stages:
            reached[name] += 1
            drop = stage(work)
            if drop is not None:
                reason, scores = drop
                reasons[name][reason] += 1
                return _dropped_row(work, name, reason, scores)
        return None


def _drop_unless_kept(verdict: filters.Verdict) -> Drop | None:
    return None if verdict.keep else (verdict.reason, verdict.scores)


def _work(doc: dict[str, Any]) -> _Work:
    skip = (doc["skip"], str(doc.get("detail", ""))) if "skip" in doc else None
    return _Work(
        id=doc["id"],
        url=doc.get("url"),
        source=doc["source"],
        html=doc.get("html"),
        text=doc.get("text"),
        skip=skip,
    )


def _kept_row(work: _Work) -> dict[str, Any]:
    return {
        "id": work.id,
        "url": work.url,
        "text": work.text,
        "language": work.language,
        "language_score": work.language_score,
        "source": work.source,
    }


def _dropped_row(work: _Work, stage: str, reason: str, scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": work.id,
        "url": work.url,
        "stage": stage,
        "reason": reason,
        "scores": scores,
        "text": work.text or None,
        "language": work.language,
    }


# --- the wire format between run() and worker processes -----------------------------------------

_BODY_KEYS = ("html", "text")


def encode_chunk(index: int, docs: list[dict[str, Any]]) -> bytes:
    """A JSON header line with the documents' fields and body sizes, then the bodies."""
    heads, bodies = [], []
    for doc in docs:
        head = {k: v for k, v in doc.items() if k not in _BODY_KEYS}
        for key in _BODY_KEYS:
            if key in doc:
                body = doc[key].encode("utf-8")
                head["body"], head["size"] = key, len(body)
                bodies.append(body)
        heads.append(head)
    header = json.dumps({"index": index, "docs": heads}, ensure_ascii=False).encode() + b"\n"
    return header + b"".join(bodies)


def decode_chunk(header: bytes, stream: IO[bytes]) -> tuple[int, list[dict[str, Any]]]:
    message = json.loads(header)
    docs = []
    for head in message["docs"]:
        if "body" in head:
            body_key, size = head.pop("body"), head.pop("size")
            head[body_key] = _read_exactly(stream, size).decode("utf-8")
        docs.append(head)
    return message["index"], docs


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the chunk ended early")
    return data


def main() -> None:
    """Worker process: set up from the first line, then process chunks until stdin closes."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the replies
    requests = sys.stdin.buffer
    from training.core.pipeline.run import CorpusConfig

    setup = json.loads(requests.readline())
    cfg = CorpusConfig.model_validate(setup["config"])
    pipeline = DocumentPipeline(cfg, [Path(p) for p in setup["blocklists"]])
    chunks_root = Path(setup["chunks_root"])
    replies.write(b'{"ready": true}\n')
    replies.flush()
    while header := requests.readline():
        try:
            index, docs = decode_chunk(header, requests)
            reply = {"index": index, "summary": pipeline.process_chunk(index, docs, chunks_root)}
        except Exception:
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()
        if "error" in reply:
            return
    # Input ended: every chunk is saved and answered. Exit now rather than have the interpreter
    # tear down the loaded models and libraries, which the run would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
