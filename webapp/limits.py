"""Request rate limits (django-ratelimit), read from settings at request time so deployments
and tests can change them without re-importing views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django_ratelimit.decorators import ratelimit


def _setting(name: str) -> Callable[[str, Any], str]:
    def rate(group: str, request: Any) -> str:
        return getattr(settings, name)

    return rate


def login_limit(view: Callable) -> Callable:
    """Failed or not, login attempts per username and per address are capped."""
    limited = ratelimit(key="post:username", rate=_setting("ORCHARD_LOGIN_RATE"), method="POST")(
        view
    )
    return ratelimit(key="ip", rate=_setting("ORCHARD_LOGIN_RATE"), method="POST")(limited)


def generation_limit(view: Callable) -> Callable:
    """Generations started per person (or per address when anonymous) are capped."""
    return ratelimit(
        key="user_or_ip", rate=_setting("ORCHARD_GENERATION_RATE"), method="POST", group="generate"
    )(view)
