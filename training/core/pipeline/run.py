"""The ``corpus`` stage: web data (WARC, WET, HTML, JSONL, text) to a clean pretraining corpus.

Input: ``inputs["sources"]``, a list of source files (formats: :mod:`.sources`), and optionally
``inputs["url_blocklists"]``, text files with one blocked domain per line (for lists too large to
edit in a form, such as UT1's 4.5M domains).

Recipe (FineWeb's, PIPELINE.md): read -> URL filter -> extract -> language -> Gopher repetition
-> Gopher quality -> C4 lines -> FineWeb quality (per document, in parallel) -> exact and MinHash
dedup over all kept documents -> PII masking -> shards. Every stage can be switched off; dropped
documents are kept with the stage and reason that dropped them.

Output in ``out_dir`` (a corpus version; layout in :mod:`.output`): ``shards/kept-*.jsonl.gz``,
``dropped/dropped-*.jsonl.gz``, ``raw/raw-*.jsonl.gz``, ``stats.json``, ``orchard.json``.
:func:`training.core.corpus.iter_documents` reads such a folder, so tokenizer and pretraining runs
can take a corpus version as input.

How it runs:

- Streaming: sources are read one document at a time and cut into chunks of ``CHUNK_DOCUMENTS``
  documents (at most ``CHUNK_BYTES`` of HTML/text); at most one chunk per worker is in memory.
- Parallel: ``workers`` subprocesses (:mod:`.worker`) each take a chunk, run the per-document
  stages and save the chunk's results as a checkpoint in the work folder. With ``workers=1``
  chunks are processed in this process.
- Resumable: the work folder keeps the checkpoints of finished chunks and a fingerprint of config
  and inputs. A run that was stopped or whose worker died skips the chunks already done (sources
  are re-read, which is cheap next to extraction) and ends with the same corpus as an
  uninterrupted run. ``work_dir`` defaults to a hidden sibling of ``out_dir``; it is deleted once
  the corpus version is complete.
- Cancellable: ``reporter.should_stop()`` is checked between chunks; the run then returns early
  (``{"cancelled": True, ...}``) without writing ``out_dir`` and the caller marks it cancelled.
- Reporting: progress in bytes of the source files read; metrics per chunk: documents read and
  documents left after each stage.

From the shell::

    python -m training.core corpus --config cfg.json \\
        --input sources=crawl-00000.warc.gz --input sources=crawl-00001.warc.gz --out out/corpus

Simplifications: dedup holds 8 bytes per kept document per key column in memory (one column at a
time) plus a dict entry per duplicate; the final pass (dedup decisions, PII masking, writing
shards) runs in one process.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.core.corpus import CorpusError
from training.core.pipeline.langid import THRESHOLD, parse_languages
from training.core.reporting import Reporter

if TYPE_CHECKING:  # numpy, trafilatura and the models load only inside run(), never for the config
    from training.core.checkpoints import Checkpoint
    from training.core.pipeline.worker import DocumentPipeline

CHUNK_DOCUMENTS = 64
CHUNK_BYTES = 32 * 1024 * 1024
FORMAT_VERSION = 1  # bump when chunk checkpoints change meaning: old work folders are discarded
REPO_ROOT = Path(__file__).resolve().parents[3]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _list_field(what: str) -> Any:
    return Field(
        "",
        description=(
            f"{what}, one per line (# starts a comment). Added to Orchard's small built-in list "
            "unless that is switched off."
        ),
        json_schema_extra={"list": True},  # forms show a text area and take an uploaded file
    )


class CorpusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url_filter: bool = Field(
        True,
        description="Drop pages from blocked sites or with adult words in their URL (RefinedWeb).",
    )
    url_use_shipped_lists: bool = Field(
        True,
        description=(
            "Use Orchard's built-in starter lists (a few dozen domains and words each) in "
            "addition to the lists below."
        ),
    )
    url_blocked_domains: str = _list_field(
        "Blocked sites: registered domains (example.com blocks all its subdomains) or full host "
        "names"
    )
    url_blocked_urls: str = Field(
        "", description="Exact URLs to drop, one per line.", json_schema_extra={"list": True}
    )
    url_banned_words: str = _list_field("Words that drop a page when they are a word of its URL")
    url_soft_banned_words: str = _list_field(
        "Words that drop a page when enough of them are words of its URL"
    )
    url_banned_subwords: str = _list_field(
        "Strings that drop a page when they occur anywhere in its URL (letters and digits only)"
    )
    url_soft_word_threshold: int = Field(
        2, ge=1, le=20, description="How many different soft words a URL needs to be dropped."
    )
    extraction: Literal["precision", "fast"] = Field(
        "precision",
        description=(
            "precision: trafilatura as in FineWeb (F1 about 0.96, about 60 pages/s per core). "
            "fast: resiliparse (F1 about 0.90, roughly ten times faster)."
        ),
    )
    extraction_timeout: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds a page may take to extract before it is dropped (FineWeb: 1).",
    )
    language_filter: bool = Field(
        True, description="Keep only documents in the languages below (py3langid)."
    )
    languages: str = Field(
        "en",
        description=(
            "Comma-separated ISO 639-1 codes of the languages to keep, such as 'en' or 'en, de'. "
            "Empty keeps any language identified with enough confidence."
        ),
    )
    language_threshold: float = Field(
        THRESHOLD,
        ge=0,
        lt=1,
        description="A document is kept when its language's probability is above this (0.65).",
    )
    gopher_repetition: bool = Field(
        True,
        description="Drop documents with many repeated lines, paragraphs or n-grams (Gopher).",
    )
    gopher_quality: bool = Field(
        True,
        description=(
            "Drop documents failing Gopher's quality rules: 50-100,000 words, word length, "
            "symbols, bullet lines, stop words."
        ),
    )
    c4_filter: bool = Field(
        True,
        description=(
            "Remove short, javascript and cookie/policy lines and citation marks; drop documents "
            "with fewer than 5 sentences, 'lorem ipsum' or curly brackets (C4, FineWeb settings)."
        ),
    )
    c4_require_terminal_punctuation: bool = Field(
        False,
        description=(
            "Also remove lines that do not end in . ? ! or a quote (original C4; FineWeb turns "
            "this off because it removes too much)."
        ),
    )
    fineweb_quality: bool = Field(
        True,
        description=(
            "Drop documents that are mostly short lines, lists, duplicated lines or lines without "
            "end punctuation (FineWeb)."
        ),
    )
    exact_dedup: bool = Field(
        True, description="Keep one document of each group with the same normalised text."
    )
    minhash_dedup: bool = Field(
        True,
        description=(
            "Keep one document of each group of near-duplicates (MinHash on word 5-grams, "
            "14 bands of 8 hashes, as FineWeb)."
        ),
    )
    pii_emails: bool = Field(
        True, description="Replace e-mail addresses with placeholder addresses."
    )
    pii_ips: bool = Field(
        True,
        description="Replace public IPv4 addresses (not private or loopback ones) by placeholders.",
    )
    pii_phones: bool = Field(
        False,
        description="Replace phone numbers written with +country code or (area code) 123-4567.",
    )
    keep_raw_html: bool = Field(
        True,
        description="Store every page's HTML next to the corpus (raw/), to inspect or re-extract.",
    )
    shard_documents: int = Field(
        10_000, ge=1, le=10_000_000, description="Documents per output shard file."
    )
    workers: int = Field(
        default_factory=_cpu_count,
        ge=1,
        le=1024,
        description="Worker processes for extraction and filtering (default: the machine's cores).",
    )

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, value: str) -> str:
        return ", ".join(parse_languages(value))  # ValueError -> an error at this field


def run(
    cfg: CorpusConfig,
    inputs: dict[str, list[Path]],
    out_dir: Path,
    reporter: Reporter,
    *,
    work_dir: Path | None = None,
    chunk_documents: int = CHUNK_DOCUMENTS,
) -> dict[str, Any]:
    """Build a corpus version in ``out_dir``; return its statistics (``stats.json`` plus timing).

    ``chunk_documents`` sets the unit of parallel work and of resuming; tests make it small.
    """
    from training.core.pipeline import output
    from training.core.pipeline.worker import stage_names

    sources = _paths(inputs, "sources", required=True)
    blocklists = _paths(inputs, "url_blocklists", required=False)
    _check_out_dir(out_dir)
    root = work_dir / "corpus" if work_dir else out_dir.parent / f".{out_dir.name}.work"
    chunks_root = root / "chunks"
    done = _prepare_work(root, _fingerprint(cfg, sources + blocklists, chunk_documents))
    total = sum(p.stat().st_size for p in sources)
    reporter.log(
        f"cleaning {len(sources)} source file(s), {total / 1e6:.1f} MB, with {cfg.workers} "
        f"worker(s), {cfg.extraction} extraction"
        + (f"; resuming after {len(done)} finished chunk(s)" if done else "")
    )
    started = time.monotonic()
    reader = _Reader(sources, chunk_documents)
    progress = _Progress(reporter, total, stage_names(cfg))
    with _pool(cfg, chunks_root, blocklists) as pool:
        finished = _process(reader.chunks(), pool, done, progress, reporter)
    if finished is None or reporter.should_stop():
        reporter.log(f"stopped after {progress.chunks} chunk(s); run again to resume")
        return {"cancelled": True, "chunks_done": progress.chunks, "documents_read": progress.docs}

    chunk_dirs = [chunks_root / f"step_{index:08d}" for index in sorted(finished)]
    stats = output.write_corpus(
        cfg,
        chunk_dirs,
        [finished[index] for index in sorted(finished)],
        stage_names(cfg),
        out_dir,
        {"sources": reader.per_source},
        lambda message: reporter.progress(total, total, message),
    )
    shutil.rmtree(root, ignore_errors=True)  # the corpus is complete: nothing left to resume
    seconds = time.monotonic() - started
    result = stats | {
        "seconds": round(seconds, 3),
        "documents_per_second": round(stats["documents_in"] / seconds, 2) if seconds else 0.0,
    }
    _log_funnel(reporter, stats)
    return result


# --- inputs and the work folder -----------------------------------------------------------------


def _paths(inputs: dict[str, list[Path]], name: str, *, required: bool) -> list[Path]:
    from training.core.pipeline.sources import SourceError, source_format

    paths = [Path(p) for p in inputs.get(name) or []]
    if required and not paths:
        raise SourceError(f'the corpus stage needs at least one source file as input "{name}"')
    for path in paths:
        if name == "sources":
            source_format(path)  # refuse unsupported files before reading any
        if not path.is_file():
            raise SourceError(f"{name} file not found: {path}")
    return paths


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CorpusError(f"the output folder {out_dir} is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _fingerprint(cfg: CorpusConfig, files: list[Path], chunk_documents: int) -> str:
    """What the chunk checkpoints depend on; the worker count is not part of it."""
    described = {
        "version": FORMAT_VERSION,
        "config": cfg.model_dump(exclude={"workers"}),
        "chunking": [chunk_documents, CHUNK_BYTES],
        "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _prepare_work(root: Path, fingerprint: str) -> dict[int, Checkpoint]:
    """Finished chunks that can be reused; anything from a different config or input goes."""
    from training.core.checkpoints import list_complete, read_complete

    chunks_root = root / "chunks"
    state = root / "state.json"
    try:
        previous = json.loads(state.read_text()).get("fingerprint")
    except (OSError, ValueError):
        previous = None
    if previous != fingerprint:
        shutil.rmtree(chunks_root, ignore_errors=True)
    chunks_root.mkdir(parents=True, exist_ok=True)
    for leftover in chunks_root.glob(".tmp-*"):  # chunks a killed worker was writing
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = root / "state.json.tmp"
    tmp.write_text(json.dumps({"fingerprint": fingerprint}))
    os.replace(tmp, state)
    verified = (read_complete(c.path, verify=True) for c in list_complete(chunks_root))
    return {c.step: c for c in verified if c is not None}


# --- reading sources into chunks ----------------------------------------------------------------


@dataclass
class _Chunk:
    index: int
    docs: list[dict[str, Any]]
    bytes: int  # bytes of the stored source files this chunk covers, for progress


class _Reader:
    """Documents of all sources in order, cut into chunks; counts documents per source."""

    def __init__(self, sources: list[Path], chunk_documents: int) -> None:
        self.sources = sources
        self.chunk_documents = chunk_documents
        self.per_source: list[dict[str, Any]] = []

    def chunks(self) -> Iterator[_Chunk]:
        from training.core.pipeline.sources import iter_documents

        docs: list[dict[str, Any]] = []
        size = position = covered = index = 0
        for path in self.sources:
            count = 0
            base = position
            for doc, offset in iter_documents(path):
                docs.append(doc)
                count += 1
                size += len(doc.get("html") or doc.get("text") or "")
                position = base + offset
                if len(docs) >= self.chunk_documents or size >= CHUNK_BYTES:
                    yield _Chunk(index, docs, position - covered)
                    index, docs, size, covered = index + 1, [], 0, position
            position = base + path.stat().st_size
            self.per_source.append({"name": path.name, "documents": count})
        if docs:
            yield _Chunk(index, docs, position - covered)


# --- processing chunks --------------------------------------------------------------------------


class _Progress:
    """Progress in bytes read, and documents left after each stage, as chunks finish."""

    def __init__(self, reporter: Reporter, total_bytes: int, stages: list[str]) -> None:
        self.reporter = reporter
        self.total_bytes = total_bytes
        self.stages = stages
        self.bytes = self.docs = self.chunks = 0
        self.reached: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def chunk_done(self, chunk_bytes: int, summary: dict[str, Any]) -> None:
        self.chunks += 1
        self.bytes += chunk_bytes
        self.docs += summary["documents"]
        self.reached.update(summary["reached"])
        self.dropped.update({s: sum(r.values()) for s, r in summary["reasons"].items()})
        kept = self.docs - sum(self.dropped.values())
        self.reporter.progress(
            min(self.bytes, self.total_bytes),
            self.total_bytes,
            f"{self.docs} documents read, {kept} kept so far (before dedup)",
        )
        values = {"documents_in": float(self.docs)}
        for stage in self.stages:
            values[f"after_{stage}"] = float(self.reached[stage] - self.dropped[stage])
        self.reporter.metrics(values, step=self.docs)


def _process(
    chunks: Iterator[_Chunk],
    pool: _InlinePool | _ProcessPool,
    done: dict[int, Checkpoint],
    progress: _Progress,
    reporter: Reporter,
) -> dict[int, dict[str, Any]] | None:
    """Summaries of all chunks by index, or None when the run was asked to stop."""
    summaries: dict[int, dict[str, Any]] = {}
    sizes: dict[int, int] = {}

    def record(results: list[tuple[int, dict[str, Any]]]) -> None:
        for index, summary in results:
            summaries[index] = summary
            progress.chunk_done(sizes.pop(index), summary)

    for chunk in chunks:
        if reporter.should_stop():
            return None
        sizes[chunk.index] = chunk.bytes
        previous = done.get(chunk.index)
        if previous is not None and _same_chunk(previous.meta, chunk):
            record([(chunk.index, previous.meta)])
            continue
        while not pool.has_room():
            record(pool.wait())
        pool.submit(chunk)
        record(pool.finished())
    while pool.pending():
        record(pool.wait())
    return summaries


def _same_chunk(meta: dict[str, Any], chunk: _Chunk) -> bool:
    first_id = chunk.docs[0]["id"] if chunk.docs else None
    return meta.get("documents") == len(chunk.docs) and meta.get("first_id") == first_id


class _InlinePool:
    """Processes each chunk at once, in this process (``workers=1``)."""

    def __init__(self, pipeline: DocumentPipeline, chunks_root: Path) -> None:
        self.pipeline = pipeline
        self.chunks_root = chunks_root
        self.results: deque[tuple[int, dict[str, Any]]] = deque()

    def __enter__(self) -> _InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def has_room(self) -> bool:
        return True

    def submit(self, chunk: _Chunk) -> None:
        summary = self.pipeline.process_chunk(chunk.index, chunk.docs, self.chunks_root)
        self.results.append((chunk.index, summary))

    def finished(self) -> list[tuple[int, dict[str, Any]]]:
        results = list(self.results)
        self.results.clear()
        return results

    def pending(self) -> bool:
        return bool(self.results)

    def wait(self) -> list[tuple[int, dict[str, Any]]]:
        return self.finished()


class _WorkerProcess:
    """One ``python -m training.core.pipeline.worker`` subprocess and the chunk it holds."""

    def __init__(self, setup: bytes) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.core.pipeline.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.index: int | None = None  # the chunk being processed
        self._send(setup)

    def _send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._died()

    def _died(self) -> None:
        code = self.proc.wait()
        raise RuntimeError(f"a pipeline worker (pid {self.proc.pid}) exited with code {code}")

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self._died()
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"a pipeline worker failed:\n{message['error']}")
        return message

    def submit(self, chunk: _Chunk) -> None:
        from training.core.pipeline.worker import encode_chunk

        self.index = chunk.index
        self._send(encode_chunk(chunk.index, chunk.docs))

    def end(self, kill: bool) -> None:
        """Tell the worker to exit (end of input), or kill it; :meth:`stop` waits for the exit."""
        if kill:
            self.proc.kill()
        elif self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # end of input: the worker exits

    def stop(self, kill: bool) -> None:
        self.end(kill)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


class _ProcessPool:
    """Worker subprocesses, each holding at most one chunk."""

    def __init__(self, size: int, setup: bytes) -> None:
        self.workers: list[_WorkerProcess] = []
        self.selector = selectors.DefaultSelector()
        try:
            self.workers = [_WorkerProcess(setup) for _ in range(size)]
            for worker in self.workers:
                worker.reply()  # "ready": models loaded
        except BaseException:
            self._stop(failed=True)
            raise

    def __enter__(self) -> _ProcessPool:
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        self._stop(failed=exc_type is not None)

    def _stop(self, failed: bool) -> None:
        # On an error or a stop, chunks in flight are abandoned: their workers are killed and
        # a resumed run does them again.
        plan = [(worker, failed or worker.index is not None) for worker in self.workers]
        for worker, kill in plan:  # all first, so that they wind down in parallel
            worker.end(kill)
        for worker, kill in plan:
            worker.stop(kill)
        self.selector.close()

    def has_room(self) -> bool:
        return any(worker.index is None for worker in self.workers)

    def submit(self, chunk: _Chunk) -> None:
        worker = next(w for w in self.workers if w.index is None)
        worker.submit(chunk)
        assert worker.proc.stdout is not None
        self.selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)

    def pending(self) -> bool:
        return any(worker.index is not None for worker in self.workers)

    def finished(self) -> list[tuple[int, dict[str, Any]]]:
        return self._collect(timeout=0)

    def wait(self) -> list[tuple[int, dict[str, Any]]]:
        results: list[tuple[int, dict[str, Any]]] = []
        while not results:
            results = self._collect(timeout=None)
        return results

    def _collect(self, timeout: float | None) -> list[tuple[int, dict[str, Any]]]:
        results = []
        for key, _events in self.selector.select(timeout):
            worker: _WorkerProcess = key.data
            message = worker.reply()
            self.selector.unregister(key.fileobj)
            results.append((message["index"], message["summary"]))
            worker.index = None
        return results


def _pool(
    cfg: CorpusConfig, chunks_root: Path, blocklists: list[Path]
) -> _InlinePool | _ProcessPool:
    if cfg.workers == 1:
        from training.core.pipeline.worker import DocumentPipeline

        return _InlinePool(DocumentPipeline(cfg, blocklists), chunks_root)
    setup = {
        "config": cfg.model_dump(mode="json"),
        "chunks_root": str(chunks_root),
        "blocklists": [str(p) for p in blocklists],
    }
    return _ProcessPool(cfg.workers, json.dumps(setup).encode() + b"\n")


def _log_funnel(reporter: Reporter, stats: dict[str, Any]) -> None:
    for row in stats["funnel"]:
        top = ", ".join(f"{reason} {n}" for reason, n in list(row["reasons"].items())[:4])
        reporter.log(
            f"{row['stage']:>18}: {row['in']} in, {row['dropped']} dropped"
            + (f" ({top})" if top else "")
        )
    reporter.log(
        f"kept {stats['documents_kept']} of {stats['documents_in']} documents, "
        f"{stats['characters']} characters"
    )
