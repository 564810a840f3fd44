"""Ranking and arena tasks: generate replies, queue them, collect orderings, export pairs.

Replies come from a ``responses`` run (training), so a slow model never blocks a page; once the
run has succeeded its output becomes items in the project's ordinary task queue, with the same
lease, overlap and once-per-labeler rules as writing tasks. Each item's replies are shuffled once,
so every labeler sees the same order, and which checkpoint wrote which stays hidden.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from labeling import agreement, preferences
from labeling.models import (
    Assignment,
    AssignmentStatus,
    ConversationStatus,
    Item,
    Project,
    Ranking,
    ResponseBatch,
    Snapshot,
    SnapshotKind,
    TaskKind,
)
from labeling.services import LabelingRefused, conversation_create
from training import services as training_services
from training.models import Artifact, ArtifactKind, RunStatus
from training.reporting import without_nul

ARENA_SIDES = 2


# --- generating replies -----------------------------------------------------------------------


def responses_launch(
    *,
    project: Project,
    user: Any,
    kind: str,
    checkpoints: list[Artifact],
    prompts: list[list[dict]],
    config: dict[str, Any],
) -> ResponseBatch:
    """Queue a ``responses`` run for ``prompts`` and remember which project it feeds."""
    if kind not in (TaskKind.RANK, TaskKind.ARENA):
        raise LabelingRefused("Replies are generated for ranking or arena tasks.")
    if not prompts:
        raise LabelingRefused("Give at least one prompt.")
    if kind == TaskKind.ARENA and len(checkpoints) != ARENA_SIDES:
        raise LabelingRefused("The arena compares exactly two checkpoints.")
    if kind == TaskKind.RANK and not checkpoints:
        raise LabelingRefused("Choose at least one checkpoint.")
    prompts_file = _prompts_artifact(project, user, prompts)
    if kind == TaskKind.ARENA:
        config = {**config, "samples_per_checkpoint": 1}
    with transaction.atomic():
        run = training_services.run_create(
            kind="responses",
            config=config,
            inputs={"checkpoints": [c.pk for c in checkpoints], "prompts": [prompts_file.pk]},
            user=user,
        )
        return ResponseBatch.objects.create(
            project=project,
            kind=kind,
            run=run,
            checkpoints=[c.pk for c in checkpoints],
            created_by=user,
        )


def _prompts_artifact(project: Project, user: Any, prompts: list[list[dict]]) -> Artifact:
    staging = Path(tempfile.mkdtemp(prefix="prompts-", dir=training_services.artifacts_root()))
    try:
        with open(staging / "prompts.jsonl", "w", encoding="utf-8") as handle:
            for number, messages in enumerate(prompts, start=1):
                handle.write(json.dumps({"id": number, "prompt": messages}, ensure_ascii=False))
                handle.write("\n")
        return training_services.artifact_register_dir(
            source=staging,
            kind=ArtifactKind.DATASET,
            name=f"Prompts for {project.name}",
            run=None,
            parents=[],
            user=user,
            meta={"stage": "prompts", "project": project.pk, "prompts": len(prompts)},
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def batches_sync(*, project: Project) -> int:
    """Turn every finished batch of replies into items, exactly once; returns items created."""
    created = 0
    waiting = ResponseBatch.objects.filter(
        project=project, items_created=False, run__status=RunStatus.SUCCEEDED
    )
    for batch in waiting:
        with transaction.atomic():
            if not ResponseBatch.objects.filter(pk=batch.pk, items_created=False).update(
                items_created=True
            ):
                continue  # another request got there first
            created += len(_items_from_batch(batch))
    return created


def _items_from_batch(batch: ResponseBatch) -> list[Item]:
    output = Artifact.objects.filter(run=batch.run).first()
    if output is None:
        return []
    rows = []
    with open(output.abspath() / "responses.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    items = []
    for row in rows:
        shown = _shown_replies(batch, row)
        if len(shown) < 2:
            continue
        items.append(
            Item(
                project=batch.project,
                kind=batch.kind,
                seed_messages=row["prompt"],
                responses=shown,
                overlap=batch.project.overlap,
                batch=batch,
            )
        )
    return Item.objects.bulk_create(items)


def _shown_replies(batch: ResponseBatch, row: dict[str, Any]) -> list[dict[str, Any]]:
    replies = [
        {
            "text": without_nul(r["text"]),  # a model sampling raw bytes can write NUL
            "checkpoint": batch.checkpoints[r["checkpoint"]],
            "sample": r["sample"],
            "finish_reason": r.get("finish_reason", ""),
        }
        for r in row["responses"]
    ]
    if batch.kind == TaskKind.ARENA:
        firsts = {}
        for reply in replies:
            firsts.setdefault(reply["checkpoint"], reply)
        replies = list(firsts.values())[:ARENA_SIDES]
    # one shuffle per item, the same for everyone; seeded so a re-run would match
    random.Random(f"{batch.pk}:{row['id']}").shuffle(replies)
    return replies


# --- collecting rankings ----------------------------------------------------------------------


@dataclass
class RankingInput:
    order: list[list[int]]
    all_bad: bool = False
    better_answer: str = ""
    seconds_spent: int | None = None


def ranks_to_order(ranks: list[int]) -> list[list[int]]:
    """Per-response rank numbers (1 = best, equal numbers tie) as tiers of indices."""
    tiers: dict[int, list[int]] = {}
    for index, rank in enumerate(ranks):
        tiers.setdefault(rank, []).append(index)
    return [tiers[rank] for rank in sorted(tiers)]


VOTES = {
    "a": ([[0], [1]], False),
    "b": ([[1], [0]], False),
    "tie": ([[0, 1]], False),
    "both_bad": ([[0, 1]], True),
}


def ranking_submit(*, assignment: Assignment, user: Any, ranking: RankingInput) -> Ranking:
    """Record a labeler's ordering; anything but an exact permutation of what was shown is
    refused. A better answer the labeler wrote becomes an SFT conversation for review."""
    item = assignment.item
    if assignment.labeler_id != user.pk:
        raise LabelingRefused("This task is someone else's.")
    if item.kind not in (TaskKind.RANK, TaskKind.ARENA):
        raise LabelingRefused("This task is not a ranking.")
    problems = preferences.validate_ranking(
        preferences.Ranking(order=ranking.order, all_bad=ranking.all_bad), len(item.responses)
    )
    if problems:
        raise LabelingRefused(" ".join(problems))
    with transaction.atomic():
        current = Assignment.objects.select_for_update().get(pk=assignment.pk)
        if current.status != AssignmentStatus.ACTIVE or current.lease_expires_at < timezone.now():
            raise LabelingRefused("This task's lease has ended; take the next task.")
        better = None
        if ranking.better_answer.strip():
            better = conversation_create(
                project=item.project,
                user=user,
                messages=[
                    *item.seed_messages,
                    {"role": "assistant", "content": ranking.better_answer.strip()},
                ],
                tags=["better-answer"],
                source="ranking",
                status=ConversationStatus.SUBMITTED,
            )
        try:
            saved = Ranking.objects.create(
                item=item,
                labeler=user,
                order=ranking.order,
                all_bad=ranking.all_bad,
                better_answer=better,
                seconds_spent=ranking.seconds_spent,
            )
        except IntegrityError:
            raise LabelingRefused("You already ranked this item.") from None
        current.status = AssignmentStatus.DONE
        current.save(update_fields=["status"])
    return saved


# --- agreement --------------------------------------------------------------------------------


def _rankings_by_item(project: Project) -> dict[int, list[Ranking]]:
    grouped: dict[int, list[Ranking]] = {}
    rankings = Ranking.objects.filter(item__project=project, labeler__isnull=False).select_related(
        "labeler"
    )
    for ranking in rankings:
        grouped.setdefault(ranking.item_id, []).append(ranking)
    return grouped


def agreement_items(project: Project) -> list[agreement.RankedItem]:
    return [
        agreement.RankedItem(
            item_id=item_id,
            rankings={r.labeler.username: r.order for r in rows if not r.all_bad},
        )
        for item_id, rows in _rankings_by_item(project).items()
    ]


def agreement_report(*, project: Project) -> dict[str, Any]:
    items = agreement_items(project)
    shared = [i for i in items if len(i.rankings) >= 2]
    return {
        "items_ranked": len(items),
        "items_shared": len(shared),
        "pairwise": agreement.pairwise_agreement(items),
        "alpha": agreement.krippendorff_alpha(items),
        "tau": agreement.mean_kendall_tau(items),
        "ceiling": agreement.agreement_ceiling(items),
        "per_labeler": sorted(agreement.labeler_agreement(items).items()),
    }


# --- export -----------------------------------------------------------------------------------


def preference_snapshot_create(
    *, project: Project, user: Any, name: str, validation_fraction: float = 0.1
) -> Snapshot:
    grouped = _all_rankings_by_item(project)
    if not grouped:
        raise ValueError("No rankings to export yet: labelers rank replies first.")
    items = [
        preferences.PreferenceItem(
            id=item.pk,
            prompt=item.seed_messages,
            responses=[r["text"] for r in item.responses],
            rankings=[
                preferences.RawRanking(
                    labeler=r.labeler.username if r.labeler else r.source,
                    order=r.order,
                    all_bad=r.all_bad,
                )
                for r in rows
            ],
        )
        for item, rows in grouped
    ]
    report = agreement_report(project=project)
    extra = {
        "project": project.name,
        "agreement": {k: v for k, v in report.items() if k != "per_labeler"},
    }
    staging = Path(tempfile.mkdtemp(prefix="preferences-", dir=training_services.artifacts_root()))
    try:
        card = preferences.write_preference_snapshot(
            items,
            staging,
            validation_fraction=validation_fraction,
            salt=f"project-{project.pk}",
            card_extra=extra,
        )
        card_dict = card.to_dict() if hasattr(card, "to_dict") else dict(card)
        with transaction.atomic():
            artifact = training_services.artifact_register_dir(
                source=staging,
                kind=ArtifactKind.DATASET,
                name=name,
                run=None,
                parents=[],
                user=user,
                meta={"stage": "preference-data", "card": card_dict, "project": project.pk},
            )
            snapshot = Snapshot.objects.create(
                project=project,
                kind=SnapshotKind.PREFERENCE,
                artifact=artifact,
                card=card_dict,
                created_by=user,
            )
            snapshot.rankings.set([r for _, rows in grouped for r in rows])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return snapshot


def _all_rankings_by_item(project: Project) -> list[tuple[Item, list[Ranking]]]:
    rankings = (
        Ranking.objects.filter(item__project=project)
        .select_related("item", "labeler")
        .order_by("item_id", "id")
    )
    grouped: dict[int, tuple[Item, list[Ranking]]] = {}
    for ranking in rankings:
        grouped.setdefault(ranking.item_id, (ranking.item, []))[1].append(ranking)
    return list(grouped.values())


# --- imports ----------------------------------------------------------------------------------


def import_preferences(*, project: Project, uploaded: Any, fmt: str) -> tuple[int, list[str]]:
    """HH-RLHF pairs or ranked OpenAssistant replies as ranked items (no queue slots: they are
    already ranked, by the source's own labelers)."""
    from labeling.data import uploaded_lines

    lines = uploaded_lines(uploaded)
    if fmt == "hh":
        imported, problems = preferences.preference_items_from_hh(lines)
    else:
        imported, problems = preferences.preference_items_from_oasst(lines)
    with transaction.atomic():
        for entry in imported:
            item = Item.objects.create(
                project=project,
                kind=TaskKind.RANK,
                seed_messages=entry.prompt,
                responses=[{"text": text} for text in entry.responses],
                overlap=project.overlap,
                taken=project.overlap,  # nothing left to hand out
            )
            Ranking.objects.bulk_create(
                [
                    Ranking(
                        item=item,
                        labeler=None,
                        source=raw.labeler[:40],
                        order=raw.order,
                        all_bad=raw.all_bad,
                    )
                    for raw in entry.rankings
                ]
            )
    return len(imported), [str(p) for p in problems]
