"""Labeling actions: projects, the task queue, saving and submitting conversations, review.

Every write that people race on is one conditional UPDATE inside a transaction, backed by a
database constraint: an item's ``taken`` never passes its ``overlap`` and an (item, labeler) pair
exists once, on PostgreSQL (row locks, READ COMMITTED re-check) and on SQLite (IMMEDIATE
transactions serialise writers). Saves carry the version the person started from; an older one
gets ``StaleEdit`` with the current copy instead of overwriting it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from rapidfuzz.distance import Levenshtein

from labeling.formats import validate_messages
from labeling.models import (
    Assignment,
    AssignmentStatus,
    Conversation,
    ConversationStatus,
    GuidelineVersion,
    Item,
    Project,
    Review,
    Revision,
    TaskKind,
)
from labeling.turns import as_text, assistant_turns, public_messages
from webapp.roles import Capability, user_can

REVIEW_LEASE = timedelta(minutes=30)
MAX_MESSAGES = 200
MAX_TURN_CHARS = 100_000


class LabelingRefused(Exception):
    """An action the person may not take now; the message says why in plain words."""


class StaleEdit(Exception):
    """The conversation changed since the editor loaded it; ``current`` is the newer copy."""

    def __init__(self, current: Conversation) -> None:
        self.current = current
        super().__init__(
            f"This conversation was changed elsewhere (now version {current.version}). "
            "Your text is kept in this browser; reload to see both."
        )


class InvalidConversation(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


# --- projects ---------------------------------------------------------------------------------


def project_create(*, user: Any, **fields: Any) -> Project:
    with transaction.atomic():
        project = Project.objects.create(created_by=user, **fields)
        GuidelineVersion.objects.create(
            project=project, version=1, text=project.guidelines, created_by=user
        )
    return project


def project_update(*, project: Project, user: Any, **fields: Any) -> Project:
    """Save settings; changed guidelines become a new numbered version."""
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        guidelines_changed = fields.get("guidelines", locked.guidelines) != locked.guidelines
        for name, value in fields.items():
            setattr(locked, name, value)
        if guidelines_changed:
            locked.guideline_version += 1
            GuidelineVersion.objects.create(
                project=locked,
                version=locked.guideline_version,
                text=locked.guidelines,
                created_by=user,
            )
        locked.save()
    return locked


def items_add(
    *, project: Project, kind: str, count: int = 0, seeds: list[list[dict]] | None = None
) -> list[Item]:
    """``count`` blank items for WRITE; one item per seed conversation otherwise."""
    if kind == TaskKind.WRITE:
        rows = [Item(project=project, kind=kind, overlap=project.overlap) for _ in range(count)]
    else:
        rows = [
            Item(project=project, kind=kind, seed_messages=seed, overlap=project.overlap)
            for seed in seeds or []
        ]
    return Item.objects.bulk_create(rows)


# --- the task queue ---------------------------------------------------------------------------


def release_expired(*, project: Project | None = None) -> int:
    """Give expired leases' slots back; each is released exactly once (conditional UPDATE)."""
    now = timezone.now()
    expired = Assignment.objects.filter(status=AssignmentStatus.ACTIVE, lease_expires_at__lt=now)
    if project is not None:
        expired = expired.filter(item__project=project)
    released = 0
    for assignment_id, item_id in expired.values_list("id", "item_id"):
        with transaction.atomic():
            if Assignment.objects.filter(
                pk=assignment_id, status=AssignmentStatus.ACTIVE, lease_expires_at__lt=now
            ).update(status=AssignmentStatus.EXPIRED):
                Item.objects.filter(pk=item_id, taken__gt=0).update(taken=F("taken") - 1)
                released += 1
    return released


