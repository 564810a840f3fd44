"""Getting conversations in and out: imports, seed data, tasks from files, dataset snapshots.

Parsing and writing live in :mod:`labeling.formats` (pure); this module adds the database: who
imported what, which conversations a snapshot holds, and the artifact the snapshot becomes.
"""

from __future__ import annotations

import difflib
import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from labeling import formats, services
from labeling.models import Conversation, ConversationStatus, Project, Revision, Snapshot, TaskKind
from labeling.turns import as_text, public_messages
from training import services as training_services
from training.models import ArtifactKind

SNAPSHOT_FILES = (
    "train.jsonl",
    "validation.jsonl",
    "train.parquet",
    "validation.parquet",
    "card.json",
    "README.md",
    "index.jsonl",
    "raw_rankings.jsonl",
)
IMPORT_BATCH = 500


# --- imports ----------------------------------------------------------------------------------


@dataclass
class ImportReport:
    imported: int = 0
    problems: list[formats.LineProblem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.problems)


def uploaded_lines(uploaded: Any) -> Iterator[bytes]:
    """Lines of an uploaded file, gunzipped when it starts with the gzip magic number."""
    uploaded.seek(0)
    head = uploaded.read(2)
    uploaded.seek(0)
    if head == b"\x1f\x8b":
        yield from gzip.GzipFile(fileobj=uploaded)
    else:
        yield from uploaded


def parse_upload(uploaded: Any, fmt: str, oasst_all_paths: bool = False) -> formats.ParseResult:
    lines = uploaded_lines(uploaded)
    try:
        if fmt == "oasst":
            return formats.parse_oasst_trees(lines, mode="all" if oasst_all_paths else "best")
        return formats.parse_auto(lines, format=None if fmt == "auto" else fmt)
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip file
        return formats.ParseResult(problems=[formats.LineProblem(0, f"unreadable file: {exc}")])


def import_conversations(
    *,
    project: Project,
    user: Any,
    uploaded: Any,
    fmt: str,
    status: str,
    tags: list[str],
    oasst_all_paths: bool = False,
) -> ImportReport:
    """Import every valid conversation; the invalid ones are reported by line, none silently."""
    parsed = parse_upload(uploaded, fmt, oasst_all_paths)
    report = ImportReport(problems=list(parsed.problems))
    now = timezone.now()
    for start in range(0, len(parsed.conversations), IMPORT_BATCH):
        batch = parsed.conversations[start : start + IMPORT_BATCH]
        with transaction.atomic():
            rows = Conversation.objects.bulk_create(
                [_imported_row(project, user, item, status, tags, now) for item in batch]
            )
            Revision.objects.bulk_create(
                [
                    Revision(
                        conversation=row,
                        version=1,
                        action=Revision.Action.IMPORT,
                        actor=user,
                        messages=row.messages,
                        note=f"{row.source} {row.source_id}".strip(),
                    )
                    for row in rows
                ]
            )
        report.imported += len(rows)
    return report


def _imported_row(
    project: Project,
    user: Any,
    item: formats.ImportedConversation,
    status: str,
    tags: list[str],
    now: Any,
) -> Conversation:
    item_tags = item.meta.get("tags") if isinstance(item.meta.get("tags"), list) else []
    submitted = status != ConversationStatus.DRAFT
    return Conversation(
        project=project,
        author=None,  # imported text was not written by the person who imported it
        status=status,
        messages=item.messages,
        tags=sorted({*tags, *map(str, item_tags)}),
        source=f"import:{item.source}"[:40],
        source_id=str(item.source_id)[:200],
        guideline_version=project.guideline_version,
        submitted_messages=item.messages if submitted else None,
        submitted_at=now if submitted else None,
    )


def items_from_form(*, project: Project, cleaned: dict[str, Any]) -> tuple[int, list[str]]:
    kind = cleaned["kind"]
    if kind == TaskKind.WRITE:
        return len(services.items_add(project=project, kind=kind, count=cleaned["count"])), []
    if kind == TaskKind.REPLY:
        prompts = [line.strip() for line in cleaned["prompts"].splitlines() if line.strip()]
        seeds = [[{"role": "user", "content": p}] for p in prompts]
        return len(services.items_add(project=project, kind=kind, seeds=seeds)), []
    parsed = parse_upload(cleaned["seed_file"], "auto")
    seeds = [c.messages for c in parsed.conversations]
    problems = [f"line {p.line}: {p.message}" for p in parsed.problems]
    return len(services.items_add(project=project, kind=kind, seeds=seeds)), problems


# --- seed data --------------------------------------------------------------------------------

IDENTITY_QUESTIONS = (
    ("Who are you?", "I'm {name}, an AI assistant made by {maker}. I can {purpose}."),
    ("What is your name?", "My name is {name}."),
    ("Who made you?", "I was built by {maker}."),
    (
        "Are you ChatGPT?",
        "No. I'm {name}, an assistant trained by {maker}, not a product of another company.",
    ),
    ("What can you do?", "I can {purpose}. {limitations_sentence}"),
    ("What can't you do?", "{limitations_sentence}"),
)


