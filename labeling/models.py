"""Labeling data: projects with versioned guidelines, a task queue with leases, conversations with
their full edit history, reviews, and dataset snapshots.

A conversation keeps its turns as one JSON list (``messages``) in the HF chat format, so a whole
edit, reorder or autosave is one row update guarded by ``version`` (optimistic locking: a save
that names an older version is refused with 409 rather than overwriting someone's work). Each
turn may carry Orchard-only keys (``draft``: what a model proposed before the person edited it);
they are stripped on export.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.urls import reverse


class Project(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown beside every task.")
    guideline_version = models.PositiveIntegerField(default=1)
    system_prompts = models.JSONField(default=list, blank=True)
    required_turns = models.PositiveSmallIntegerField(
        default=1, help_text="Assistant turns a conversation needs before it can be submitted."
    )
    overlap = models.PositiveSmallIntegerField(
        default=1, help_text="How many different labelers work on each item."
    )
    draft_checkpoint = models.ForeignKey(
        "training.Artifact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Checkpoint that drafts assistant replies for labelers to edit.",
    )
    lease_minutes = models.PositiveSmallIntegerField(default=60)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("labeling:project-detail", args=[self.pk])


class GuidelineVersion(models.Model):
    """Every saved edit of a project's guidelines, so a conversation can say which it followed."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="guideline_history")
    version = models.PositiveIntegerField()
    text = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="guideline_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.project} guidelines v{self.version}"


class TaskKind(models.TextChoices):
    WRITE = "write", "Write a conversation from scratch"
    CONTINUE = "continue", "Continue a conversation"
    REPLY = "reply", "Write the assistant reply"
    RANK = "rank", "Rank model responses"
    ARENA = "arena", "Compare two responses"


RESPONSE_TASKS = (TaskKind.RANK, TaskKind.ARENA)


class Item(models.Model):
    """One unit of work in a project's queue, to be done by ``overlap`` different labelers.

    ``taken`` counts active and finished assignments; it only changes through a conditional
    UPDATE (``taken < overlap``) and a check constraint backs it, so no race can overfill an item.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(max_length=16, choices=TaskKind.choices, default=TaskKind.WRITE)
    seed_messages = models.JSONField(default=list, blank=True)
    # For ranking and arena tasks: the replies shown, in the (shuffled) order every labeler sees,
    # each {"text", "checkpoint", "sample"}; which checkpoint wrote which stays hidden.
    responses = models.JSONField(default=list, blank=True)
    batch = models.ForeignKey(
        "ResponseBatch", null=True, blank=True, on_delete=models.SET_NULL, related_name="items"
    )
    instructions = models.TextField(blank=True)
    overlap = models.PositiveSmallIntegerField(default=1)
    taken = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(taken__lte=F("overlap")), name="item_within_overlap"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"


class AssignmentStatus(models.TextChoices):
    ACTIVE = "active", "In progress"
    DONE = "done", "Submitted"
    EXPIRED = "expired", "Lease expired"
    SKIPPED = "skipped", "Skipped"


class Assignment(models.Model):
    """A labeler's claim on an item: one row per (item, labeler), so never the same item twice."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    labeler = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments"
    )
    status = models.CharField(
        max_length=16, choices=AssignmentStatus.choices, default=AssignmentStatus.ACTIVE
    )
    lease_expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "labeler"], name="assignment_once_per_labeler")
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.item} for {self.labeler} ({self.status})"


class ConversationStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted for review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Changes requested"


class Conversation(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="conversations")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="conversations",
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversation"
    )
    status = models.CharField(
        max_length=16, choices=ConversationStatus.choices, default=ConversationStatus.DRAFT
    )
    messages = models.JSONField(default=list)
    tags = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=40, default="editor")
    source_id = models.CharField(max_length=200, blank=True)
    version = models.PositiveIntegerField(default=1)
    guideline_version = models.PositiveIntegerField(null=True, blank=True)
    # What the author last submitted, kept so review edits can be measured against it.
    submitted_messages = models.JSONField(null=True, blank=True)
    review_lease_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    review_lease_expires_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["project", "status"])]

    def __str__(self) -> str:
        return f"Conversation #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("labeling:conversation-edit", args=[self.pk])

    @property
    def is_editable_by_author(self) -> bool:
        return self.status in (ConversationStatus.DRAFT, ConversationStatus.REJECTED)


