"""Schemathesis over the OpenAPI schema, as each role, against a real server (RELIABILITY.md S9).

``python -m stress.schema`` starts the app under gunicorn on a throwaway database (SQLite by
default), seeds one person per role with an API token and objects for them to act on (a project
with writing and ranking tasks, submitted and approved conversations, a snapshot, an uploaded
corpus, queued, failed and cancelled runs), reads the schema from ``/api/schema/``, then runs
``schemathesis run`` once per persona: labeler, reviewer, trainer, admin and anonymous.

The check that must hold is ``not_a_server_error``: no request, however malformed, answers 5xx.
Every 5xx is reported with its request (method, URL, body, persona, from schemathesis' HAR
recording) and the server's traceback (from the gunicorn log). ``--checks`` adds others
(``response_schema_conformance`` in the full form), reported but not failing unless
``--fail-on-all-checks``.

``POST /api/runs/`` is left out: it launches jobs (no worker runs in this harness, so they would
only queue, but the queue is not what is under test here).

Small form (CI): ``--max-examples 3 --phases examples,fuzzing``; full form (``make stress``):
``--max-examples 100 --phases examples,coverage,fuzzing,stateful``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stress import LiveServer, ServerError

PERSONAS = {  # persona -> (username, role); "anonymous" sends no token
    "labeler": ("lena", "labeler"),
    "reviewer": ("rita", "reviewer"),
    "trainer": ("tom", "trainer"),
    "admin": ("ada", "admin"),
    "anonymous": (None, None),
}
EXCLUDED_OPERATIONS = ["api_runs_create"]  # POST /api/runs/: launches jobs
SMALL = {"max_examples": 3, "phases": "examples,fuzzing"}
FULL = {"max_examples": 100, "phases": "examples,coverage,fuzzing,stateful"}


# --- seeding (in a Django process on the server's database) -----------------------------------


def seed(payload: dict[str, Any]) -> dict[str, Any]:
    """People with tokens, and a few objects of every kind the API addresses by id (a fresh
    database numbers them from 1, where generated ids land most often)."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.authtoken.models import Token

    from labeling import data, ranking, services
    from labeling.models import Item, TaskKind
    from training import services as training_services
    from training import uploads
    from training.models import RunStatus
    from webapp.models import User

    people, tokens = {}, {}
    extra = {"leo": "labeler", "tess": "trainer"}  # a second owner for "someone else's" objects
    for username, role in [*(v for v in PERSONAS.values() if v[0]), *extra.items()]:
        user = User.objects.create_user(username, f"{username}@example.org", role=role)
        if role == "admin":
            user.is_staff = user.is_superuser = True
            user.save()
        people[username] = user
        tokens[username] = Token.objects.create(user=user).key

    projects = []
    for number in range(3):
        project = services.project_create(
            user=people["tom"],
            name=f"Schema project {number}",
            system_prompts=["You are a helpful assistant."],
            required_turns=1,
            overlap=2,
        )
        services.items_add(project=project, kind=TaskKind.WRITE, count=10)
        Item.objects.bulk_create(
            [
                Item(
                    project=project,
                    kind=kind,
                    seed_messages=[{"role": "user", "content": f"Prompt {i}"}],
                    responses=[{"text": f"reply {r}", "sample": r} for r in range(replies)],
                    overlap=2,
                )
                for i, (kind, replies) in enumerate([(TaskKind.RANK, 3), (TaskKind.ARENA, 2)] * 3)
            ]
        )
        projects.append(project)
    project = projects[0]
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is a tide?"},
        {"role": "assistant", "content": "The rise and fall of the sea."},
    ]
    # Conversations in every state, by two labelers, and open tasks of every kind.
    for labeler in (people["lena"], people["leo"]):
        for _ in range(3):
            assignment = services.next_task(user=labeler, project=project)
            conversation = services.assignment_conversation(assignment=assignment)
            saved = services.conversation_save(
                conversation=conversation,
                user=labeler,
                messages=messages,
                expected_version=conversation.version,
            )
            services.conversation_submit(
                conversation=saved, user=labeler, expected_version=saved.version
            )
        services.next_task(user=labeler, project=project)  # left open (a draft)
    for number in range(3):
        services.conversation_create(
            project=project,
            user=people["tom"],
            messages=messages,
            tags=[f"seed-{number}"],
            source="api",
            status="approved",
        )
    snapshot = data.snapshot_create(project=project, user=people["tom"], name="seed snapshot")
    rank_item = Item.objects.filter(project=project, kind=TaskKind.RANK).first()
    for labeler in (people["lena"], people["rita"]):
        claim = services._try_claim(rank_item.pk, labeler, project)
        if claim is not None and labeler.username == "rita":
            ranking.ranking_submit(
                assignment=claim, user=labeler, ranking=ranking.RankingInput([[0], [1], [2]])
            )

    corpus = uploads.corpus_upload(
        uploaded=SimpleUploadedFile("c.txt", b"one document\n\nanother document\n" * 20),
        name="seed corpus",
        user=people["tom"],
    )
    runs = []
    for owner, config in (
        (people["tom"], {"steps": 5}),
        (people["tess"], {"steps": 5}),
        (people["tom"], {"steps": 5, "fail_at_step": 1}),
    ):
        runs.append(
            training_services.run_create(kind="countdown", config=config, inputs={}, user=owner)
        )
    from training.models import Run

    Run.objects.filter(pk=runs[2].pk).update(status=RunStatus.FAILED, error="seeded failure")
    Run.objects.filter(pk=runs[1].pk).update(status=RunStatus.CANCELLED)
    return {
        "tokens": tokens,
        "projects": [p.pk for p in projects],
        "snapshot": snapshot.pk,
        "corpus": corpus.pk,
        "runs": [r.pk for r in runs],
    }


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Config:
    db: str = "sqlite"
    max_examples: int = SMALL["max_examples"]
    phases: str = SMALL["phases"]
    checks: str = "not_a_server_error"
    personas: list[str] = field(default_factory=lambda: list(PERSONAS))
    workers: int = 2  # gunicorn worker processes
    threads: int = 4
    fuzz_workers: int = 2  # schemathesis' concurrent workers
    seed: int = 1
    max_time: int = 0  # per persona, seconds (0: no limit)
    fail_on_all_checks: bool = False
    keep_logs: Path | None = None
    output: Path | None = None