def next_task(*, user: Any, project: Project) -> Assignment | None:
    """The labeler's current task in ``project``, or a new one, or None when none is left."""
    current = _active_assignment(user, project)
    if current is not None:
        return current
    release_expired(project=project)
    done_or_skipped = Assignment.objects.filter(labeler=user).exclude(
        status=AssignmentStatus.EXPIRED
    )
    candidates = (
        Item.objects.filter(project=project, taken__lt=F("overlap"))
        .exclude(pk__in=done_or_skipped.values("item_id"))
        .order_by("-taken", "id")  # finish items others started before opening new ones
        .values_list("pk", flat=True)
    )
    for item_id in candidates[:50]:
        assignment = _try_claim(item_id, user, project)
        if assignment is not None:
            return assignment
    return None


def _active_assignment(user: Any, project: Project) -> Assignment | None:
    return (
        Assignment.objects.filter(
            labeler=user,
            item__project=project,
            status=AssignmentStatus.ACTIVE,
            lease_expires_at__gte=timezone.now(),
        )
        .select_related("item")
        .first()
    )


def _try_claim(item_id: int, user: Any, project: Project) -> Assignment | None:
    expires = timezone.now() + timedelta(minutes=project.lease_minutes)
    try:
        with transaction.atomic():
            # Lock order, everywhere: the assignment row, then its item (as release_expired,
            # assignment_skip and conversation_submit do), so no two transactions wait on each
            # other in a cycle. The labeler's own expired claim on this item is reused: one row
            # per pair, ever.
            reopened = Assignment.objects.filter(
                item_id=item_id, labeler=user, status=AssignmentStatus.EXPIRED
            ).update(status=AssignmentStatus.ACTIVE, lease_expires_at=expires)
            if not Item.objects.filter(pk=item_id, taken__lt=F("overlap")).update(
                taken=F("taken") + 1
            ):
                transaction.set_rollback(True)  # filled by someone else meanwhile: undo the reopen
                return None
            if reopened:
                return Assignment.objects.select_related("item").get(item_id=item_id, labeler=user)
            return Assignment.objects.create(
                item_id=item_id, labeler=user, lease_expires_at=expires
            )
    except IntegrityError:  # the same person raced themselves (two tabs): the other tab won
        return None


def assignment_conversation(*, assignment: Assignment) -> Conversation:
    """The conversation a task is written in, created on first open."""
    existing = Conversation.objects.filter(assignment=assignment).first()
    if existing is not None:
        return existing
    item = assignment.item
    project = item.project
    messages = list(item.seed_messages)
    if project.system_prompts and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": project.system_prompts[0]})
    with transaction.atomic():
        conversation, created = Conversation.objects.get_or_create(
            assignment=assignment,
            defaults={
                "project": project,
                "author": assignment.labeler,
                "messages": messages,
                "source": f"task:{item.kind}",
            },
        )
        if created:
            _revise(conversation, Revision.Action.CREATE, assignment.labeler)
    return conversation


def assignment_skip(*, assignment: Assignment, user: Any) -> None:
    if assignment.labeler_id != user.pk:
        raise LabelingRefused("This task is someone else's.")
    with transaction.atomic():
        if Assignment.objects.filter(pk=assignment.pk, status=AssignmentStatus.ACTIVE).update(
            status=AssignmentStatus.SKIPPED
        ):
            Item.objects.filter(pk=assignment.item_id, taken__gt=0).update(taken=F("taken") - 1)


def assignment_renew(*, conversation: Conversation) -> None:
    """Working on a task keeps its lease alive (every autosave renews it)."""
    if conversation.assignment_id is None:
        return
    project = conversation.project
    Assignment.objects.filter(pk=conversation.assignment_id, status=AssignmentStatus.ACTIVE).update(
        lease_expires_at=timezone.now() + timedelta(minutes=project.lease_minutes)
    )


# --- conversations ----------------------------------------------------------------------------


