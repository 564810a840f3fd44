from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models

from webapp.roles import Role, user_can


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELER)

    def can(self, capability: str) -> bool:
        return user_can(self, capability)
