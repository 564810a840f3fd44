"""The corpus stage end to end: output layout, funnel, parallel = serial, resume, bad input."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.core.pipeline.helpers import (
    WARC_DIR,
    Record,
    article,
    html_record,
    page,
    write_warc,
)
from training.core.corpus import CorpusError, iter_documents, validate_corpus
from training.core.pipeline.run import CorpusConfig, run
from training.core.pipeline.sources import SourceError
from training.core.reporting import RecordingReporter

REPO = Path(__file__).resolve().parents[3]
KEPT_FIELDS = {"id", "url", "text", "language", "language_score", "source"}
DROPPED_FIELDS = {"id", "url", "stage", "reason", "scores", "text", "language"}
PII_SENTENCE = (
    "Write to the editor at jane.doe@example-news.org or call the server at 8.8.4.4 today."
)


@pytest.fixture
def crawl(tmp_path: Path) -> Path:
    """14 responses: 8 good articles (one with an address), an exact and a near copy, an adult
    site, a Chinese page, an image and a page too short to keep."""
    records = [
        html_record(f"https://news{i}.example.org/story/{i}", page(article(i))) for i in range(7)
    ]
    records.append(
        html_record("https://news7.example.org/story/7", page(article(7) + "\n\n" + PII_SENTENCE))
    )
    records += [
        html_record("https://mirror.example.net/copy", page(article(0))),
        html_record(
            "https://mirror.example.net/edited",
            page(article(1).replace("the", "one", 1), title="News update"),
        ),
        html_record("https://www.pornhub.com/view/1", page(article(20))),
        html_record(
            "http://news.example.cn/1",
            page("今天天气很好，我们去公园散步吧。城市博物馆展出了新的地图。\n\n" * 8, lang="zh"),
        ),
        Record("https://news0.example.org/logo.png", b"\x89PNG\r\n", "image/png", "image/png"),
        html_record("https://news0.example.org/short", page("Just a few words here.")),
    ]
    return write_warc(tmp_path / "crawl.warc.gz", records)


def cfg(**changes: Any) -> CorpusConfig:
    return CorpusConfig(**({"workers": 1, "shard_documents": 5} | changes))


def rows(folder: Path, pattern: str) -> list[dict[str, Any]]:
    found = []
    for shard in sorted(folder.glob(pattern)):
        with gzip.open(shard) as fh:
            found += [json.loads(line) for line in fh]
    return found


def files(out: Path) -> dict[str, bytes]:
    """Every output file but orchard.json (it holds the config, workers included)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "orchard.json"
    }


