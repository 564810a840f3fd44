"""training.core is a pure library: no Django, Celery or web code, and a light config import."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "training" / "core"

# The same list as the import-linter contract in pyproject.toml.
FORBIDDEN = (
    "django",
    "rest_framework",
    "celery",
    "webapp",
    "labeling",
    "training.models",
    "training.services",
    "training.tasks",
    "training.views",
    "training.api",
    "training.reporting",
)
CORE_MODULES = (
    "training.core",
    "training.core.corpus",
    "training.core.tokenizer",
    "training.core.checkpoints",
    "training.core.reporting",
    "training.core.__main__",
)


def is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module an ``import`` in ``source``, a module of ``package``, may load."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: "." is the package itself, each further dot one level up
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_of(path: Path) -> str:
    return ".".join(path.parent.relative_to(REPO).parts)


def test_importing_core_loads_no_web_code() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(CORE_MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert [m for m in loaded if is_forbidden(m)] == []
    # The web process imports stage configs to build forms: that must not pull in the ML stack.
    assert [m for m in loaded if m.split(".")[0] in {"torch", "transformers"}] == []


def test_no_core_module_imports_forbidden_code() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        imported = imported_modules(path.read_text(), package_of(path))
        bad = sorted(m for m in imported if is_forbidden(m))
        if bad:
            offenders.append(f"{path.relative_to(REPO)}: {', '.join(bad)}")
    assert offenders == []


def test_static_check_sees_every_import_form() -> None:
    source = (
        "import django.conf\n"
        "import webapp.models as wm\n"
        "from celery import shared_task\n"
        "from training import models\n"
        "from .. import tasks\n"
        "from ..services import run_execute\n"
        "from . import corpus\n"
        "def later():\n"
        "    import rest_framework\n"
    )
    imported = imported_modules(source, "training.core")
    assert {m for m in imported if is_forbidden(m)} == {
        "django.conf",
        "webapp.models",
        "celery",
        "celery.shared_task",
        "training.models",
        "training.tasks",
        "training.services",
        "training.services.run_execute",
        "rest_framework",
    }
    assert "training.core.corpus" in imported
