"""Runs, their metrics, the artifacts they read and write, and the workers that execute them."""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models
from django.urls import reverse


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class ArtifactKind(models.TextChoices):
    WEBDATA = "webdata", "Web data"
    BLOCKLIST = "blocklist", "URL blocklist"
    CORPUS = "corpus", "Corpus"
    TOKENIZER = "tokenizer", "Tokenizer"
    CHECKPOINT = "checkpoint", "Checkpoint"
    DATASET = "dataset", "Dataset"
    OUTPUT = "output", "Other output"


class PathOutsideArtifactsRoot(ValueError):
    pass


class Artifact(models.Model):
    """An immutable, content-hashed file or folder under ARTIFACTS_ROOT, with its lineage.

    ``path`` is relative to the root and always written by Orchard itself, never typed by a user.
    """

    kind = models.CharField(max_length=32, choices=ArtifactKind.choices, db_index=True)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    meta = models.JSONField(default=dict, blank=True)
    run = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="outputs"
    )
    parents = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="children")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} {self.name}"

    def get_absolute_url(self) -> str:
        return reverse("training:artifact-detail", args=[self.pk])

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def abspath(self) -> Path:
        """The artifact's location, refusing anything that resolves outside the root."""
        return resolve_under_root(self.path)


def generative_checkpoints() -> models.QuerySet:
    """Checkpoints that write text: every checkpoint but reward models (which only score).

    Spelled out with ``isnull`` because SQL's NOT on a missing JSON key is NULL, which a bare
    ``exclude(meta__stage="reward")`` would treat as excluded."""
    return Artifact.objects.filter(kind=ArtifactKind.CHECKPOINT).filter(
        models.Q(meta__stage__isnull=True) | ~models.Q(meta__stage="reward")
    )


def resolve_under_root(relative: str) -> Path:
    root = Path(settings.ARTIFACTS_ROOT).resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise PathOutsideArtifactsRoot(f"{relative!r} is outside the artifacts root")
    return candidate


class Run(models.Model):
    """One background job: a kind, a validated config, input artifacts, and its whole life."""

    kind = models.CharField(max_length=32, db_index=True)
    # Names the run's folder with the id, so a recreated database never adopts old files.
    uid = models.UUIDField(default=uuid.uuid4, editable=False, unique=True)
    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    config = models.JSONField(default=dict)
    inputs = models.JSONField(default=dict, blank=True)  # {"corpus": [artifact ids]}
    input_artifacts = models.ManyToManyField(Artifact, blank=True, related_name="consumed_by")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    progress = models.FloatField(default=0.0)  # 0..1
    step = models.BigIntegerField(default=0)
    total_steps = models.BigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=200, blank=True)
    log_tail = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    cancel_requested = models.BooleanField(default=False)
    lease_owner = models.CharField(max_length=128, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    resumed_from_step = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.kind} run #{self.pk} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("training:run-detail", args=[self.pk])

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return not self.is_terminal

    @property
    def can_cancel(self) -> bool:
        return self.is_active and not self.cancel_requested

    @property
    def can_retry(self) -> bool:
        return self.status in (RunStatus.FAILED, RunStatus.CANCELLED)


class RunMetric(models.Model):
    """One point of a run's metric time series."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    step = models.BigIntegerField()
    name = models.CharField(max_length=64)
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "name", "step"]
        indexes = [models.Index(fields=["run", "name", "step"])]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}={self.value:.4g}"


class RunRecord(models.Model):
    """A structured observation of a run at a step (sample generations, an eval table)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="records")
    step = models.BigIntegerField()
    name = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "name", "step"]
        indexes = [models.Index(fields=["run", "name", "step"])]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}"


class SpotCheck(models.Model):
    """A reviewer's judgement of one keep/drop decision of a corpus run: right or wrong."""

    corpus = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="spot_checks")
    document_id = models.CharField(max_length=500)
    stage = models.CharField(max_length=64)  # the stage that dropped it, or "kept"
    decision = models.CharField(max_length=8, choices=[("keep", "keep"), ("drop", "drop")])
    correct = models.BooleanField()
    note = models.CharField(max_length=500, blank=True)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["corpus", "document_id", "reviewer"], name="one_check_per_reviewer"
            )
        ]

    def __str__(self) -> str:
        return f"{self.document_id}: {self.decision} {'right' if self.correct else 'wrong'}"


class WorkerHeartbeat(models.Model):
    """Written by every worker while it lives; /healthz and the runs page read it."""

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.IntegerField()
    queues = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.name


class ChatSession(models.Model):
    """One person's conversation with checkpoints. Messages form a tree (an edited question or a
    regenerated answer is a sibling), and ``leaf`` marks the branch on screen."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    title = models.CharField(max_length=200, blank=True)
    checkpoint = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=0.95)
    max_new_tokens = models.PositiveIntegerField(default=256)
    tools = models.BooleanField(default=False)
    leaf = models.ForeignKey(
        "ChatMessage", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]

    def __str__(self) -> str:
        return self.title or f"Chat #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("training:chat-session", args=[self.pk])


class ChatMessage(models.Model):
    class Feedback(models.TextChoices):
        UP = "up", "Good answer"
        DOWN = "down", "Bad answer"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    role = models.CharField(max_length=16)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    checkpoint = models.ForeignKey(
        Artifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    finish_reason = models.CharField(max_length=16, blank=True)
    tokens = models.PositiveIntegerField(default=0)
    feedback = models.CharField(max_length=8, choices=Feedback.choices, blank=True)
    feedback_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role} message #{self.pk}"

    def as_message(self) -> dict:
        message: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


class ArenaBattle(models.Model):
    """Two checkpoints answer the same prompt; a person picks the better answer without
    knowing which model wrote which."""

    class Vote(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="arena_battles"
    )
    prompt = models.TextField()
    checkpoint_a = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="+")
    checkpoint_b = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="+")
    reply_a = models.TextField()
    reply_b = models.TextField()
    vote = models.CharField(max_length=16, choices=Vote.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    voted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Battle #{self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("training:arena-battle", args=[self.pk])
