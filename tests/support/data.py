"""Where the real sample data lives: ../shared/data beside the repository (see its SOURCES.md),
or wherever ORCHARD_SHARED_DATA points. Tests read it there; nothing is copied into the repo."""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("ORCHARD_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