def schemathesis_command(
    cfg: Config, schema: Path, base_url: str, token: str | None, out: Path
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(schema),
        "--url",
        base_url,
        "--checks",
        cfg.checks,
        "--max-examples",
        str(cfg.max_examples),
        "--phases",
        cfg.phases,
        "--seed",
        str(cfg.seed),
        "--workers",
        str(cfg.fuzz_workers),
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "har,json",
        "--report-har-path",
        str(out / "requests.har"),
        "--report-json-path",
        str(out / "report.json"),
        "--suppress-health-check",
        "all",
    ]
    for operation in EXCLUDED_OPERATIONS:
        command += ["--exclude-operation-id", operation]
    if cfg.max_time:
        command += ["--max-time", str(cfg.max_time)]
    if token:
        command += ["--header", f"Authorization: Token {token}"]
    return command


def server_failures(har_path: Path, persona: str) -> list[dict[str, Any]]:
    """Every 5xx in schemathesis' recording, with the request that caused it."""
    try:
        har = json.loads(har_path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    found = []
    for entry in har.get("log", {}).get("entries", []):
        status = entry.get("response", {}).get("status", 0)
        if status < 500:
            continue
        request = entry.get("request", {})
        headers = {
            h["name"]: h["value"]
            for h in request.get("headers", [])
            if h["name"].lower() in ("content-type", "idempotency-key")
        }
        found.append(
            {
                "persona": persona,
                "status": status,
                "method": request.get("method"),
                "url": request.get("url"),
                "headers": headers,
                "body": (request.get("postData") or {}).get("text", "")[:2000],
                "response": (entry.get("response", {}).get("content") or {}).get("text", "")[:1000],
            }
        )
    return found


def interactions(har_path: Path) -> Counter:
    try:
        har = json.loads(har_path.read_text())
    except (FileNotFoundError, ValueError):
        return Counter()
    return Counter(
        str(e.get("response", {}).get("status", 0)) for e in har.get("log", {}).get("entries", [])
    )


def _path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url or "").split("?")[0]


def attach_tracebacks(failures: list[dict[str, Any]], errors: list[ServerError]) -> None:
    """Pair each 5xx with a traceback Django logged for the same path (in order)."""
    pool: dict[str, list[ServerError]] = {}
    for error in errors:
        match = re.search(r"Internal Server Error: (\S+)", error.request)
        pool.setdefault(match.group(1) if match else "", []).append(error)
    for failure in failures:
        candidates = pool.get(_path_of(failure["url"])) or pool.get("") or []
        if candidates:
            error = candidates.pop(0)
            failure["exception"] = error.exception
            failure["traceback"] = error.traceback[-4000:]