def seed_identity(
    *,
    project: Project,
    user: Any,
    assistant_name: str,
    maker: str,
    purpose: str,
    limitations: str,
    approve: bool = False,
) -> list[Conversation]:
    limits = [line.strip().rstrip(".") + "." for line in limitations.splitlines() if line.strip()]
    values = {
        "name": assistant_name.strip(),
        "maker": maker.strip(),
        "purpose": purpose.strip().rstrip("."),
        "limitations_sentence": " ".join(limits) or "I can make mistakes.",
    }
    system = project.system_prompts[:1]
    conversations = []
    for question, answer in IDENTITY_QUESTIONS:
        messages = [{"role": "system", "content": p} for p in system] + [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer.format(**values).strip()},
        ]
        conversations.append(_seed(project, user, messages, "identity", approve))
    return conversations


def seed_idk(
    *, project: Project, user: Any, questions: str, answer: str, approve: bool = False
) -> list[Conversation]:
    system = project.system_prompts[:1]
    conversations = []
    for question in (q.strip() for q in questions.splitlines()):
        if not question:
            continue
        messages = [{"role": "system", "content": p} for p in system] + [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer.strip()},
        ]
        conversations.append(_seed(project, user, messages, "idk", approve))
    return conversations


def _seed(project: Project, user: Any, messages: list[dict], tag: str, approve: bool) -> Any:
    status = ConversationStatus.APPROVED if approve else ConversationStatus.SUBMITTED
    return services.conversation_create(
        project=project,
        user=user,
        messages=messages,
        tags=[tag],
        source=f"seed:{tag}",
        status=status,
    )


# --- snapshots --------------------------------------------------------------------------------


def approved_conversations(*, project: Project, tags: list[str] | None = None) -> Any:
    conversations = Conversation.objects.filter(
        project=project, status=ConversationStatus.APPROVED
    ).order_by("id")
    if tags:
        # JSON "contains" is not on SQLite, so filter ids in Python: snapshots are rare.
        ids = [c.pk for c in conversations.only("id", "tags") if set(tags) & set(c.tags)]
        conversations = conversations.filter(pk__in=ids)
    return conversations


def snapshot_create(
    *,
    project: Project,
    user: Any,
    name: str,
    validation_fraction: float = 0.1,
    tags: list[str] | None = None,
) -> Snapshot:
    """Write the approved conversations as an immutable dataset artifact and record its lineage."""
    conversations = list(
        approved_conversations(project=project, tags=tags).select_related("author")
    )
    if not conversations:
        raise ValueError(
            "No approved conversations to export"
            + (f" with the tags {', '.join(tags)}" if tags else "")
            + ": review some first."
        )
    items = [
        formats.SnapshotItem(
            id=c.pk,
            messages=public_messages(c.messages),
            meta={
                "tags": c.tags,
                "author": c.author.username if c.author else None,
                "source": c.source,
                "guideline_version": c.guideline_version,
                "version": c.version,
            },
        )
        for c in conversations
    ]
    extra = {
        "project": project.name,
        "labelers": sorted({c.author.username for c in conversations if c.author}),
        "guideline_versions": sorted({c.guideline_version or 0 for c in conversations}),
        "current_guideline_version": project.guideline_version,
        "tags_filter": tags or [],
    }
    staging = Path(tempfile.mkdtemp(prefix="snapshot-", dir=training_services.artifacts_root()))
    try:
        card = formats.write_snapshot(
            items,
            staging,
            validation_fraction=validation_fraction,
            salt=f"project-{project.pk}",
            card_extra=extra,
        )
        with transaction.atomic():
            artifact = training_services.artifact_register_dir(
                source=staging,
                kind=ArtifactKind.DATASET,
                name=name,
                run=None,
                parents=[],
                user=user,
                meta={"stage": "sft-data", "card": card.to_dict(), "project": project.pk},
            )
            snapshot = Snapshot.objects.create(
                project=project, artifact=artifact, card=card.to_dict(), created_by=user
            )
            snapshot.conversations.set(conversations)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when registered
    return snapshot


def snapshot_preview(snapshot: Snapshot, limit: int) -> list[dict[str, Any]]:
    path = snapshot.artifact.abspath() / "train.jsonl"
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) >= limit:
                break
    return rows


# --- history ----------------------------------------------------------------------------------


def revision_diffs(revisions: list[Revision]) -> list[dict[str, Any]]:
    """Each revision with a line diff against the one before it, for the audit page."""
    entries = []
    previous = ""
    for revision in revisions:
        text = as_text(revision.messages)
        diff = list(
            difflib.unified_diff(previous.splitlines(), text.splitlines(), lineterm="", n=1)
        )[2:]
        entries.append({"revision": revision, "diff": diff})
        previous = text
    return entries
