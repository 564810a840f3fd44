"""``manage.py orchard_demo_users``: one account per role for trying Orchard on a laptop.

Refuses to run with DEBUG off: a production instance never gets accounts with printed passwords.
Passwords are random per installation, kept in var/demo_credentials.json (mode 0600).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.models import User
from webapp.roles import Role


def credentials_file() -> Path:
    return Path(settings.VAR_DIR) / "demo_credentials.json"


def _load_or_create_passwords() -> dict[str, str]:
    path = credentials_file()
    if path.exists():
        return json.loads(path.read_text())
    passwords = {role.value: secrets.token_urlsafe(12) for role in Role}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(passwords, fh)
    return passwords


class Command(BaseCommand):
    help = "Create one demo account per role (development only) and print the credentials."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("demo accounts are for development only (DEBUG is off)")
        passwords = _load_or_create_passwords()
        self.stdout.write("Demo accounts (development only):")
        for role in Role:
            user, created = User.objects.get_or_create(username=role.value)
            user.role = role.value
            user.is_staff = user.is_superuser = role == Role.ADMIN
            user.set_password(passwords[role.value])
            user.save()
            self.stdout.write(
                f"  {role.label:<9} user {role.value:<9} password {passwords[role.value]}"
            )