def group_failures(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (method, route, exception), with how often and who hit it."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for failure in failures:
        route = re.sub(r"/\d+(?=/|$)", "/{id}", _path_of(failure["url"]))
        key = (failure["method"], route, failure.get("exception", f"HTTP {failure['status']}"))
        entry = groups.setdefault(
            key,
            {
                "method": key[0],
                "route": key[1],
                "exception": key[2],
                "count": 0,
                "personas": set(),
                "example": failure,
            },
        )
        entry["count"] += 1
        entry["personas"].add(failure["persona"])
    return [{**g, "personas": sorted(g["personas"])} for g in groups.values()]


def run_schema(cfg: Config) -> dict[str, Any]:
    timings: dict[str, float] = {}
    began = time.monotonic()
    per_persona: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    with LiveServer(
        db=cfg.db,
        workers=cfg.workers,
        threads=cfg.threads,
        keep_dir=cfg.keep_logs,
        extra_env={"ORCHARD_EXTRA_RUN_KINDS": "tests.support.countdown.COUNTDOWN_KIND"},
    ) as server:
        seeded = server.django("stress.schema:seed", {})
        server.start()
        timings["setup_s"] = round(time.monotonic() - began, 1)
        schema_path = server.workdir / "openapi.json"
        request = urllib.request.Request(
            f"{server.base_url}/api/schema/?format=json",
            headers={"Authorization": f"Token {seeded['tokens']['ada']}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            schema_path.write_bytes(response.read())
        operations = sum(
            1
            for methods in json.loads(schema_path.read_text())["paths"].values()
            for method in methods
            if method in ("get", "put", "post", "patch", "delete")
        )
        for persona in cfg.personas:
            username = PERSONAS[persona][0]
            token = seeded["tokens"][username] if username else None
            out = server.workdir / f"schemathesis-{persona}"
            out.mkdir()
            started = time.monotonic()
            done = subprocess.run(
                schemathesis_command(cfg, schema_path, server.base_url, token, out),
                cwd=out,  # hypothesis and schemathesis write nothing into the repository
                capture_output=True,
                text=True,
                timeout=3600,
            )
            (out / "output.txt").write_text(done.stdout + done.stderr)
            try:
                report = json.loads((out / "report.json").read_text())
            except (FileNotFoundError, ValueError):
                report = {}
            found = server_failures(out / "requests.har", persona)
            failures.extend(found)
            per_persona[persona] = {
                "exit_code": done.returncode,
                "seconds": round(time.monotonic() - started, 1),
                "operations": report.get("operations"),
                "test_cases": report.get("test_cases"),
                "responses": dict(sorted(interactions(out / "requests.har").items())),
                "server_errors": len(found),
                "check_failures": [
                    {k: f.get(k) for k in ("title", "count", "operations")}
                    for f in report.get("failures", [])
                ],
                "errors": report.get("errors"),
                "output_tail": "" if report else (done.stdout + done.stderr)[-3000:],
            }
        server.stop()
        attach_tracebacks(failures, server.server_errors())
        unmatched = [
            {"request": e.request, "exception": e.exception}
            for e in server.server_errors()
            if not any(f.get("traceback") == e.traceback[-4000:] for f in failures)
        ]
        refused = len(server.refused_requests())
        logs_at = str(server.workdir) if cfg.keep_logs else None
    timings["total_s"] = round(time.monotonic() - began, 1)
    five = len(failures)
    problems = []
    if five:
        problems.append(f"{five} responses with 5xx")
    if unmatched:
        problems.append(f"{len(unmatched)} server tracebacks not matched to a recorded request")
    for persona, result in per_persona.items():
        if not result["test_cases"] or not result["test_cases"].get("generated"):
            problems.append(f"{persona}: schemathesis generated no test case")
        if result["errors"]:
            problems.append(f"{persona}: schemathesis errors {result['errors']}")
        if cfg.fail_on_all_checks and result["check_failures"]:
            problems.append(f"{persona}: check failures {result['check_failures']}")
    return {
        "ok": not problems,
        "problems": problems,
        "db": cfg.db,
        "schema_operations": operations,
        "excluded_operations": EXCLUDED_OPERATIONS,
        "max_examples": cfg.max_examples,
        "phases": cfg.phases,
        "checks": cfg.checks,
        "requests": sum(sum(r["responses"].values()) for r in per_persona.values()),
        "status_5xx": five,
        "personas": per_persona,
        "server_5xx_groups": group_failures(failures),
        "server_5xx": failures[:50],
        "unmatched_tracebacks": unmatched[:20],
        "refused_and_logged": refused,  # django.security errors (400s), e.g. RequestDataTooBig
        "logs_at": logs_at,
        "timings": timings,
    }


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m stress.schema", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="sqlite")
    parser.add_argument("--full", action="store_true", help="the nightly form (100 examples)")
    parser.add_argument("--max-examples", type=int)
    parser.add_argument("--phases")
    parser.add_argument("--checks", default="not_a_server_error")
    parser.add_argument("--personas", default=",".join(PERSONAS))
    parser.add_argument("--fuzz-workers", type=int, default=2)
    parser.add_argument("--max-time", type=int, default=0, help="per persona, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fail-on-all-checks", action="store_true")
    parser.add_argument("--keep-logs", type=Path)
    parser.add_argument("--output", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    form = FULL if args.full else SMALL
    personas = [p.strip() for p in args.personas.split(",") if p.strip()]
    unknown = set(personas) - set(PERSONAS)
    if unknown:
        parser.error(f"unknown personas {sorted(unknown)}; choose from {list(PERSONAS)}")
    return Config(
        db=args.db,
        max_examples=args.max_examples or form["max_examples"],
        phases=args.phases or form["phases"],
        checks=args.checks,
        personas=personas,
        fuzz_workers=args.fuzz_workers,
        seed=args.seed,
        max_time=args.max_time,
        fail_on_all_checks=args.fail_on_all_checks,
        keep_logs=args.keep_logs,
        output=args.output,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    summary = run_schema(cfg)
    text = json.dumps(summary, indent=2, default=str)
    if cfg.output:
        cfg.output.write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
