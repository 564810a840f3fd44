"""``python -m training.core.bench webdata``: Orchard's web-data pipeline against datatrove.

Two measurements, in one process run:

1. Throughput: documents per second (and per core) of Orchard's whole ``corpus`` stage over the
   WARC files in ``shared/data/web/warc/`` (each file repeated ``--repeats`` times so worker
   start-up does not dominate; the copies are real work for dedup), in precision (trafilatura)
   and fast (resiliparse) mode, against datatrove 0.10.1 running FineWeb's steps on the same
   files with the same number of worker processes: WarcReader, URLFilter, Trafilatura
   (favour_precision, 1 s timeout), language filter, Gopher repetition and quality, C4
   (no terminal-punctuation rule), FineWeb quality, each filter with an exclusion writer, then
   the four MinHash stages (sha1, 14 x 8), PIIFormatter and the writer. Both sides' times are
   wall-clock seconds from the start of the run to the finished output, worker start-up
   included. Where datatrove would download something, both sides use the same offline data:
   the language filter is py3langid's bundled model (as Orchard's; lid.176 is a download) with
   English above 0.65, and the URL filter gets Orchard's small shipped lists on both sides
   (datatrove's bundled 4.5M-domain list would otherwise be loaded on its side only).
   Differences that remain: datatrove uses trafilatura 1.11 (it pins < 1.12) and spaCy word
   splitting; Orchard uses trafilatura 2.3 and keeps raw HTML and exact dedup (its defaults).
   Orchard's workers memory-map py3langid's model from Orchard's cache of unpacked models (the
   first run on a machine fills it; ``ORCHARD_CACHE_DIR=`` switches it off, and the report's
   ``input.langid_cache`` says which), where datatrove's unpack the xz file in each process.
2. Extraction quality on the 181 pages of the article-extraction benchmark
   (``shared/data/web/html_extraction_benchmark``): 4-gram shingles over ``\\w+`` tokens, per
   page true/false positives and negatives normalised to sum 1, precision and recall averaged
   over pages, F1 from those averages: exactly the benchmark's ``evaluate.py``, which gives the
   published 0.958 for trafilatura 2.0.0 and 0.665 for html-text (``reference_f1`` recomputes
   both from the shipped outputs as a check). ``mean_page_f1`` (the average of per-page F1) is
   reported too. Pages are extracted without a time limit here.

Goals (the issue): precision mode >= 1.0x datatrove's documents/s at F1 >= 0.95; fast mode
>= 10x at F1 >= 0.89.

datatrove lives in its own virtual environment, never in Orchard's; when ``--bench-venv``
(default ``var/bench-venv``) is missing the benchmark creates it with::

    python -m venv var/bench-venv
    var/bench-venv/bin/pip install "datatrove[processing]==0.10.1" spacy==3.8.18 \\
        lxml_html_clean==0.4.6 warcio==1.8.1 faust-cchardet==3.2.0 python-magic==0.4.27 \\
        orjson==3.13.0 py3langid==0.4.0

Each contender runs ``--rounds`` times, interleaved with the others, and its fastest round is
reported (all rounds' seconds are listed too): on a shared machine the other processes slow
down some rounds, never speed any up.

Options: ``--quick`` (each file once, one round: about 20 s), ``--repeats N`` (default 16),
``--rounds N`` (default 2), ``--workers N`` (default: 2, or the machine's cores if fewer),
``--no-datatrove``, ``--bench-venv PATH``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("ORCHARD_SHARED_DATA") or REPO.parent / "shared" / "data")
WARC_DIR = SHARED / "web" / "warc"
EXTRACTION_DIR = SHARED / "web" / "html_extraction_benchmark"
BENCH_REQUIREMENTS = [
    "datatrove[processing]==0.10.1",
    "spacy==3.8.18",
    "lxml_html_clean==0.4.6",
    "warcio==1.8.1",
    "faust-cchardet==3.2.0",
    "python-magic==0.4.27",
    "orjson==3.13.0",
    "py3langid==0.4.0",
]
GOALS = {"precision": (1.0, 0.95), "fast": (10.0, 0.89)}  # (speed-up over datatrove, F1)
DATATROVE_TIMEOUT_S = 1800

_TOKEN = re.compile(r"\w+")


def main(argv: list[str]) -> dict[str, Any]:
    args = _parse(argv)
    repeats, rounds = (1, 1) if args.quick else (args.repeats, args.rounds)
    with tempfile.TemporaryDirectory(prefix="orchard-webdata-") as tmp:
        files = _inputs(Path(tmp) / "in", repeats)
        runs: dict[str, list[dict[str, Any]]] = {}
        # Rounds interleave the contenders so a busy moment on the machine hits all of them;
        # each keeps its fastest round.
        for round_ in range(rounds):
            for mode in ("precision", "fast"):
                folder = Path(tmp) / f"{mode}-{round_}"
                runs.setdefault(mode, []).append(_orchard(files, mode, args.workers, folder))
            if args.datatrove:
                folder = Path(tmp) / f"datatrove-{round_}"
                result = _datatrove(Path(tmp) / "in", folder, args.workers, args.bench_venv)
                runs.setdefault("datatrove", []).append(result)
    throughput = {name: _fastest(results) for name, results in runs.items()}
    extraction = {mode: extraction_quality(mode) for mode in ("precision", "fast")}
    return _report(args, repeats, len(files), throughput, extraction)


def _fastest(results: list[dict[str, Any]]) -> dict[str, Any]:
    best = min(results, key=lambda r: r["seconds"])
    return best | {"seconds_all_rounds": [r["seconds"] for r in results]}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.core.bench webdata")
    parser.add_argument("--quick", action="store_true", help="each WARC file once (~20 s)")
    parser.add_argument("--repeats", type=int, default=16, help="copies of each WARC file")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each contender")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-datatrove", dest="datatrove", action="store_false")
    parser.add_argument("--bench-venv", type=Path, default=REPO / "var" / "bench-venv")
    return parser.parse_args(argv)


def _inputs(folder: Path, repeats: int) -> list[Path]:
    """``repeats`` symlinked copies of every WARC file, in one folder both sides read."""
    folder.mkdir(parents=True)
    files = []
    for copy in range(repeats):
        for warc in sorted(WARC_DIR.iterdir()):
            link = folder / f"{copy:03d}-{warc.name}"
            link.symlink_to(warc)
            files.append(link)
    return files


# --- Orchard ----------------------------------------------------------------------------------


def _orchard(files: list[Path], mode: str, workers: int, folder: Path) -> dict[str, Any]:
    from training.core.pipeline import output, worker  # noqa: F401 - imported before the clock
    from training.core.pipeline.run import CorpusConfig, run
    from training.core.reporting import RecordingReporter

    cfg = CorpusConfig(extraction=mode, workers=workers)
    started = time.perf_counter()
    stats = run(cfg, {"sources": files}, folder / "out", RecordingReporter(), work_dir=folder)
    seconds = time.perf_counter() - started
    return _speed(stats["documents_in"], seconds, workers) | {
        "kept_before_dedup": stats["funnel"][-1]["in"],
        "kept": stats["documents_kept"],
    }


def _speed(documents: int, seconds: float, workers: int) -> dict[str, Any]:
    return {
        "documents": documents,
        "seconds": round(seconds, 3),
        "docs_per_s": round(documents / seconds, 2),
        "docs_per_s_per_core": round(documents / seconds / workers, 2),
    }


# --- datatrove --------------------------------------------------------------------------------


def _datatrove(inputs: Path, work: Path, workers: int, venv: Path) -> dict[str, Any]:
    python = _bench_python(venv)
    from training.core.pipeline.url_filter import SHIPPED_LISTS, shipped_list

    script = work.parent / "datatrove_fineweb.py"
    script.write_text(DATATROVE_SCRIPT)
    settings = {
        "input": str(inputs),
        "work": str(work),
        "workers": workers,
        "lists": {name: shipped_list(name) for name in SHIPPED_LISTS},
    }
    done = subprocess.run(
        [str(python), str(script), json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=DATATROVE_TIMEOUT_S,
        env={**os.environ, "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""},
    )
    if done.returncode != 0:
        raise RuntimeError(f"datatrove run failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return _speed(result["documents"], result["seconds"], workers) | {
        "kept_before_dedup": result["kept_before_dedup"],
        "kept": result["kept"],
        "version": result["version"],
    }


def _bench_python(venv: Path) -> Path:
    """The bench venv's interpreter; the venv is created first if it does not exist."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} for datatrove (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", *BENCH_REQUIREMENTS]
        subprocess.run(pip, check=True)
    return python