def test_full_run_layout_funnel_and_corpus_reading(crawl: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    reporter = RecordingReporter()
    stats = run(cfg(), {"sources": [crawl]}, out, reporter, chunk_documents=4)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "crawl.warc.gz"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.gz"))
    # 8 kept at 5 per shard; dropped and raw shards end at chunk boundaries, so the 6 dropped
    # rows (fewer than 5 before the last chunk) share one shard
    assert [p for p in written if not p.startswith("raw/")] == [
        "dropped/dropped-00000.jsonl.gz",
        "shards/kept-00000.jsonl.gz",
        "shards/kept-00001.jsonl.gz",
    ]
    assert [p for p in written if p.startswith("raw/")] == [
        "raw/raw-00000.jsonl.gz",
        "raw/raw-00001.jsonl.gz",
    ]
    kept = rows(out, "shards/kept-*.jsonl.gz")
    dropped = rows(out, "dropped/dropped-*.jsonl.gz")
    assert all(set(r) == KEPT_FIELDS for r in kept)
    assert all(set(r) == DROPPED_FIELDS for r in dropped)
    assert len(kept) + len(dropped) == stats["documents_in"] == 14
    assert {r["url"] for r in kept} == {f"https://news{i}.example.org/story/{i}" for i in range(8)}
    assert all(r["language"] == "en" and r["language_score"] > 0.65 for r in kept)
    assert all(r["source"] == "crawl.warc.gz" for r in kept)

    why = {r["url"]: (r["stage"], r["reason"]) for r in dropped}
    assert why == {
        "https://mirror.example.net/copy": ("dedup", "exact_duplicate"),
        "https://mirror.example.net/edited": ("dedup", "near_duplicate"),
        "https://www.pornhub.com/view/1": ("url_filter", "domain"),
        "http://news.example.cn/1": ("language", "language:zh"),
        "https://news0.example.org/logo.png": ("read", "not_html"),
        # in a 5-word text any 2-gram is over 20 % of the characters: Gopher's first word
        "https://news0.example.org/short": ("gopher_repetition", "top_2_gram"),
    }
    copy = next(r for r in dropped if r["reason"] == "exact_duplicate")
    original = next(r for r in kept if r["url"] == "https://news0.example.org/story/0")
    assert copy["scores"] == {"duplicate_of": original["id"]}
    assert copy["text"] == original["text"]
    chinese = next(r for r in dropped if r["stage"] == "language")
    assert chinese["language"] == "zh" and "博物馆" in chinese["text"]

    with_pii = next(r for r in kept if r["url"].endswith("/7"))
    assert "jane.doe@example-news.org" not in with_pii["text"]
    assert "email@example.com" in with_pii["text"] and "8.8.4.4" not in with_pii["text"]
    assert stats["pii_replaced"] == {"emails": 1, "ips": 1}

    assert len(rows(out, "raw/raw-*.jsonl.gz")) == 13  # every response with HTML
    funnel = stats["funnel"]
    assert [row["stage"] for row in funnel] == [
        "read", "url_filter", "extract", "language", "gopher_repetition", "gopher_quality",
        "c4", "fineweb_quality", "dedup",
    ]  # fmt: skip
    for before, after in zip(funnel, funnel[1:], strict=False):
        assert after["in"] == before["in"] - before["dropped"]
        assert before["dropped"] == sum(before["reasons"].values())
    assert funnel[-1]["in"] - funnel[-1]["dropped"] == stats["documents_kept"] == 8
    assert stats["languages"] == {"en": 8}
    assert stats["characters"] == sum(len(r["text"]) for r in kept)
    assert stats["sources"] == [{"name": "crawl.warc.gz", "documents": 14}]

    manifest = json.loads((out / "orchard.json").read_text())
    assert manifest["kind"] == "corpus" and manifest["config"]["workers"] == 1
    saved = json.loads((out / "stats.json").read_text())
    assert manifest["stats"] == saved
    assert stats == saved | {"seconds": stats["seconds"], "documents_per_second": stats[
        "documents_per_second"]}  # fmt: skip

    # a corpus version is a corpus: tokenizer and pretraining read it like a file
    assert list(iter_documents(out)) == [r["text"] for r in kept]
    corpus_stats = validate_corpus(out)
    assert (corpus_stats.format, corpus_stats.documents) == ("corpus", 8)
    assert reporter.progress_calls and reporter.metric_calls
    assert reporter.metric_calls[-1][0]["documents_in"] == 14


def test_parallel_output_equals_serial_output(crawl: Path, tmp_path: Path) -> None:
    serial = tmp_path / "serial"
    parallel = tmp_path / "parallel"
    run(cfg(), {"sources": [crawl]}, serial, RecordingReporter(), chunk_documents=3)
    run(cfg(workers=2), {"sources": [crawl]}, parallel, RecordingReporter(), chunk_documents=3)
    assert files(parallel) == files(serial)
    assert json.loads((parallel / "orchard.json").read_text())["config"]["workers"] == 2


def test_stopped_run_resumes_to_the_same_output(crawl: Path, tmp_path: Path) -> None:
    inputs = {"sources": [crawl]}
    reference = tmp_path / "reference"
    run(cfg(), inputs, reference, RecordingReporter(), chunk_documents=3)

    out, work = tmp_path / "out", tmp_path / "work"
    stopping = RecordingReporter(stop_after_progress_calls=2)
    result = run(cfg(), inputs, out, stopping, work_dir=work, chunk_documents=3)
    assert result == {"cancelled": True, "chunks_done": 2, "documents_read": 6}
    assert not out.exists()  # nothing half-written
    assert len(list((work / "corpus" / "chunks").glob("step_*"))) == 2

    resumed = RecordingReporter()
    run(cfg(), inputs, out, resumed, work_dir=work, chunk_documents=3)
    assert "resuming after 2 finished chunk(s)" in resumed.lines[0]
    assert files(out) == files(reference)
    assert not (work / "corpus").exists()  # resume state goes once the corpus is complete


def test_changed_config_does_not_reuse_finished_chunks(crawl: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    stopping = RecordingReporter(stop_after_progress_calls=1)
    run(cfg(), {"sources": [crawl]}, tmp_path / "a", stopping, work_dir=work, chunk_documents=3)
    again = RecordingReporter()
    other = cfg(extraction="fast")
    run(other, {"sources": [crawl]}, tmp_path / "b", again, work_dir=work, chunk_documents=3)
    assert "resuming" not in again.lines[0]


class _KillWorkers(RecordingReporter):
    """Kills this process's worker subprocesses when the first chunk is reported done."""

    def progress(self, step: int, total: int | None = None, message: str = "") -> None:
        super().progress(step, total, message)
        if len(self.progress_calls) == 1:
            for pid in _children():
                os.kill(pid, signal.SIGKILL)


def _children() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_run_fails_when_a_worker_dies_and_resumes(crawl: Path, tmp_path: Path) -> None:
    inputs, work, out = {"sources": [crawl]}, tmp_path / "work", tmp_path / "out"
    reference = tmp_path / "reference"
    run(cfg(), inputs, reference, RecordingReporter(), chunk_documents=2)
    with pytest.raises(RuntimeError, match="pipeline worker .* exited with code -9"):
        run(cfg(workers=2), inputs, out, _KillWorkers(), work_dir=work, chunk_documents=2)
    assert not out.exists()
    assert _children() == []  # no worker left behind
    resumed = RecordingReporter()
    run(cfg(workers=2), inputs, out, resumed, work_dir=work, chunk_documents=2)
    assert "resuming after" in resumed.lines[0]
    assert files(out) == files(reference)


def _run_in_daemon(crawl: Path, out: Path, results: Any) -> None:
    stats = run(cfg(workers=2), {"sources": [crawl]}, out, RecordingReporter(), chunk_documents=4)
    results.put(stats["documents_kept"])


def test_workers_start_inside_a_daemonic_process(crawl: Path, tmp_path: Path) -> None:
    """A Celery prefork child is daemonic, and daemonic processes may not start multiprocessing
    children; the pipeline's subprocess workers do not need to."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(
        target=_run_in_daemon, args=(crawl, tmp_path / "out", results), daemon=True
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert results.get(timeout=5) == 8


# --- inputs that must fail cleanly -------------------------------------------------------------


def test_truncated_source_fails_without_output(crawl: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(crawl.read_bytes()[: crawl.stat().st_size // 2])
    out = tmp_path / "out"
    out.mkdir()  # as the web app prepares it
    with pytest.raises(SourceError, match="cut.warc.gz: cannot read the file"):
        run(cfg(), {"sources": [crawl, cut]}, out, RecordingReporter(), chunk_documents=4)
    assert list(out.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.warc.gz", b"", "empty.warc.gz: the file is empty"),
        ("table.csv", b"a,b\n", "unsupported source file type"),
    ],
)
def test_bad_sources_are_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SourceError, match=message):
        run(cfg(), {"sources": [tmp_path / name]}, tmp_path / "out", RecordingReporter())
    with pytest.raises(SourceError, match='needs at least one source file as input "sources"'):
        run(cfg(), {}, tmp_path / "out", RecordingReporter())


def test_a_non_empty_output_folder_is_refused(crawl: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    with pytest.raises(CorpusError, match="is not empty"):
        run(cfg(), {"sources": [crawl]}, out, RecordingReporter())
    assert (out / "keep.txt").exists()


# --- switches and other inputs ----------------------------------------------------------------


def test_switched_off_stages_leave_the_funnel(crawl: Path, tmp_path: Path) -> None:
    quiet = cfg(
        url_filter=False,
        language_filter=False,
        gopher_repetition=False,
        gopher_quality=False,
        c4_filter=False,
        fineweb_quality=False,
        exact_dedup=False,
        minhash_dedup=False,
        pii_emails=False,
        pii_ips=False,
        keep_raw_html=False,
        extraction="fast",
    )
    stats = run(quiet, {"sources": [crawl]}, tmp_path / "out", RecordingReporter())
    assert [row["stage"] for row in stats["funnel"]] == ["read", "extract"]
    assert stats["documents_kept"] == 13  # all but the image
    assert not (tmp_path / "out" / "raw").exists()
    kept = rows(tmp_path / "out", "shards/*.jsonl.gz")
    assert all(r["language"] is None and r["language_score"] is None for r in kept)
    assert any("jane.doe@example-news.org" in r["text"] for r in kept)


def test_jsonl_and_text_sources(tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    records = [
        {"text": article(1), "url": "https://blog.example.org/a", "id": "a"},
        {"text": article(2), "url": "https://www.xvideos.com/x", "id": "b"},
        {"text": article(1), "id": "c"},
    ]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = tmp_path / "notes.txt"
    text.write_text(article(3) + "<|endoftext|>" + article(4))
    stats = run(cfg(), {"sources": [jsonl, text]}, tmp_path / "out", RecordingReporter())
    kept = rows(tmp_path / "out", "shards/*.jsonl.gz")
    assert [r["id"] for r in kept] == ["a", "notes.txt:1", "notes.txt:2"]
    assert stats["funnel"][1] == {
        "stage": "url_filter", "in": 5, "dropped": 1, "reasons": {"domain": 1}
    }  # fmt: skip
    assert stats["funnel"][-1]["reasons"] == {"exact_duplicate": 1}


def test_url_blocklist_files(crawl: Path, tmp_path: Path) -> None:
    blocklist = tmp_path / "domains.txt"
    blocklist.write_text("# big list\nexample.net\n")
    inputs = {"sources": [crawl], "url_blocklists": [blocklist]}
    run(cfg(extraction="fast"), inputs, tmp_path / "out", RecordingReporter())
    dropped = rows(tmp_path / "out", "dropped/*.jsonl.gz")
    assert {r["url"] for r in dropped if r["reason"] == "domain"} == {
        "https://mirror.example.net/copy",
        "https://mirror.example.net/edited",
        "https://www.pornhub.com/view/1",
    }


# --- the config -------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    default = CorpusConfig()
    assert default.workers == len(os.sched_getaffinity(0))
    assert (default.extraction, default.languages, default.language_threshold) == (
        "precision",
        "en",
        0.65,
    )
    assert CorpusConfig(languages="EN, de").languages == "en, de"
    with pytest.raises(ValidationError) as exc:
        CorpusConfig(languages="en, klingon")
    assert exc.value.errors()[0]["loc"] == ("languages",)
    with pytest.raises(ValidationError):
        CorpusConfig(extraction="magic")
    with pytest.raises(ValidationError):
        CorpusConfig(colour="red")
    schema = CorpusConfig.model_json_schema()
    assert all(field.get("description") for field in schema["properties"].values())


def test_config_import_is_light() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import json, sys\n"
        "import training.core.pipeline.run\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    heavy = {"numpy", "trafilatura", "resiliparse", "warcio", "py3langid", "tldextract", "torch"}
    assert [m for m in json.loads(done.stdout) if m.split(".")[0] in heavy] == []


def test_cli_runs_the_corpus_stage(crawl: Path, tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"workers": 1, "extraction": "fast"}))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    command = [sys.executable, "-m", "training.core", "corpus", "--config", str(config)]
    done = subprocess.run(
        [*command, "--input", f"sources={crawl}", "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["documents_kept"] == 8
    (tmp_path / "bad.warc.gz").write_bytes(b"")
    failed = subprocess.run(
        [*command, "--input", f"sources={tmp_path / 'bad.warc.gz'}", "--out", str(tmp_path / "x")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert failed.returncode == 1
    assert "bad.warc.gz: the file is empty" in failed.stderr


# --- the real shared crawl files --------------------------------------------------------------


def test_all_shared_warc_files(tmp_path: Path) -> None:
    sources = sorted(WARC_DIR.iterdir())
    started = time.monotonic()
    stats = run(cfg(workers=2, shard_documents=10_000), {"sources": sources}, tmp_path / "out",
                RecordingReporter())  # fmt: skip
    assert time.monotonic() - started < 60
    funnel = {row["stage"]: row for row in stats["funnel"]}
    assert funnel["read"]["in"] == stats["documents_in"] == 56
    assert funnel["language"]["reasons"]["language:zh"] >= 5
    assert funnel["language"]["reasons"]["language:ru"] == 1
    assert funnel["dedup"]["reasons"] == {"exact_duplicate": 2}  # allenai.org twice
    assert 15 <= stats["documents_kept"] <= 35
    assert stats["languages"] == {"en": stats["documents_kept"]}
    assert {s["name"]: s["documents"] for s in stats["sources"]}["whirlwind.warc.wat.gz"] == 0
