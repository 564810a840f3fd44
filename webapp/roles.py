"""Roles and what each may do. Views and API endpoints ask for a capability, never a role name,
so a new role is one line here."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse


class Role(models.TextChoices):
    LABELER = "labeler", "Labeler"
    REVIEWER = "reviewer", "Reviewer"
    TRAINER = "trainer", "Trainer"
    ADMIN = "admin", "Admin"


class Capability(models.TextChoices):
    LABEL = "label", "write conversations and rankings"
    REVIEW = "review", "review labelers' work"
    VIEW_RUNS = "view_runs", "see runs, metrics and artifacts"
    LAUNCH_RUNS = "launch_runs", "launch, cancel and retry runs; upload data"
    CHAT = "chat", "chat with checkpoints"
    MANAGE_PROJECTS = (
        "manage_projects",
        "set up labeling projects, seed and import conversations, export datasets",
    )
    MANAGE_ALL = "manage_all", "act on anyone's runs and data"


ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    Role.LABELER: frozenset({Capability.LABEL, Capability.CHAT}),
    Role.REVIEWER: frozenset({Capability.LABEL, Capability.REVIEW, Capability.CHAT}),
    Role.TRAINER: frozenset(
        {
            Capability.VIEW_RUNS,
            Capability.LAUNCH_RUNS,
            Capability.CHAT,
            Capability.MANAGE_PROJECTS,
        }
    ),
    Role.ADMIN: frozenset(Capability.values),
}


def user_can(user: Any, capability: str) -> bool:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return capability in ROLE_CAPABILITIES.get(getattr(user, "role", ""), frozenset())


def role_required(capability: str, *alternatives: str) -> Callable:
    """View decorator: anonymous users go to the login page; others need ``capability`` (or any
    of ``alternatives``) and get 403 without it."""
    accepted = (capability, *alternatives)

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                from django.contrib.auth.views import redirect_to_login

                return redirect_to_login(request.get_full_path())
            if not any(user_can(request.user, c) for c in accepted):
                raise PermissionDenied(f"Your role may not {Capability(capability).label}.")
            return view(request, *args, **kwargs)

        wrapped.required_capability = capability  # read by the permission-matrix test
        return wrapped

    return decorator


def HasCapability(capability: str, *alternatives: str) -> type:  # noqa: N802 (used like a class)
    """DRF permission class requiring ``capability`` (or any of ``alternatives``)."""
    from rest_framework.permissions import BasePermission

    accepted = (capability, *alternatives)

    class _HasCapability(BasePermission):
        message = f"Your role may not {Capability(capability).label}."

        def has_permission(self, request: Any, view: Any) -> bool:
            return any(user_can(request.user, c) for c in accepted)

    _HasCapability.__name__ = f"Has_{capability}"
    return _HasCapability


def role_context(request: HttpRequest) -> dict[str, Any]:
    """Template context: ``can.view_runs`` etc. for showing only the links a person may use."""
    user = getattr(request, "user", None)
    return {"can": {cap: user_can(user, cap) for cap in Capability.values}}
