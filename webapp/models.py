from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models

from webapp.roles import Role, user_can


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELER)

    def can(self, capability: str) -> bool:
        return user_can(self, capability)


class IdempotencyRecord(models.Model):
    """The first answer to a request that carried an ``Idempotency-Key``: a client that retries
    (a timeout, a double click, a flaky network) gets it again instead of acting twice."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    scope = models.CharField(max_length=300)  # method and path the key was first used with
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_once_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"