def conversation_create(
    *,
    project: Project,
    user: Any,
    messages: list[dict] | None = None,
    tags: list[str] | None = None,
    source: str = "editor",
    status: str = ConversationStatus.DRAFT,
) -> Conversation:
    if messages is None:
        messages = [{"role": "system", "content": p} for p in project.system_prompts[:1]]
    _check_size(messages)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            project=project,
            author=user,
            messages=messages,
            tags=sorted(set(tags or [])),
            source=source,
            status=status,
            guideline_version=project.guideline_version,
        )
        if status != ConversationStatus.DRAFT:
            conversation.submitted_messages = messages
            conversation.submitted_at = timezone.now()
            conversation.save(update_fields=["submitted_messages", "submitted_at"])
        _revise(conversation, Revision.Action.CREATE, user)
    return conversation


def may_edit(user: Any, conversation: Conversation) -> bool:
    if user_can(user, Capability.MANAGE_ALL):
        return True
    return conversation.author_id == user.pk and user_can(user, Capability.LABEL)


def conversation_save(
    *,
    conversation: Conversation,
    user: Any,
    messages: list[dict],
    expected_version: int,
    tags: list[str] | None = None,
) -> Conversation:
    """Save the author's edit. Drafts change silently; after submission every edit is a revision,
    and an approved conversation goes back to review."""
    if not may_edit(user, conversation):
        raise LabelingRefused("Only the author may edit this conversation.")
    _check_size(messages)
    with transaction.atomic():
        current = Conversation.objects.select_for_update().get(pk=conversation.pk)
        if current.version != expected_version:
            raise StaleEdit(current)
        if current.messages == messages and (tags is None or sorted(set(tags)) == current.tags):
            return current  # nothing changed: an autosave of the same text is not a new version
        current.messages = messages
        if tags is not None:
            current.tags = sorted(set(tags))
        current.version += 1
        if current.status == ConversationStatus.APPROVED:
            current.status = ConversationStatus.SUBMITTED
        current.save()
        if current.status != ConversationStatus.DRAFT:
            _revise(current, Revision.Action.EDIT, user)
    assignment_renew(conversation=current)
    return current


def submission_problems(
    conversation: Conversation, messages: list[dict] | None = None
) -> list[str]:
    messages = conversation.messages if messages is None else messages
    problems = validate_messages(public_messages(messages))
    required = conversation.project.required_turns
    written = assistant_turns(messages)
    if written < required:
        problems.append(
            f"This project asks for at least {required} assistant turn{pluralize(required)}; "
            f"this conversation has {written}."
        )
    return problems


def pluralize(count: int) -> str:
    return "" if count == 1 else "s"


def validate_for_status(project: Project, messages: list[dict], status: str) -> list[str]:
    """Problems that keep ``messages`` from entering ``project`` with ``status`` (drafts: only
    the size limits; anything submitted: the full submission rules)."""
    try:
        _check_size(messages)
    except InvalidConversation as exc:
        return exc.problems
    if status == ConversationStatus.DRAFT:
        return []
    probe = Conversation(project=project, messages=messages)
    return submission_problems(probe)


def conversation_submit(
    *, conversation: Conversation, user: Any, expected_version: int
) -> Conversation:
    if not may_edit(user, conversation):
        raise LabelingRefused("Only the author may submit this conversation.")
    with transaction.atomic():
        current = Conversation.objects.select_for_update().get(pk=conversation.pk)
        if current.version != expected_version:
            raise StaleEdit(current)
        problems = submission_problems(current)
        if problems:
            raise InvalidConversation(problems)
        current.status = ConversationStatus.SUBMITTED
        current.submitted_messages = current.messages
        current.submitted_at = timezone.now()
        current.guideline_version = current.project.guideline_version
        current.version += 1
        current.review_lease_owner = None
        current.review_lease_expires_at = None
        current.save()
        _revise(current, Revision.Action.SUBMIT, user)
        if current.assignment_id:
            _assignment_done(current.assignment_id)
    return current