DATATROVE_SCRIPT = r'''
"""FineWeb's steps in datatrove (run by Orchard's webdata benchmark inside the bench venv)."""
import gzip
import json
import sys
import time
from pathlib import Path

_LID = []


def english(doc):
    # py3langid's bundled model, as in Orchard (fastText lid.176 is downloaded at run time)
    if not _LID:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LID.append(LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True))
    language, score = _LID[0].classify(doc.text.replace("\n", " "))
    doc.metadata["language"], doc.metadata["language_score"] = language, float(score)
    return language == "en" and score > 0.65


def count(folder):
    return sum(sum(1 for _ in gzip.open(p)) for p in Path(folder).rglob("*.jsonl.gz"))


def main():
    from importlib.metadata import version

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter,
        LambdaFilter, URLFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    args = json.loads(sys.argv[1])
    work, workers, lists = Path(args["work"]), args["workers"], args["lists"]
    files = sorted(Path(args["input"]).iterdir())

    def removed(name):
        return JsonlWriter(str(work / "removed" / name))

    def executor(pipeline, tasks, name):
        return LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
            logging_dir=str(work / "logs" / name),
        )

    config = MinhashConfig(
        hash_config=HashConfig(hash_fc="sha1", precision=64),
        num_buckets=14, hashes_per_bucket=8, n_grams=5,
    )
    filtered, signatures = str(work / "filtered"), str(work / "signatures")
    buckets, remove_ids = str(work / "buckets"), str(work / "remove_ids")
    stages = [
        executor([
            WarcReader(args["input"]),
            URLFilter(
                use_integrated_lists=False, extra_domains=lists["domains"],
                banned_words=lists["banned_words"], soft_banned_words=lists["soft_words"],
                banned_subwords=lists["subwords"], exclusion_writer=removed("url"),
            ),
            Trafilatura(favour_precision=True, timeout=1.0),
            LambdaFilter(english, exclusion_writer=removed("language")),
            GopherRepetitionFilter(exclusion_writer=removed("gopher_repetition")),
            GopherQualityFilter(exclusion_writer=removed("gopher_quality")),
            C4QualityFilter(filter_no_terminal_punct=False, exclusion_writer=removed("c4")),
            FineWebQualityFilter(exclusion_writer=removed("fineweb_quality")),
            JsonlWriter(filtered),
        ], len(files), "filter"),
        executor([JsonlReader(filtered), MinhashDedupSignature(signatures, config=config)],
                 workers, "signatures"),
        executor([MinhashDedupBuckets(signatures, buckets, config=config)],
                 config.num_buckets, "buckets"),
        executor([MinhashDedupCluster(buckets, remove_ids, config=config)], 1, "cluster"),
        executor([
            JsonlReader(filtered),
            MinhashDedupFilter(remove_ids, exclusion_writer=removed("minhash")),
            PIIFormatter(),
            JsonlWriter(str(work / "output")),
        ], workers, "output"),
    ]
    started = time.perf_counter()
    for stage in stages:
        stage.run()
    seconds = time.perf_counter() - started
    from warcio.archiveiterator import ArchiveIterator

    documents = 0
    for path in files:
        with open(path, "rb") as fh:
            documents += sum(r.rec_type in ("response", "conversion") for r in ArchiveIterator(fh))
    print(json.dumps({
        "seconds": seconds, "documents": documents, "kept_before_dedup": count(filtered),
        "kept": count(work / "output"), "version": version("datatrove"),
    }))


if __name__ == "__main__":
    main()
'''


