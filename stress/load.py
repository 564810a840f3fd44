"""Simulated labelers against a real server (RELIABILITY.md L1, L1-lite, L2).

``python -m stress.load --db postgres --labelers 50 --seconds 300`` starts the app under gunicorn
(several worker processes) on a throwaway database, seeds a project with writing, ranking and
arena tasks, and lets N labelers (asyncio + httpx, one token each) work for D seconds:
next-task, save (PUT with ``version``), sometimes an autosave more, submit; rankings and arena
votes for response tasks. On purpose, some of them

* save with a stale version (must be 409, never a silent overwrite),
* send an invalid ranking first (must be 400),
* repeat a submit with the same ``Idempotency-Key``, one after another or ten at once,

and a trainer bulk-creates conversations ten times at once with one ``Idempotency-Key`` (the
issue's "the same idempotency key ten times makes one record"). The client keeps a ledger of every
acknowledged (2xx) submission; afterwards the database is checked against it: nothing acked is
missing, nothing is there twice, no item beyond its overlap. Prints a JSON summary; exit status 1
when a check failed.

Idempotency is required (a duplicate is a failure) when ``labeling/api.py`` handles the header
(``--idempotency auto``, the default) or with ``--idempotency require``; otherwise what happened
is reported and does not fail the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stress import KEEPALIVE_CLIENT_S, REPO, LiveServer, percentiles

SYSTEM_PROMPT = "You are a helpful assistant."
BURST = 10  # the same key sent this many times at once


def idempotency_in_api() -> bool:
    """Whether the labeling API handles an ``Idempotency-Key`` header (read from its source,
    so this harness turns strict by itself once the feature lands)."""
    source = (REPO / "labeling" / "api.py").read_text()
    return "idempotency" in source.lower()


@dataclass
class Config:
    db: str = "sqlite"
    labelers: int = 8
    seconds: float = 15
    workers: int = 3
    threads: int = 4
    overlap: int = 2
    write_items: int = 0  # 0: sized from labelers (the queue is topped up when it runs dry)
    rank_items: int = 0
    arena_items: int = 0
    think: float = 0.02  # mean pause between a labeler's steps, seconds
    stale_share: float = 0.05
    autosave_share: float = 0.2
    retry_share: float = 0.1
    burst_share: float = 0.03
    invalid_ranking_share: float = 0.05
    bulk_every: float = 5.0  # seconds between the trainer's 10x same-key bulk creates
    idempotency: str = "auto"  # auto | require | strict | report
    seed: int = 0
    request_timeout: float = 120
    keep_logs: Path | None = None
    output: Path | None = None

    def sized(self) -> Config:
        if not self.write_items:
            self.write_items = max(20, self.labelers * 6)
        if not self.rank_items:
            self.rank_items = max(6, self.labelers * 2)
        if not self.arena_items:
            self.arena_items = max(4, self.labelers)
        return self


# --- seeding and verification (run in a Django process on the server's database) -------------


def seed(payload: dict[str, Any]) -> dict[str, Any]:
    from rest_framework.authtoken.models import Token

    from labeling import services
    from labeling.models import Item, TaskKind
    from webapp.models import User

    trainer = User.objects.create_user("stress-trainer", role="trainer")
    project = services.project_create(
        user=trainer,
        name="Stress",
        system_prompts=[SYSTEM_PROMPT],
        required_turns=1,
        overlap=payload["overlap"],
    )
    rng = random.Random(payload["seed"])
    kinds = (
        [TaskKind.WRITE] * payload["write_items"]
        + [TaskKind.RANK] * payload["rank_items"]
        + [TaskKind.ARENA] * payload["arena_items"]
    )
    rng.shuffle(kinds)  # mixed, so every labeler meets every kind early
    items = []
    for number, kind in enumerate(kinds):
        prompt = [{"role": "user", "content": f"Stress prompt {number}: explain tides."}]
        if kind == TaskKind.WRITE:
            items.append(Item(project=project, kind=kind, overlap=project.overlap))
            continue
        replies = 2 if kind == TaskKind.ARENA else 3
        items.append(
            Item(
                project=project,
                kind=kind,
                seed_messages=prompt,
                responses=[
                    {"text": f"reply {r} to {number}", "checkpoint": None, "sample": r}
                    for r in range(replies)
                ],
                overlap=project.overlap,
            )
        )
    Item.objects.bulk_create(items)
    labelers = []
    for index in range(payload["labelers"]):
        user = User.objects.create_user(f"stress-labeler-{index:03}", role="labeler")
        labelers.append({"id": user.pk, "token": Token.objects.create(user=user).key})
    return {
        "project": project.pk,
        "trainer": {"id": trainer.pk, "token": Token.objects.create(user=trainer).key},
        "labelers": labelers,
    }


def verify(payload: dict[str, Any]) -> dict[str, Any]:
    """The database against the client's ledger of acknowledged submissions."""
    from django.db.models import Count, Q

    from labeling.models import (
        Assignment,
        AssignmentStatus,
        Conversation,
        ConversationStatus,
        Item,
        Ranking,
        Revision,
    )

    project = payload["project"]
    labeler_ids = payload["labeler_ids"]
    acked_conversations = set(payload["acked_conversations"])
    found = {
        c.pk: c
        for c in Conversation.objects.filter(pk__in=acked_conversations).select_related(
            "assignment"
        )
    }
    lost_conversations = sorted(
        pk
        for pk in acked_conversations
        if pk not in found
        or found[pk].status == ConversationStatus.DRAFT
        or found[pk].submitted_at is None
        or found[pk].assignment is None
        or found[pk].assignment.status != AssignmentStatus.DONE
    )
    submit_revisions = Counter(
        Revision.objects.filter(
            conversation__project_id=project,
            conversation__author_id__in=labeler_ids,
            action=Revision.Action.SUBMIT,
        ).values_list("conversation_id", flat=True)
    )
    submitted_twice = sorted(pk for pk, n in submit_revisions.items() if n > 1)
    submitted_in_db = set(
        Conversation.objects.filter(project_id=project, author_id__in=labeler_ids)
        .exclude(status=ConversationStatus.DRAFT)
        .exclude(source="ranking")
        .values_list("pk", flat=True)
    )

    acked_rankings = {int(r): int(a) for r, a in payload["acked_rankings"]}
    rankings = {
        r.pk: r for r in Ranking.objects.filter(pk__in=acked_rankings).select_related("item")
    }
    assignments = {a.pk: a for a in Assignment.objects.filter(pk__in=acked_rankings.values())}
    lost_rankings = sorted(
        pk
        for pk, assignment_id in acked_rankings.items()
        if pk not in rankings
        or assignment_id not in assignments
        or rankings[pk].item_id != assignments[assignment_id].item_id
        or rankings[pk].labeler_id != assignments[assignment_id].labeler_id
        or assignments[assignment_id].status != AssignmentStatus.DONE
    )
    rankings_in_db = Ranking.objects.filter(
        item__project_id=project, labeler_id__in=labeler_ids
    ).count()

    duplicate_assignments = list(
        Assignment.objects.filter(item__project_id=project)
        .values("item_id", "labeler_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("item_id", "labeler_id", "n")
    )
    duplicate_rankings = list(
        Ranking.objects.filter(item__project_id=project, labeler__isnull=False)
        .values("item_id", "labeler_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("item_id", "labeler_id", "n")
    )
    holding = (AssignmentStatus.ACTIVE, AssignmentStatus.DONE)
    items = Item.objects.filter(project_id=project).annotate(
        holding=Count("assignments", filter=Q(assignments__status__in=holding), distinct=True),
        done=Count(
            "assignments",
            filter=Q(assignments__status=AssignmentStatus.DONE),
            distinct=True,
        ),
        ranked=Count("rankings", distinct=True),
        submitted=Count(
            "assignments__conversation",
            filter=~Q(assignments__conversation__status=ConversationStatus.DRAFT),
            distinct=True,
        ),
    )
    over_overlap, taken_mismatch = [], []
    done_total = 0
    for item in items:
        done_total += item.done
        if max(item.taken, item.done, item.ranked, item.submitted) > item.overlap:
            over_overlap.append(
                {
                    "item": item.pk,
                    "overlap": item.overlap,
                    "taken": item.taken,
                    "done": item.done,
                    "ranked": item.ranked,
                    "submitted": item.submitted,
                }
            )
        if item.taken != item.holding:
            taken_mismatch.append({"item": item.pk, "taken": item.taken, "holding": item.holding})

    bulk = dict.fromkeys(payload["bulk_markers"], 0)
    api_tags = Conversation.objects.filter(project_id=project, source="api").values_list(
        "tags", flat=True
    )
    for tags in api_tags:  # (JSON "contains" is not available on SQLite)
        for tag in tags or []:
            if tag in bulk:
                bulk[tag] += 1
    return {
        "acked_conversations": len(acked_conversations),
        "lost_conversations": lost_conversations,
        "conversations_submitted_in_db": len(submitted_in_db),
        "submitted_without_ack": len(submitted_in_db - acked_conversations),
        "conversations_submitted_twice": submitted_twice,
        "acked_rankings": len(acked_rankings),
        "lost_rankings": lost_rankings,
        "rankings_in_db": rankings_in_db,
        "duplicate_assignments": duplicate_assignments,
        "duplicate_rankings": duplicate_rankings,
        "items_over_overlap": over_overlap,
        "taken_mismatch": taken_mismatch,
        "assignments_done": done_total,
        "bulk_records_per_key": bulk,
    }


# --- the simulated crowd ----------------------------------------------------------------------


@dataclass
class Ledger:
    """What the clients saw, for the summary and for the database check."""

    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    acked_conversations: set[int] = field(default_factory=set)
    acked_rankings: dict[int, int] = field(default_factory=dict)  # ranking id -> assignment id
    idempotency: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    bulk_markers: list[str] = field(default_factory=list)
    bulk_responses: list[dict[str, Any]] = field(default_factory=list)

    def note(self, what: str, detail: dict[str, Any]) -> None:
        if len(self.unexpected) < 200:
            self.unexpected.append({"what": what, **detail})


class Crowd:
    def __init__(self, cfg: Config, base_url: str, seeded: dict[str, Any]) -> None:
        import httpx

        self.cfg = cfg
        self.project = seeded["project"]
        self.seeded = seeded
        self.ledger = Ledger()
        self.rng = random.Random(cfg.seed)
        self.deadline = 0.0
        self.feed_lock = asyncio.Lock()
        self.feed_generation = 0
        limits = httpx.Limits(
            max_connections=cfg.labelers * BURST + 20,
            max_keepalive_connections=200,
            keepalive_expiry=KEEPALIVE_CLIENT_S,
        )
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=cfg.request_timeout, limits=limits
        )

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def call(
        self,
        op: str,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        key: str | None = None,
    ) -> Any:
        """One request, timed and counted; None on a transport error (also counted)."""
        import httpx

        headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        started = time.perf_counter()
        try:
            response = await self.client.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            self.ledger.statuses[op]["transport"] += 1
            if len(self.ledger.transport_errors) < 100:
                self.ledger.transport_errors.append(
                    {"op": op, "method": method, "path": path, "error": repr(exc)}
                )
            return None
        elapsed = time.perf_counter() - started
        self.ledger.statuses[op][response.status_code] += 1
        self.ledger.latencies[op].append(elapsed)
        if response.status_code >= 500 and len(self.ledger.server_errors) < 100:
            self.ledger.server_errors.append(
                {
                    "op": op,
                    "method": method,
                    "path": path,
                    "status": response.status_code,
                    "request": body,
                    "response": response.text[:1000],
                    "at": time.time(),
                }
            )
        return response

    async def think(self) -> None:
        if self.cfg.think:
            await asyncio.sleep(self.rng.expovariate(1 / self.cfg.think))

    # --- the labeler ---------------------------------------------------------------------------

    async def labeler(self, who: dict[str, Any]) -> None:
        token = who["token"]
        while self.running():
            generation = self.feed_generation
            response = await self.call(
                "next_task", "POST", f"/api/labeling/projects/{self.project}/next-task/", token
            )
            if response is None or response.status_code >= 500:
                await asyncio.sleep(0.2)
                continue
            if response.status_code == 204:
                await self.top_up(generation)
                continue
            if response.status_code != 200:
                self.ledger.note("next_task", {"status": response.status_code})
                await asyncio.sleep(0.2)
                continue
            task = response.json()
            await self.think()
            if "assignment" in task:
                await self.rank(token, task)
            else:
                await self.write(token, task)
            await self.think()

    async def write(self, token: str, conversation: dict[str, Any]) -> None:
        cid, version = conversation["id"], conversation["version"]
        path = f"/api/labeling/conversations/{cid}/"
        turn = self.rng.randrange(10**6)
        messages = [
            *conversation["messages"],
            {"role": "user", "content": f"Question {turn} from {token[:6]}"},
            {"role": "assistant", "content": f"An answer to question {turn}."},
        ]
        saved = await self.call(
            "save", "PUT", path, token, {"messages": messages, "version": version}
        )
        if saved is None or saved.status_code != 200:
            if saved is not None and saved.status_code < 500:
                self.ledger.note("save", {"status": saved.status_code, "body": saved.text[:300]})
            return
        new_version = saved.json()["version"]
        if self.rng.random() < self.cfg.stale_share:
            # A second tab still on the version the task opened with: must not overwrite.
            stale = await self.call(
                "stale_save",
                "PUT",
                path,
                token,
                {
                    "messages": [*messages[:-1], {"role": "assistant", "content": "stale"}],
                    "version": version,
                },  # fmt: skip
            )
            if stale is not None and stale.status_code != 409:
                self.ledger.note("stale_save", {"status": stale.status_code, "conversation": cid})
        if self.rng.random() < self.cfg.autosave_share:
            messages[-1] = {"role": "assistant", "content": f"A better answer to {turn}."}
            again = await self.call(
                "save", "PUT", path, token, {"messages": messages, "version": new_version}
            )
            if again is None or again.status_code != 200:
                return
            new_version = again.json()["version"]
        await self.think()
        body = {"version": new_version}
        submit_path = f"/api/labeling/conversations/{cid}/submit/"
        key = str(uuid.uuid4())
        if self.rng.random() < self.cfg.burst_share:
            responses = await asyncio.gather(
                *(
                    self.call("submit_burst", "POST", submit_path, token, body, key)
                    for _ in range(BURST)
                )
            )
            self._judge_burst("conversation_submit", responses, "id")
            if any(r is not None and r.status_code == 200 for r in responses):
                self.ledger.acked_conversations.add(cid)
            return
        first = await self.call("submit", "POST", submit_path, token, body, key)
        if first is None:
            return
        if first.status_code != 200:
            if first.status_code < 500:
                self.ledger.note("submit", {"status": first.status_code, "body": first.text[:300]})
            return
        self.ledger.acked_conversations.add(cid)
        if self.rng.random() < self.cfg.retry_share:
            # The answer was lost on the way back: the client sends the same request again.
            retry = await self.call("submit_retry", "POST", submit_path, token, body, key)
            self._judge_retry("conversation_submit", first, retry, "id")

    async def rank(self, token: str, task: dict[str, Any]) -> None:
        assignment = task["assignment"]
        path = f"/api/labeling/tasks/{assignment}/ranking/"
        count = len(task["responses"])
        if self.rng.random() < self.cfg.invalid_ranking_share:
            bad = await self.call(
                "ranking_invalid", "POST", path, token, {"order": [[0], [0]]}
            )  # a duplicate index: never a permutation
            if bad is not None and bad.status_code != 400:
                self.ledger.note("ranking_invalid", {"status": bad.status_code})
        if task["kind"] == "arena":
            body: dict[str, Any] = {"vote": self.rng.choice(["a", "b", "tie", "both_bad"])}
        else:
            order = list(range(count))
            self.rng.shuffle(order)
            tiers = [[i] for i in order]
            if count > 2 and self.rng.random() < 0.2:
                tiers = [tiers[0] + tiers[1], *tiers[2:]]  # a tie
            body = {"order": tiers}
        await self.think()
        key = str(uuid.uuid4())
        if self.rng.random() < self.cfg.burst_share:
            responses = await asyncio.gather(
                *(self.call("ranking_burst", "POST", path, token, body, key) for _ in range(BURST))
            )
            self._judge_burst("ranking_submit", responses, "ranking")
            for response in responses:
                if response is not None and response.status_code == 201:
                    self.ledger.acked_rankings[response.json()["ranking"]] = assignment
            return
        first = await self.call("ranking", "POST", path, token, body, key)
        if first is None:
            return
        if first.status_code != 201:
            if first.status_code < 500:
                self.ledger.note("ranking", {"status": first.status_code, "body": first.text[:300]})
            return
        self.ledger.acked_rankings[first.json()["ranking"]] = assignment
        if self.rng.random() < self.cfg.retry_share:
            retry = await self.call("ranking_retry", "POST", path, token, body, key)
            self._judge_retry("ranking_submit", first, retry, "ranking")

    def _judge_retry(self, what: str, first: Any, retry: Any, id_field: str) -> None:
        counts = self.ledger.idempotency[f"{what}_retry"]
        counts["sent"] += 1
        if retry is None:
            counts["transport_error"] += 1
        elif retry.status_code == first.status_code and _same(first, retry, id_field):
            counts["same_response"] += 1
        elif retry.status_code < 300:
            counts["acted_again"] += 1  # a 2xx with another record: a duplicate
            self.ledger.note(
                f"{what}_retry", {"first": first.text[:200], "retry": retry.text[:200]}
            )
        else:
            counts[f"refused_{retry.status_code}"] += 1

    def _judge_burst(self, what: str, responses: list[Any], id_field: str) -> None:
        counts = self.ledger.idempotency[f"{what}_burst"]
        counts["bursts"] += 1
        ok = [r for r in responses if r is not None and r.status_code < 300]
        ids = {_record_id(r, id_field) for r in ok}
        counts["responses_2xx"] += len(ok)
        for response in responses:
            if response is None or response.status_code >= 300:
                code = "transport" if response is None else response.status_code
                counts[f"responses_{code}"] += 1
                if response is not None and counts[f"responses_{code}"] <= 3:
                    self.ledger.note(
                        f"{what}_burst",
                        {"status": code, "body": response.text[:300]},
                    )
        if len(ids) > 1:
            counts["bursts_with_several_records"] += 1
        if len(ok) == len(responses) and len(ids) == 1:
            counts["bursts_all_same_2xx"] += 1

    # --- the trainer ---------------------------------------------------------------------------

    async def top_up(self, generation: int) -> None:
        """A labeler found the queue empty: the trainer adds items (once per empty queue)."""
        async with self.feed_lock:
            if generation != self.feed_generation or not self.running():
                return
            response = await self.call(
                "items_add",
                "POST",
                f"/api/labeling/projects/{self.project}/items/",
                self.seeded["trainer"]["token"],
                {"kind": "write", "count": max(20, self.cfg.labelers * 4)},
            )
            if response is not None and response.status_code == 201:
                self.feed_generation += 1
            else:
                await asyncio.sleep(0.5)

    async def bulk_creator(self) -> None:
        """Ten identical bulk creates at once with one key: one record is the goal (L2)."""
        token = self.seeded["trainer"]["token"]
        path = f"/api/labeling/projects/{self.project}/conversations/"
        while self.running():
            await asyncio.sleep(self.cfg.bulk_every)
            if not self.running():
                return
            key = str(uuid.uuid4())
            marker = f"idem-{key[:30]}"
            body = {
                "conversations": [
                    {
                        "messages": [
                            {"role": "user", "content": "Bulk question"},
                            {"role": "assistant", "content": "Bulk answer"},
                        ],
                        "tags": [marker],
                    }
                ],
                "status": "submitted",
            }
            responses = await asyncio.gather(
                *(self.call("bulk_create", "POST", path, token, body, key) for _ in range(BURST))
            )
            self.ledger.bulk_markers.append(marker)
            self.ledger.bulk_responses.append(
                {
                    "marker": marker,
                    "statuses": sorted(str(r.status_code) if r else "transport" for r in responses),
                    "created": sorted(
                        {
                            tuple(r.json().get("created", []))
                            for r in responses
                            if r and r.status_code == 201
                        }
                    ),
                }
            )

    async def run(self) -> None:
        self.deadline = time.monotonic() + self.cfg.seconds
        try:
            tasks = [asyncio.create_task(self.labeler(w)) for w in self.seeded["labelers"]]
            tasks.append(asyncio.create_task(self.bulk_creator()))
            await asyncio.gather(*tasks)
        finally:
            await self.client.aclose()


def _record_id(response: Any, id_field: str) -> Any:
    try:
        return response.json().get(id_field)
    except ValueError:
        return None


def _same(first: Any, retry: Any, id_field: str) -> bool:
    try:
        return first.json() == retry.json() or (
            _record_id(first, id_field) == _record_id(retry, id_field)
            and first.json().get("version") == retry.json().get("version")
        )
    except ValueError:
        return False


# --- the run ----------------------------------------------------------------------------------


def run_load(cfg: Config) -> dict[str, Any]:
    cfg.sized()
    strict = cfg.idempotency in ("require", "strict") or (
        cfg.idempotency == "auto" and idempotency_in_api()
    )
    timings: dict[str, float] = {}
    began = time.monotonic()
    with LiveServer(
        db=cfg.db, workers=cfg.workers, threads=cfg.threads, keep_dir=cfg.keep_logs
    ) as server:
        timings["setup_s"] = round(time.monotonic() - began, 1)
        seeded = server.django(
            "stress.load:seed",
            {
                "labelers": cfg.labelers,
                "overlap": cfg.overlap,
                "write_items": cfg.write_items,
                "rank_items": cfg.rank_items,
                "arena_items": cfg.arena_items,
                "seed": cfg.seed,
            },
        )
        server.start()
        crowd = Crowd(cfg, server.base_url, seeded)
        started = time.monotonic()
        asyncio.run(crowd.run())
        timings["load_s"] = round(time.monotonic() - started, 1)
        ledger = crowd.ledger
        checked = server.django(
            "stress.load:verify",
            {
                "project": seeded["project"],
                "labeler_ids": [w["id"] for w in seeded["labelers"]],
                "acked_conversations": sorted(ledger.acked_conversations),
                "acked_rankings": sorted(ledger.acked_rankings.items()),
                "bulk_markers": ledger.bulk_markers,
            },
        )
        server.stop()
        log = server.log_text()
        tracebacks = server.server_errors()
        logs_at = str(server.workdir) if cfg.keep_logs else None
    timings["total_s"] = round(time.monotonic() - began, 1)
    return summarize(cfg, ledger, checked, log, tracebacks, timings, strict, logs_at)


def summarize(
    cfg: Config,
    ledger: Ledger,
    checked: dict[str, Any],
    log: str,
    tracebacks: list[Any],
    timings: dict[str, float],
    strict: bool,
    logs_at: str | None,
) -> dict[str, Any]:
    all_codes: Counter = Counter()
    for counts in ledger.statuses.values():
        all_codes.update(counts)
    requests = sum(n for code, n in all_codes.items() if code != "transport")
    five = sum(n for code, n in all_codes.items() if isinstance(code, int) and code >= 500)
    four = {
        str(code): n for code, n in sorted(all_codes.items(), key=lambda kv: str(kv[0]))
        if isinstance(code, int) and 400 <= code < 500
    }  # fmt: skip
    submit_ops = ("submit", "submit_burst", "ranking", "ranking_burst")
    submit_latencies = [t for op in submit_ops for t in ledger.latencies.get(op, [])]
    bulk_counts = checked["bulk_records_per_key"]
    bulk_duplicated = {m: n for m, n in bulk_counts.items() if n > 1}
    bulk_missing = [
        r["marker"]
        for r in ledger.bulk_responses
        if any(s == "201" for s in r["statuses"]) and bulk_counts.get(r["marker"], 0) == 0
    ]
    retries = {k: dict(v) for k, v in ledger.idempotency.items()}
    acted_again = sum(v.get("acted_again", 0) for v in ledger.idempotency.values())
    several = sum(v.get("bursts_with_several_records", 0) for v in ledger.idempotency.values())
    supported = any(
        v.get("same_response", 0) for k, v in ledger.idempotency.items() if k.endswith("_retry")
    )

    problems = []
    if five:
        problems.append(f"{five} responses with 5xx")
    if ledger.transport_errors:
        problems.append(f"{len(ledger.transport_errors)} transport errors (timeouts, resets)")
    if tracebacks:
        problems.append(f"{len(tracebacks)} tracebacks in the server log")
    for name in (
        "lost_conversations",
        "lost_rankings",
        "conversations_submitted_twice",
        "duplicate_assignments",
        "duplicate_rankings",
        "items_over_overlap",
        "taken_mismatch",
    ):
        if checked[name]:
            problems.append(f"{name}: {checked[name][:20]}")
    for entry in ledger.unexpected:
        if entry["what"] in ("stale_save", "ranking_invalid"):
            problems.append(f"{entry['what']} answered {entry['status']}, not 409/400")
    if bulk_missing:
        problems.append(f"bulk create acked but no record for {bulk_missing[:5]}")
    idem_problems = []
    if bulk_duplicated:
        idem_problems.append(
            f"{len(bulk_duplicated)} of {len(bulk_counts)} bulk idempotency keys made "
            f"{sorted(set(bulk_duplicated.values()))} records"
        )
    if acted_again or several:
        idem_problems.append(f"{acted_again + several} repeated submits acted again")
    # L2 asks more than one record: every one of the ten racing requests answers with the same
    # 2xx. A racing copy that answers 409/400 (it lost the row lock, then saw the new version)
    # made no second record, but the client is told its submit failed.
    bursts = {k: v for k, v in ledger.idempotency.items() if k.endswith("_burst")}
    uneven = sum(v["bursts"] - v.get("bursts_all_same_2xx", 0) for v in bursts.values())
    burst_notes = []
    if uneven:
        refused = Counter(
            {
                code: n
                for v in bursts.values()
                for code, n in v.items()
                if code.startswith("responses_") and code != "responses_2xx"
            }
        )
        burst_notes.append(
            f"{uneven} of {sum(v['bursts'] for v in bursts.values())} same-key bursts of "
            f"{BURST} did not all answer with the same 2xx ({dict(refused)}); "
            "one record each all the same"
        )
    if strict:
        problems.extend(idem_problems)
    if cfg.idempotency == "strict":
        problems.extend(burst_notes)
    lost = len(checked["lost_conversations"]) + len(checked["lost_rankings"])
    duplicates = (
        len(checked["conversations_submitted_twice"])
        + len(checked["duplicate_assignments"])
        + len(checked["duplicate_rankings"])
        + len(checked["items_over_overlap"])
    )
    return {
        "ok": not problems,
        "problems": problems,
        "db": cfg.db,
        "labelers": cfg.labelers,
        "seconds": cfg.seconds,
        "server": {"workers": cfg.workers, "threads": cfg.threads},
        "requests": requests,
        "requests_per_s": round(requests / max(timings.get("load_s", 1), 0.001), 1),
        "status_5xx": five,
        "status_4xx": four,
        "transport_errors": len(ledger.transport_errors),
        "submit_latency_ms": percentiles(submit_latencies),
        "latency_ms": {op: percentiles(v) for op, v in sorted(ledger.latencies.items())},
        "by_operation": {
            op: {str(k): n for k, n in sorted(c.items(), key=lambda kv: str(kv[0]))}
            for op, c in sorted(ledger.statuses.items())
        },
        "acked": {
            "conversations": checked["acked_conversations"],
            "rankings": checked["acked_rankings"],
        },
        "lost": lost,
        "duplicates": duplicates,
        "db_checks": checked,
        "idempotency": {
            "required": strict,
            "api_handles_header": supported,
            "repeats": retries,
            "bulk_keys": len(bulk_counts),
            "bulk_keys_with_duplicates": len(bulk_duplicated),
            "bulk_records_per_key": sorted(Counter(bulk_counts.values()).items()),
            "bulk_statuses": Counter(s for r in ledger.bulk_responses for s in r["statuses"]),
            "findings": idem_problems,
            "l2_burst_notes": burst_notes,
        },
        "server_5xx": ledger.server_errors[:20],
        "transport_error_samples": ledger.transport_errors[:10],
        "unexpected_4xx_samples": [
            e for e in ledger.unexpected if e["what"] not in ("stale_save", "ranking_invalid")
        ][:20],
        "server_log": {
            "tracebacks": [
                {"request": t.request, "exception": t.exception, "traceback": t.traceback[-3000:]}
                for t in tracebacks[:10]
            ],
            "database_is_locked": log.count("database is locked"),
            "at": logs_at,
        },
        "timings": timings,
    }


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m stress.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="sqlite")
    parser.add_argument("--labelers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--think", type=float, default=0.02, help="mean pause per step (s)")
    parser.add_argument(
        "--idempotency",
        choices=["auto", "require", "strict", "report"],
        default="auto",
        help="auto: duplicates from a repeated Idempotency-Key fail the run once "
        "labeling/api.py handles the header; strict: also fail when racing same-key requests "
        "do not all get the first answer (L2); report: never fail on them",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-logs", type=Path, help="keep the server's logs under this folder")
    parser.add_argument("--output", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    cfg = Config(
        db=args.db,
        labelers=args.labelers,
        seconds=args.seconds,
        workers=args.workers,
        threads=args.threads,
        overlap=args.overlap,
        think=args.think,
        idempotency=args.idempotency,
        seed=args.seed,
        keep_logs=args.keep_logs,
        output=args.output,
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    summary = run_load(cfg)
    text = json.dumps(summary, indent=2, default=str)
    if cfg.output:
        cfg.output.write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
