"""Reads about runs and artifacts: filtered lists, chart series, dashboard counts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db.models import Count, QuerySet

from training.models import Artifact, ArtifactKind, Run, RunMetric, RunRecord, RunStatus

RUN_FILTERS = ("kind", "status")  # the only query parameters a run list accepts


def run_list(*, kind: str = "", status: str = "") -> QuerySet[Run]:
    runs = Run.objects.select_related("created_by")
    if kind:
        runs = runs.filter(kind=kind)
    if status:
        runs = runs.filter(status=status)
    return runs


def artifact_list(*, kind: str = "") -> QuerySet[Artifact]:
    artifacts = Artifact.objects.select_related("run", "created_by")
    return artifacts.filter(kind=kind) if kind else artifacts


def metric_series(run: Run, max_points: int = 400) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (step, value) points, thinned evenly to at most ``max_points``."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for name, step, value in RunMetric.objects.filter(run=run).values_list("name", "step", "value"):
        series[name].append((step, value))
    return {name: _thin(points, max_points) for name, points in sorted(series.items())}


def _thin(points: list[tuple[int, float]], max_points: int) -> list[tuple[int, float]]:
    if len(points) <= max_points:
        return points
    stride = len(points) / max_points
    kept = [points[int(i * stride)] for i in range(max_points - 1)]
    return kept + [points[-1]]


def latest_metrics(run: Run) -> dict[str, dict[str, float]]:
    latest: dict[str, dict[str, float]] = {}
    for name, step, value in (
        RunMetric.objects.filter(run=run)
        .order_by("name", "step")
        .values_list("name", "step", "value")
    ):
        latest[name] = {"step": step, "value": value}
    return latest


def dashboard_summary(user: Any) -> dict[str, Any]:
    counts = dict(Run.objects.values_list("status").annotate(n=Count("id")))
    return {
        "runs_by_status": {s.value: counts.get(s.value, 0) for s in RunStatus},
        "recent_runs": list(Run.objects.select_related("created_by")[:5]),
        "artifacts": Artifact.objects.count(),
    }


def samples_table(run: Run, steps: int = 3) -> dict[str, Any] | None:
    """Generations from the run's fixed prompts at its latest few sample steps, one row per
    prompt and one column per step (oldest left), so a person sees the text improve."""
    records = list(RunRecord.objects.filter(run=run, name="samples").order_by("-step")[:steps])
    if not records:
        return None
    records.reverse()
    by_prompt: dict[str, list[str]] = {}
    for column, record in enumerate(records):
        for sample in record.payload.get("samples", []):
            texts = by_prompt.setdefault(str(sample.get("prompt", "")), [""] * len(records))
            # pretraining continues a prompt ("text"); SFT answers it ("reply", "ended")
            text = str(sample.get("text", sample.get("reply", "")))
            if sample.get("ended") is False:
                text += " … [did not end its turn]"
            texts[column] = text
    return {
        "steps": [r.step for r in records],
        "rows": [{"prompt": p, "texts": t} for p, t in by_prompt.items()],
    }


def lineage(artifact: Artifact, max_nodes: int = 50) -> list[Artifact]:
    """Every ancestor of an artifact, oldest first (corpus → tokenizer → base → ...)."""
    seen: dict[int, Artifact] = {}
    frontier = [artifact]
    while frontier and len(seen) < max_nodes:
        parents = Artifact.objects.filter(children__in=frontier).exclude(pk__in=seen).distinct()
        frontier = [p for p in parents if p.pk not in seen]
        seen.update((p.pk, p) for p in frontier)
    return sorted(seen.values(), key=lambda a: (a.created_at, a.pk))


def checkpoint_list() -> list[tuple[Artifact, list[Artifact]]]:
    checkpoints = Artifact.objects.filter(kind=ArtifactKind.CHECKPOINT).select_related(
        "run", "created_by"
    )
    return [(c, lineage(c)) for c in checkpoints]


def agreement_ceiling(run: Run) -> float | None:
    """The labelers' agreement ceiling recorded on the run's preference snapshots, if any: the
    accuracy a reward model trained on them is judged against."""
    ceilings = [
        a.meta.get("card", {}).get("agreement", {}).get("ceiling")
        for a in run.input_artifacts.filter(kind=ArtifactKind.DATASET)
    ]
    known = [c for c in ceilings if isinstance(c, int | float)]
    return sum(known) / len(known) if known else None


def result_view(run: Run) -> dict[str, Any]:
    """The run's result for templates, which cannot read keys such as ``val_pass@1_after``:
    ``@`` becomes ``_at_``."""
    return {str(k).replace("@", "_at_"): v for k, v in (run.result or {}).items()}


def latest_rollouts(run: Run) -> dict[str, Any] | None:
    """The newest sampled solutions of an RL run, each problem with its count of correct ones."""
    record = RunRecord.objects.filter(run=run, name="rollouts").order_by("-step").first()
    if record is None:
        return None
    problems = [
        {**p, "correct": sum(1 for s in p.get("samples", []) if s.get("correct"))}
        for p in record.payload.get("problems", [])
    ]
    return {"step": record.step, "problems": problems}


def evaluation_table(run: Run) -> dict[str, Any]:
    """An ``evaluate`` run's figures: one row per checkpoint (named by its artifact), one column
    per figure any checkpoint has, and a bar chart of the headline figure."""
    from training.evaluations import FIGURES

    if run.kind != "evaluate" or not run.result:
        return {}
    ids = list((run.inputs or {}).get("checkpoints", []))
    artifacts = Artifact.objects.in_bulk(ids)
    results = [r for r in run.result.get("checkpoints", []) if isinstance(r, dict)]
    columns = [f for f in FIGURES if any(r.get(f.key) is not None for r in results)]
    rows = []
    for row in results:
        index = row.get("checkpoint", 0)
        rows.append(
            {
                "artifact": artifacts.get(ids[index]) if index < len(ids) else None,
                "checkpoint": index,
                "role": row.get("role", "generative"),
                "values": [f.text(row.get(f.key)) for f in columns],
                "scored": row.get("scored"),
            }
        )
    headline = next((f for f in columns if f.share), None)
    bars = []
    if headline is not None:
        for row, result in zip(rows, results, strict=True):
            name = row["artifact"].name[:24] if row["artifact"] else f"#{row['checkpoint']}"
            bars.append((name, round(100 * (result.get(headline.key) or 0))))
    return {
        "evaluation": rows,
        "evaluation_columns": columns,
        "evaluation_bars": bars,
        "evaluation_headline": headline,
        "evaluation_examples": [
            (row, r.get("win_examples") or []) for row, r in zip(rows, results, strict=True)
        ],
    }


def factuality_history(run: Run) -> list[dict[str, Any]]:
    """Every factuality probe on the same questions, oldest first: how the wrong-answer and
    refusal rates moved from checkpoint to checkpoint (say, before and after SFT on the
    drafted "I don't know" replies)."""
    if run.kind != "factuality":
        return []
    questions = sorted((run.inputs or {}).get("questions", []))
    rows = []
    probes = Run.objects.filter(kind="factuality", status=RunStatus.SUCCEEDED).order_by("pk")
    for probe in probes:
        if sorted((probe.inputs or {}).get("questions", [])) != questions:
            continue
        checkpoint_ids = (probe.inputs or {}).get("checkpoint", [])
        checkpoint = Artifact.objects.filter(pk__in=checkpoint_ids).first()
        result = probe.result or {}
        rows.append(
            {
                "run": probe,
                "checkpoint": checkpoint,
                "wrong_rate": result.get("wrong_rate"),
                "refusal_rate": result.get("refusal_rate"),
                "correct_rate": result.get("correct_rate"),
                "consistently_wrong": result.get("consistently_wrong"),
            }
        )
    return rows