# --- extraction quality -----------------------------------------------------------------------


def shingle_counts(text: str, n: int = 4) -> Counter[tuple[str, ...]]:
    tokens = _TOKEN.findall(text or "")
    return Counter(tuple(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens)


def page_scores(true: str, pred: str) -> tuple[float, float, float]:
    """Normalised (tp, fp, fn) of one page: the benchmark's ``string_shingle_matching``."""
    truth, guess = shingle_counts(true), shingle_counts(pred)
    tp = fp = fn = 0.0
    for shingle in truth.keys() | guess.keys():
        t, p = truth.get(shingle, 0), guess.get(shingle, 0)
        tp += min(t, p)
        fp += max(0, p - t)
        fn += max(0, t - p)
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def _precision(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    return 0.0 if tp == fp == 0 else tp / (tp + fp)


def _recall(tp: float, fp: float, fn: float) -> float:
    if fp == fn == 0:
        return 1.0
    return 0.0 if tp == fn == 0 else tp / (tp + fn)


def score(ground_truth: dict[str, str], predictions: dict[str, str]) -> dict[str, float]:
    """Precision, recall and F1 as the benchmark's ``evaluate.py`` computes them."""
    pages = [page_scores(ground_truth[key], predictions.get(key, "")) for key in ground_truth]
    precisions = [_precision(*s) for s in pages if s[0] + s[1] > 0]
    recalls = [_recall(*s) for s in pages if s[0] + s[2] > 0]
    precision = sum(precisions) / len(precisions)
    recall = sum(recalls) / len(recalls)
    page_f1 = [
        2 * p * r / (p + r) if p + r else 0.0
        for p, r in ((_precision(*s), _recall(*s)) for s in pages)
    ]
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4),
        "mean_page_f1": round(sum(page_f1) / len(page_f1), 4),
    }