def _assignment_done(assignment_id: int) -> None:
    """Mark the task submitted, keeping ``taken`` equal to the active and submitted claims.

    A task whose lease ran out (or that was skipped) already gave its slot back, and someone else
    may hold it now: it counts again only if a slot is still free. Otherwise the work is kept (the
    conversation is submitted) but the item is not overfilled, and the task becomes SKIPPED so the
    queue does not offer the same item to this person again. Locks the assignment, then the item,
    as every other queue write does.
    """
    assignment = Assignment.objects.select_for_update().get(pk=assignment_id)
    if assignment.status == AssignmentStatus.DONE:
        return  # a resubmission after review asked for changes
    holds_slot = assignment.status == AssignmentStatus.ACTIVE  # (perhaps reopened by another tab)
    if holds_slot or Item.objects.filter(pk=assignment.item_id, taken__lt=F("overlap")).update(
        taken=F("taken") + 1
    ):
        assignment.status = AssignmentStatus.DONE
    else:
        assignment.status = AssignmentStatus.SKIPPED
    assignment.save(update_fields=["status"])


def _check_size(messages: list[dict]) -> None:
    problems = message_problems(messages)
    if problems:
        raise InvalidConversation(problems)


def message_problems(messages: Any) -> list[str]:
    """What keeps ``messages`` from being stored at all (drafts included): not a list of
    objects, too many or too long turns, or NUL characters, which PostgreSQL's JSON refuses."""
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES:
        return [f"A conversation is a list of at most {MAX_MESSAGES} turns."]
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return [f"turn {index + 1} is not an object"]
        if len(str(message.get("content") or "")) > MAX_TURN_CHARS:
            return [f"turn {index + 1} is longer than {MAX_TURN_CHARS:,} characters"]
        if _has_nul(message):
            return [f"turn {index + 1} contains a NUL character, which cannot be stored"]
    return []


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _revise(conversation: Conversation, action: str, actor: Any, note: str = "") -> Revision:
    return Revision.objects.create(
        conversation=conversation,
        version=conversation.version,
        action=action,
        actor=actor,
        messages=conversation.messages,
        note=note,
    )


# --- review -----------------------------------------------------------------------------------


def review_next(*, user: Any, project: Project) -> Conversation | None:
    """A submitted conversation by someone else, leased to this reviewer for 30 minutes."""
    now = timezone.now()
    mine = Conversation.objects.filter(
        project=project,
        status=ConversationStatus.SUBMITTED,
        review_lease_owner=user,
        review_lease_expires_at__gte=now,
    ).first()
    if mine is not None:
        return mine
    free = (
        Conversation.objects.filter(project=project, status=ConversationStatus.SUBMITTED)
        .exclude(author=user)
        .filter(Q(review_lease_expires_at__isnull=True) | Q(review_lease_expires_at__lt=now))
        .order_by("submitted_at", "id")
        .values_list("pk", flat=True)
    )
    for pk in free[:50]:
        claimed = (
            Conversation.objects.filter(pk=pk, status=ConversationStatus.SUBMITTED)
            .filter(Q(review_lease_expires_at__isnull=True) | Q(review_lease_expires_at__lt=now))
            .update(review_lease_owner=user, review_lease_expires_at=now + REVIEW_LEASE)
        )
        if claimed:
            return Conversation.objects.get(pk=pk)
    return None


@dataclass
class ReviewInput:
    decision: str
    comment: str = ""
    messages: list[dict] | None = None  # the reviewer's edited copy, for Decision.EDIT


