"""Problems with checkable answers: written by labelers, imported from GSM8K, or generated.

Validation, GSM8K parsing, generation and the snapshot format come from
``training.core.problems``; this module adds who wrote what, review, and the dataset artifact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.db import transaction

from labeling.models import Problem, ProblemStatus, Project, Snapshot, SnapshotKind
from labeling.services import LabelingRefused
from training import services as training_services
from training.core import problems as bank
from training.models import ArtifactKind
from webapp.roles import Capability, user_can


def problem_create(*, project: Project, user: Any, record: dict[str, Any]) -> Problem:
    """A labeler's problem waits for review; a project manager's is approved at once. ValueError
    (from the bank's own check) when the answer does not fit its checker."""
    checked = bank.validate_problem(record, "the problem")
    approved = user_can(user, Capability.MANAGE_PROJECTS)
    return Problem.objects.create(
        project=project,
        question=checked["prompt"][-1]["content"],
        answer=checked["answer"],
        checker=checked["checker"],
        choices=checked.get("choices", []),
        checker_code=checked.get("checker_code", ""),
        solution=str(record.get("solution", "")),
        source="labeler" if not approved else "trainer",
        author=user,
        status=ProblemStatus.APPROVED if approved else ProblemStatus.SUBMITTED,
    )


IMPORT_FORMATS = {
    "gsm8k": bank.parse_gsm8k,
    "choice": bank.parse_multiple_choice,
}


def problems_import(
    *, project: Project, user: Any, lines: Any, file_format: str = "gsm8k"
) -> tuple[int, list[str]]:
    """Import a JSONL file of problems (``file_format``: ``"gsm8k"`` or ``"choice"``, ARC/MMLU
    style multiple choice). Lines that cannot be used are skipped and described."""
    parse = IMPORT_FORMATS.get(file_format)
    if parse is None:
        raise ValueError(f"unknown problem file format {file_format!r}")
    parsed, errors = parse(
        line.decode("utf-8", "replace") if isinstance(line, bytes) else line for line in lines
    )
    _bulk(project, user, parsed, file_format)
    return len(parsed), [f"line {e['line']}: {e['error']}" for e in errors]


def problems_generate(
    *, project: Project, user: Any, count: int, difficulty: int, seed: int
) -> int:
    generated = bank.arithmetic_problems(count, difficulty=difficulty, seed=seed)
    _bulk(project, user, generated, f"arithmetic-{difficulty}")
    return len(generated)


def _bulk(project: Project, user: Any, records: list[dict[str, Any]], source: str) -> None:
    Problem.objects.bulk_create(
        [
            Problem(
                project=project,
                question=r["question"],
                answer=str(r["answer"]),
                checker=r.get("checker", "number"),
                choices=r.get("choices", []),
                solution=r.get("solution", ""),
                source=str(r.get("source") or source)[:40] if source == "choice" else source,
                author=user,
                status=ProblemStatus.APPROVED,
            )
            for r in records
        ],
        batch_size=1000,
    )


def problem_review(*, problem: Problem, user: Any, approve: bool) -> Problem:
    if not user_can(user, Capability.REVIEW):
        raise LabelingRefused("Your role may not review.")
    if problem.author_id == user.pk and not user_can(user, Capability.MANAGE_ALL):
        raise LabelingRefused("Reviewing your own problem is not allowed.")
    problem.status = ProblemStatus.APPROVED if approve else ProblemStatus.REJECTED
    problem.save(update_fields=["status"])
    return problem


def problem_snapshot_create(
    *, project: Project, user: Any, name: str, validation_fraction: float = 0.1
) -> Snapshot:
    approved = list(project.problems.filter(status=ProblemStatus.APPROVED))
    if not approved:
        raise ValueError("No approved problems to export: write, import or generate some first.")
    staging = Path(tempfile.mkdtemp(prefix="problems-", dir=training_services.artifacts_root()))
    try:
        card = bank.write_problem_snapshot(
            [p.as_record() for p in approved],
            staging,
            validation_fraction=validation_fraction,
            salt=f"project-{project.pk}",
        )
        with transaction.atomic():
            artifact = training_services.artifact_register_dir(
                source=staging,
                kind=ArtifactKind.DATASET,
                name=name,
                run=None,
                parents=[],
                user=user,
                meta={"stage": "problems", "card": card, "project": project.pk},
            )
            snapshot = Snapshot.objects.create(
                project=project,
                kind=SnapshotKind.PROBLEMS,
                artifact=artifact,
                card=card,
                created_by=user,
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return snapshot