def _ground_truth() -> dict[str, str]:
    data = json.loads((EXTRACTION_DIR / "ground-truth.json").read_text(encoding="utf-8"))
    return {key: value.get("articleBody", "") for key, value in data.items()}


def extraction_quality(mode: str) -> dict[str, Any]:
    from training.core.pipeline.extract import extract
    from training.core.pipeline.sources import decode_html

    truth = _ground_truth()
    pages = {
        key: decode_html(gzip.decompress((EXTRACTION_DIR / "html" / f"{key}.html.gz").read_bytes()))
        or ""
        for key in truth
    }
    extract("<html><body><p>warm up</p></body></html>", mode, timeout=0)
    predictions, slowest = {}, 0.0
    started = time.perf_counter()
    for key, html in pages.items():
        page_started = time.perf_counter()
        predictions[key] = extract(html, mode, timeout=0)
        slowest = max(slowest, time.perf_counter() - page_started)
    seconds = time.perf_counter() - started
    return score(truth, predictions) | {
        "pages": len(pages),
        "pages_per_s": round(len(pages) / seconds, 1),
        "slowest_page_s": round(slowest, 3),
    }


def reference_f1() -> dict[str, float]:
    """F1 of the benchmark's shipped outputs under :func:`score` (published: 0.958, 0.665)."""
    truth = _ground_truth()
    result = {}
    for name in ("trafilatura", "html-text"):
        shipped = json.loads((EXTRACTION_DIR / f"output-{name}.json").read_text(encoding="utf-8"))
        outputs = shipped.get("output", shipped)
        predictions = {key: value.get("articleBody", "") for key, value in outputs.items()}
        result[name] = score(truth, predictions)["f1"]
    return result


# --- report -----------------------------------------------------------------------------------


def _report(
    args: argparse.Namespace,
    repeats: int,
    files: int,
    throughput: dict[str, dict[str, Any]],
    extraction: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    from training.core.pipeline.langid import cache_root

    cache = cache_root()
    report: dict[str, Any] = {
        "input": {
            "warc_files": files // repeats,
            "repeats": repeats,
            "workers": args.workers,
            "langid_cache": str(cache) if cache else "off",
        },
        "throughput": throughput,
        "extraction": extraction,
        "reference_f1": reference_f1(),
        "versions": _versions(),
    }
    baseline = throughput.get("datatrove")
    goals = {}
    for mode, (min_speedup, min_f1) in GOALS.items():
        goal: dict[str, Any] = {"f1": extraction[mode]["f1"], "f1_goal": min_f1}
        goal["f1_met"] = extraction[mode]["f1"] >= min_f1
        if baseline:
            speedup = throughput[mode]["docs_per_s"] / baseline["docs_per_s"]
            goal |= {"speedup": round(speedup, 2), "speedup_goal": min_speedup}
            goal["speedup_met"] = speedup >= min_speedup
        goals[mode] = goal
    report["goals"] = goals
    return report


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("trafilatura", "resiliparse", "warcio", "py3langid", "numpy")
    return {name: version(name) for name in names} | {"python": sys.version.split()[0]}