class Revision(models.Model):
    """The audit trail: who changed a conversation, when, how, and the content afterwards."""

    class Action(models.TextChoices):
        CREATE = "create", "created"
        IMPORT = "import", "imported"
        SUBMIT = "submit", "submitted"
        EDIT = "edit", "edited"
        APPROVE = "approve", "approved"
        REJECT = "reject", "requested changes"
        REVIEW_EDIT = "review_edit", "edited in review and approved"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="revisions"
    )
    version = models.PositiveIntegerField()
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    messages = models.JSONField(default=list)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.conversation} v{self.version} {self.action}"


class Review(models.Model):
    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Changes requested"
        EDIT = "edit", "Edited and approved"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    decision = models.CharField(max_length=16, choices=Decision.choices)
    comment = models.TextField(blank=True)
    # Characters changed by the reviewer (Levenshtein over the rendered turns); 0 unless edited.
    edit_distance = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} on {self.conversation}"


class Ranking(models.Model):
    """One labeler's ordering of an item's responses: tiers of response indices, best first
    (responses in one tier are tied). An arena vote is a ranking of two."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="rankings")
    labeler = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="rankings",
    )
    source = models.CharField(max_length=40, default="labeler")
    order = models.JSONField()
    all_bad = models.BooleanField(default=False)
    better_answer = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    seconds_spent = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["item", "labeler"],
                condition=Q(labeler__isnull=False),
                name="ranking_once_per_labeler",
            )
        ]

    def __str__(self) -> str:
        return f"Ranking of {self.item} by {self.labeler or self.source}"


class ResponseBatch(models.Model):
    """Replies generated for ranking or arena tasks: a ``responses`` run, whose output becomes
    items once it has succeeded (exactly once: ``items_created`` flips in one conditional
    UPDATE)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="response_batches")
    kind = models.CharField(max_length=16, choices=TaskKind.choices, default=TaskKind.RANK)
    run = models.ForeignKey("training.Run", on_delete=models.PROTECT, related_name="+")
    checkpoints = models.JSONField(default=list)  # artifact ids, in the run's order
    items_created = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} batch #{self.pk} (run #{self.run_id})"


class ProblemStatus(models.TextChoices):
    SUBMITTED = "submitted", "Waiting for review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class Problem(models.Model):
    """A question with a checkable answer, for reinforcement learning with verifiable rewards.

    ``checker`` is one of ``training.core.checkers.CHECKERS``: the answer is a number, a choice
    letter among ``choices``, or anything ``checker_code``'s ``check(answer)`` accepts."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="problems")
    question = models.TextField()
    answer = models.CharField(max_length=500)
    checker = models.CharField(max_length=16, default="number")
    choices = models.JSONField(default=list, blank=True)
    checker_code = models.TextField(blank=True)
    solution = models.TextField(blank=True)
    source = models.CharField(max_length=40, default="labeler")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(
        max_length=16, choices=ProblemStatus.choices, default=ProblemStatus.SUBMITTED
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "status"])]

    def __str__(self) -> str:
        return f"Problem #{self.pk}"

    def as_record(self) -> dict:
        """The problem as ``training.core.problems`` reads it."""
        record = {"question": self.question, "answer": self.answer, "checker": self.checker}
        if self.choices:
            record["choices"] = self.choices
        if self.checker_code:
            record["checker_code"] = self.checker_code
        return record


class SnapshotKind(models.TextChoices):
    SFT = "sft", "Conversations (SFT)"
    PREFERENCE = "preference", "Preference pairs"
    PROBLEMS = "problems", "Problems with answers"


class Snapshot(models.Model):
    """An exported, immutable dataset: the artifact holds the files, this row the lineage."""

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="snapshots")
    kind = models.CharField(max_length=16, choices=SnapshotKind.choices, default=SnapshotKind.SFT)
    artifact = models.OneToOneField(
        "training.Artifact", on_delete=models.PROTECT, related_name="snapshot"
    )
    conversations = models.ManyToManyField(Conversation, related_name="snapshots")
    rankings = models.ManyToManyField(Ranking, related_name="snapshots")
    card = models.JSONField(default=dict)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Snapshot #{self.pk} of {self.project}"

    def get_absolute_url(self) -> str:
        return reverse("labeling:snapshot-detail", args=[self.pk])