def review_decide(
    *, conversation: Conversation, user: Any, expected_version: int, review: ReviewInput
) -> Review:
    if not user_can(user, Capability.REVIEW):
        raise LabelingRefused("Your role may not review.")
    if conversation.author_id == user.pk and not user_can(user, Capability.MANAGE_ALL):
        raise LabelingRefused("Reviewing your own conversation is not allowed.")
    if review.decision == Review.Decision.REJECT and not review.comment.strip():
        raise LabelingRefused("Say what to change: a rejection needs a comment for the author.")
    with transaction.atomic():
        current = Conversation.objects.select_for_update().get(pk=conversation.pk)
        if current.version != expected_version:
            raise StaleEdit(current)
        if current.status != ConversationStatus.SUBMITTED:
            raise LabelingRefused(f"This conversation is {current.get_status_display().lower()}.")
        distance = 0
        if review.decision == Review.Decision.EDIT:
            _check_size(review.messages or [])
            problems = submission_problems(current, review.messages or [])
            if problems:
                raise InvalidConversation(problems)
            distance = Levenshtein.distance(as_text(current.messages), as_text(review.messages))
            current.messages = review.messages
        current.status = (
            ConversationStatus.REJECTED
            if review.decision == Review.Decision.REJECT
            else ConversationStatus.APPROVED
        )
        current.version += 1
        current.review_lease_owner = None
        current.review_lease_expires_at = None
        current.save()
        action = {
            Review.Decision.APPROVE: Revision.Action.APPROVE,
            Review.Decision.REJECT: Revision.Action.REJECT,
            Review.Decision.EDIT: Revision.Action.REVIEW_EDIT,
        }[review.decision]
        _revise(current, action, user, note=review.comment)
        return Review.objects.create(
            conversation=current,
            reviewer=user,
            decision=review.decision,
            comment=review.comment,
            edit_distance=distance,
        )


# --- statistics -------------------------------------------------------------------------------


@dataclass
class LabelerStats:
    username: str
    drafts: int = 0
    submitted: int = 0
    approved: int = 0
    rejected: int = 0
    reviews_received: int = 0
    edited_in_review: int = 0
    edit_chars: int = 0
    model_drafted_turns: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def approval_rate(self) -> float | None:
        decided = self.approved + self.rejected
        return self.approved / decided if decided else None

    @property
    def mean_edit_chars(self) -> float | None:
        return self.edit_chars / self.edited_in_review if self.edited_in_review else None


def labeler_stats(*, project: Project) -> list[LabelerStats]:
    """Per author: counts by status and what review changed, each defined on the page."""
    stats: dict[int, LabelerStats] = {}
    rows = (
        Conversation.objects.filter(project=project, author__isnull=False)
        .values("author_id", "author__username", "status")
        .annotate(n=Count("id"))
    )
    for row in rows:
        entry = stats.setdefault(row["author_id"], LabelerStats(row["author__username"]))
        status = row["status"]
        if status == ConversationStatus.DRAFT:
            entry.drafts += row["n"]
        else:
            entry.submitted += row["n"]
        if status == ConversationStatus.APPROVED:
            entry.approved += row["n"]
        elif status == ConversationStatus.REJECTED:
            entry.rejected += row["n"]
    reviews = Review.objects.filter(
        conversation__project=project, conversation__author__isnull=False
    ).values("conversation__author_id", "decision", "edit_distance")
    for review in reviews:
        entry = stats.get(review["conversation__author_id"])
        if entry is None:
            continue
        entry.reviews_received += 1
        if review["decision"] == Review.Decision.EDIT:
            entry.edited_in_review += 1
            entry.edit_chars += review["edit_distance"]
    for conversation in Conversation.objects.filter(project=project, author__isnull=False).only(
        "author_id", "messages"
    ):
        entry = stats.get(conversation.author_id)
        if entry is not None:
            entry.model_drafted_turns += sum(1 for m in conversation.messages if m.get("draft"))
    return sorted(stats.values(), key=lambda s: s.username)


def draft_edit_share(message: dict) -> float | None:
    """How much of a model-drafted turn the person changed: 0 untouched, 1 rewritten."""
    draft = message.get("draft")
    if not draft:
        return None
    original = str(draft.get("text", ""))
    final = str(message.get("content") or "")
    longest = max(len(original), len(final), 1)
    return Levenshtein.distance(original, final) / longest
