"""A checkpoint's report card: everything it came from, what each step made and cost, and whose
data went in; and its lineage laid out as a layered graph that a template draws as SVG.

``report_card(artifact)`` walks every ancestor (web data → corpus → tokenizer → base → SFT →
reward model → RL ...) and returns a plain, JSON-safe dict (datetimes as ISO strings), so the
same dict renders the page, the Markdown download (``report_markdown``) and the JSON download.
``lineage_graph(artifact)`` returns boxes and arrows with coordinates; nothing is drawn in the
browser by script (the CSP forbids it).

People are read from the dataset snapshots' cards (``meta["card"]``, written by the labeling
app), never from the labeling models: ``training`` does not import ``labeling``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import defaultdict
from datetime import datetime
from typing import Any

from django.utils import timezone

from training.models import Artifact, ArtifactKind, Run, RunStatus

FORMAT_VERSION = 1
MAX_NODES = 60  # a lineage larger than this is cut (``truncated``), oldest ancestors last

# --- figures by stage -----------------------------------------------------------------------
#
# Each entry is (label, key or (first_key, last_key), digits). A pair is shown as "a → b";
# ``digits`` rounds floats (None: integers with thousands separators). Missing keys are skipped.

Spec = tuple[str, str | tuple[str, str], int | None]

STAGE_FIGURES: dict[str, list[Spec]] = {
    "webdata": [("Documents", "documents", None), ("Skipped", "skipped", None)],
    "blocklist": [("Domains", "documents", None)],
    "corpus": [
        ("Documents read", "documents_in", None),
        ("Kept", "documents_kept", None),
        ("Dropped", "documents_dropped", None),
        ("Documents", "documents", None),  # an uploaded corpus
        ("Characters", "characters", None),
    ],
    "tokenizer": [
        ("Vocabulary", "vocab_size", None),
        ("Merges", "num_merges", None),
        ("Bytes per token", "bytes_per_token", 2),
        ("Characters per token", "chars_per_token", 2),
        ("Documents read", "documents", None),
    ],
    "pretrain": [
        ("Validation loss", "val_loss", 4),
        ("Validation bits per byte", "val_bpb", 4),
        ("Final training loss", "final_loss", 4),
        ("Parameters", "parameters", None),
        ("Tokens seen", "tokens_seen", None),
        ("Tokens per parameter", "tokens_per_parameter", 2),
    ],
    "sft": [
        ("Method", "method", None),
        ("Training loss", ("train_loss_first", "train_loss_last"), 4),
        ("Validation loss", "val_loss", 4),
        ("Replies that end their turn", "stop_rate", 3),
        ("Conversations (train)", "conversations", None),
        ("Assistant tokens trained", "tokens_trained", None),
    ],
    "reward": [
        ("Held-out pairwise accuracy", "val_accuracy", 3),
        ("Training accuracy", "train_accuracy", 3),
        ("Training loss", ("train_loss_first", "train_loss_last"), 4),
        ("Pairs (train)", "pairs", None),
        ("Pairs (validation)", "validation_pairs", None),
    ],
    "ppo": [
        ("Reward model score", ("reward_first", "reward_last"), 3),
        ("KL from the start", "kl_last", 4),
        ("Best independent score at step", "best_step", None),
        ("Scores diverged at step", "divergence_step", None),
        ("Output is from step", "output_step", None),
        ("Prompts", "prompts", None),
    ],
    "grpo": [
        ("Held-out pass@1", ("val_pass@1_before", "val_pass@1_after"), 3),
        ("Held-out pass@k", ("val_pass@k_before", "val_pass@k_after"), 3),
        ("Mean reward", ("reward_first", "reward_last"), 3),
        ("Share of correct samples", ("accuracy_first", "accuracy_last"), 3),
        ("KL from the start", "kl_last", 4),
        ("Problems (train)", "problems", None),
    ],
    "merge": [("Parameters", "parameters", None)],
    "import": [("Parameters", "parameters", None), ("Architecture", "architecture", None)],
}

RESULT_NOISE = {"files", "config", "card", "stage", "project", "origin", "sha256_file"}


def _number_text(value: Any, digits: int | None) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if digits is None:
            return f"{value:,.0f}" if value.is_integer() else f"{value:.4g}"
        return f"{value:.{digits}f}"
    return str(value)


def _json_number(value: Any) -> Any:
    """A float JSON can carry (NaN and infinities become None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and value is not None


def _figures(stage: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    specs = STAGE_FIGURES.get(stage)
    if specs is None:  # an unknown stage: its plain numbers, as recorded
        specs = [
            (key, key, 4)
            for key, value in sorted(values.items())
            if key not in RESULT_NOISE
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ][:8]
    figures = []
    for label, key, digits in specs:
        if isinstance(key, tuple):
            first, last = values.get(key[0]), values.get(key[1])
            if not _is_scalar(first) and not _is_scalar(last):
                continue
            text = (
                f"{_number_text(first, digits) if _is_scalar(first) else '—'} → "
                f"{_number_text(last, digits) if _is_scalar(last) else '—'}"
            )
            value: Any = [_json_number(first), _json_number(last)]
            name = f"{key[0]}→{key[1]}"
        else:
            raw = values.get(key)
            if not _is_scalar(raw):
                continue
            text, value, name = _number_text(raw, digits), _json_number(raw), key
        figures.append({"key": name, "label": label, "value": value, "text": text})
    return figures


# --- the walk -------------------------------------------------------------------------------


def _ancestry(
    artifact: Artifact, max_nodes: int = MAX_NODES
) -> tuple[dict[int, Artifact], list[tuple[int, int]], bool]:
    """The artifact and every ancestor (at most ``max_nodes``), and the parent → child edges
    among them; ``truncated`` when ancestors were left out."""
    through = Artifact.parents.through
    ids: set[int] = {artifact.pk}
    edges: set[tuple[int, int]] = set()
    frontier = {artifact.pk}
    truncated = False
    while frontier:
        links = list(
            through.objects.filter(from_artifact_id__in=frontier).values_list(
                "to_artifact_id", "from_artifact_id"
            )
        )
        frontier = set()
        for parent, child in sorted(links):
            if parent not in ids:
                if len(ids) >= max_nodes:
                    truncated = True
                    continue
                ids.add(parent)
                frontier.add(parent)
            edges.add((parent, child))
    nodes = Artifact.objects.select_related("run", "run__created_by", "created_by").in_bulk(ids)
    return nodes, sorted(edges), truncated


def _topological(nodes: dict[int, Artifact], edges: list[tuple[int, int]]) -> list[int]:
    """Parents before children; among the nodes ready at once, the oldest first (so a plain
    chain reads in the order it was made). A cycle (impossible through the app) is broken by
    appending what is left, oldest first."""
    children: dict[int, list[int]] = defaultdict(list)
    waiting = dict.fromkeys(nodes, 0)
    for parent, child in edges:
        children[parent].append(child)
        waiting[child] += 1

    def key(pk: int) -> tuple[datetime, int]:
        return (nodes[pk].created_at, pk)

    ready = [(key(pk), pk) for pk, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, pk = heapq.heappop(ready)
        order.append(pk)
        for child in children[pk]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (key(child), child))
    placed = set(order)
    left = sorted((pk for pk in nodes if pk not in placed), key=key)
    return order + left


def _depths(order: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    """Topological depth: 0 for a node without parents, else one more than its deepest parent."""
    parents: dict[int, list[int]] = defaultdict(list)
    for parent, child in edges:
        parents[child].append(parent)
    depth: dict[int, int] = {}
    for pk in order:
        depth[pk] = 1 + max((depth[p] for p in parents[pk] if p in depth), default=-1)
    return depth


# --- one node -------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _stage(artifact: Artifact) -> str:
    stage = (artifact.meta or {}).get("stage")
    if isinstance(stage, str) and stage:
        return stage
    if artifact.run_id:
        return artifact.run.kind
    return "upload"


def _figure_key(artifact: Artifact, stage: str) -> str:
    return stage if stage in STAGE_FIGURES else artifact.kind


def _run_facts(run: Run) -> dict[str, Any]:
    result = run.result if isinstance(run.result, dict) else {}
    duration = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    seconds = result.get("seconds")
    compute = (
        seconds if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
    )
    return {
        "id": run.pk,
        "kind": run.kind,
        "status": run.status,
        "config": run.config if isinstance(run.config, dict) else {},
        "inputs": run.inputs if isinstance(run.inputs, dict) else {},
        "created_by": run.created_by.get_username() if run.created_by_id else None,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_seconds": duration,
        "seconds": _json_number(compute if compute is not None else duration),
        "seconds_text": duration_text(compute if compute is not None else duration),
        "device": result.get("device") if isinstance(result.get("device"), str) else None,
        "dtype": result.get("dtype") if isinstance(result.get("dtype"), str) else None,
        "steps": result.get("steps") if isinstance(result.get("steps"), int) else None,
        "max_steps": result.get("max_steps") if isinstance(result.get("max_steps"), int) else None,
        "tokens_seen": (
            result.get("tokens_seen") if isinstance(result.get("tokens_seen"), int) else None
        ),
        "url": run.get_absolute_url(),
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dataset_facts(artifact: Artifact) -> dict[str, Any] | None:
    """What a labeling snapshot's card says about the data and the people who made it."""
    card = (artifact.meta or {}).get("card")
    if artifact.kind != ArtifactKind.DATASET or not isinstance(card, dict):
        return None
    raw = card.get("labelers")
    rankings: dict[str, int | None] = {}
    if isinstance(raw, dict):  # preferences: name → rankings
        rankings = {str(k): _int(v) for k, v in raw.items()}
    elif isinstance(raw, list):  # conversations: names
        rankings = {str(name): None for name in raw}
    agreement = card.get("agreement") if isinstance(card.get("agreement"), dict) else {}
    counts = card.get("counts") if isinstance(card.get("counts"), dict) else {}
    pairs = card.get("pairs")
    if isinstance(pairs, dict):  # pairs per split
        pairs = sum(v for v in pairs.values() if _int(v) is not None)
    versions = card.get("guideline_versions")
    digest = card.get("content_sha256")
    return {
        "labelers": sorted(rankings),
        "rankings_by_labeler": rankings,
        "conversations": _int(card.get("conversations")),
        "guideline_versions": versions if isinstance(versions, list) else [],
        "items": _int(card.get("items")),
        "rankings": _int(card.get("rankings")),
        "pairs": _int(pairs),
        "agreement": {
            key: _json_number(agreement[key])
            for key in ("pairwise", "alpha", "ceiling")
            if isinstance(agreement.get(key), (int, float))
        },
        "problems": _int(counts.get("total")),
        "counts": {str(k): v for k, v in counts.items() if _int(v) is not None},
        "content_sha256": digest if isinstance(digest, str) else None,
    }


def _dataset_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    figures = []
    for key, label in (
        ("conversations", "Conversations"),
        ("items", "Items ranked"),
        ("rankings", "Rankings"),
        ("pairs", "Preference pairs"),
        ("problems", "Problems"),
    ):
        if data.get(key) is not None:
            figures.append(
                {"key": key, "label": label, "value": data[key], "text": f"{data[key]:,}"}
            )
    if data["labelers"]:
        n = len(data["labelers"])
        figures.append({"key": "labelers", "label": "Labelers", "value": n, "text": f"{n:,}"})
    agreement = data["agreement"]
    for key, label in (("pairwise", "Pairwise agreement"), ("ceiling", "Agreement ceiling")):
        if key in agreement and agreement[key] is not None:
            value = agreement[key]
            figures.append(
                {"key": f"agreement.{key}", "label": label, "value": value, "text": f"{value:.3f}"}
            )
    return figures


def _node(artifact: Artifact, parents: list[int], depth: int) -> dict[str, Any]:
    stage = _stage(artifact)
    meta = artifact.meta if isinstance(artifact.meta, dict) else {}
    values = {k: v for k, v in meta.items() if k not in RESULT_NOISE}
    run = artifact.run if artifact.run_id else None
    if run is not None and isinstance(run.result, dict):
        values.update(run.result)
    data = _dataset_facts(artifact)
    figures = _dataset_figures(data) if data else _figures(_figure_key(artifact, stage), values)
    return {
        "id": artifact.pk,
        "kind": artifact.kind,
        "kind_label": artifact.get_kind_display(),
        "name": artifact.name,
        "stage": stage,
        "sha256": artifact.sha256,
        "size_bytes": artifact.size_bytes,
        "created_at": _iso(artifact.created_at),
        "created_by": artifact.created_by.get_username() if artifact.created_by_id else None,
        "url": artifact.get_absolute_url(),
        "parents": parents,
        "depth": depth,
        "run": _run_facts(run) if run is not None else None,
        "figures": figures,
        "data": data,
        "evaluations": [],
    }


def _add_reward_ceilings(nodes: dict[int, dict[str, Any]]) -> None:
    """A reward model's held-out accuracy next to its labelers' agreement ceiling (the mean
    ceiling of the preference snapshots it was trained on)."""
    for node in nodes.values():
        if node["stage"] != "reward":
            continue
        ceilings = [
            nodes[p]["data"]["agreement"]["ceiling"]
            for p in node["parents"]
            if p in nodes
            and nodes[p]["data"]
            and nodes[p]["data"]["agreement"].get("ceiling") is not None
        ]
        if not ceilings:
            continue
        ceiling = sum(ceilings) / len(ceilings)
        figure = {
            "key": "ceiling",
            "label": "Labelers' agreement ceiling",
            "value": ceiling,
            "text": f"{ceiling:.3f}",
        }
        accuracy = next((f["value"] for f in node["figures"] if f["key"] == "val_accuracy"), None)
        if isinstance(accuracy, (int, float)):
            verdict = "at or above" if accuracy >= ceiling else "below"
            figure["text"] += f" (held-out accuracy is {verdict} it)"
        node["figures"].append(figure)


def _add_evaluations(nodes: dict[int, dict[str, Any]]) -> None:
    """pass@1 / pass@k rows of every finished evaluate run that read one of the checkpoints."""
    checkpoints = [pk for pk, n in nodes.items() if n["kind"] == ArtifactKind.CHECKPOINT]
    if not checkpoints:
        return
    runs = (
        Run.objects.filter(
            kind="evaluate", status=RunStatus.SUCCEEDED, input_artifacts__in=checkpoints
        )
        .distinct()
        .order_by("finished_at", "pk")
    )
    for run in runs:
        result = run.result if isinstance(run.result, dict) else {}
        ids = list((run.inputs or {}).get("checkpoints", []))
        rows = {
            r.get("checkpoint"): r for r in result.get("checkpoints", []) if isinstance(r, dict)
        }
        for index, pk in enumerate(ids):
            if pk not in nodes or index not in rows:
                continue
            row = rows[index]
            nodes[pk]["evaluations"].append(
                {
                    "run": run.pk,
                    "url": run.get_absolute_url(),
                    "split": result.get("split"),
                    "problems": result.get("problems"),
                    "k": result.get("k"),
                    "pass1": _json_number(row.get("pass@1")),
                    "passk": _json_number(row.get("pass@k")),
                    "accuracy": _json_number(row.get("accuracy")),
                    "scored": row.get("scored"),
                    "figures": _evaluation_figures(row),
                    "compared_with": len(ids) - 1,
                    "finished_at": _iso(run.finished_at),
                }
            )


def _evaluation_figures(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure an evaluation gave one checkpoint, labelled as the run page shows it."""
    from training.evaluations import FIGURES

    return [
        {
            "key": f.key,
            "label": f.label,
            "value": _json_number(row[f.key]),
            "text": f.text(row[f.key]),
        }
        for f in FIGURES
        if row.get(f.key) is not None
    ]


def _people(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    people: dict[str, dict[str, Any]] = {}
    for node in nodes:
        data = node["data"]
        if not data:
            continue
        for name in data["labelers"]:
            person = people.setdefault(name, {"username": name, "datasets": [], "rankings": None})
            rankings = data["rankings_by_labeler"].get(name)
            person["datasets"].append(
                {
                    "id": node["id"],
                    "name": node["name"],
                    "stage": node["stage"],
                    "rankings": rankings,
                }
            )
            if rankings is not None:
                person["rankings"] = (person["rankings"] or 0) + rankings
    return sorted(people.values(), key=lambda p: p["username"].lower())


def _totals(nodes: list[dict[str, Any]], people: list[dict[str, Any]]) -> dict[str, Any]:
    runs = {n["run"]["id"]: n["run"] for n in nodes if n["run"]}
    compute = [r["seconds"] for r in runs.values() if r["seconds"] is not None]
    by_device: dict[str, float] = defaultdict(float)
    for r in runs.values():
        if r["seconds"] is not None:
            by_device[r["device"] or "device not recorded"] += r["seconds"]
    data = [n["data"] for n in nodes if n["data"]]

    def total(key: str) -> int | None:
        found = [d[key] for d in data if isinstance(d.get(key), int)]
        return sum(found) if found else None

    tokens = [r["tokens_seen"] for r in runs.values() if r["tokens_seen"] is not None]
    seconds = round(sum(compute), 3) if compute else None
    return {
        "artifacts": len(nodes),
        "runs": len(runs),
        "runs_timed": len(compute),
        "compute_seconds": seconds,
        "compute_text": duration_text(seconds),
        "compute_by_device": {k: round(v, 3) for k, v in sorted(by_device.items())},
        "tokens_seen": sum(tokens) if tokens else None,
        "people": len(people),
        "launched_by": sorted({r["created_by"] for r in runs.values() if r["created_by"]}),
        "datasets": len(data),
        "conversations": total("conversations"),
        "rankings": total("rankings"),
        "pairs": total("pairs"),
        "problems": total("problems"),
    }


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --- public ---------------------------------------------------------------------------------


def report_card(artifact: Artifact, max_nodes: int = MAX_NODES) -> dict[str, Any]:
    """The artifact's lineage, parents first and the artifact itself last, with each node's
    run, figures, evaluations and people, and the totals. JSON-safe."""
    artifacts, edges, truncated = _ancestry(artifact, max_nodes)
    order = _topological(artifacts, edges)
    order = [pk for pk in order if pk != artifact.pk] + [artifact.pk]
    depth = _depths(order, edges)
    parents: dict[int, list[int]] = defaultdict(list)
    for parent, child in edges:
        parents[child].append(parent)
    by_id = {pk: _node(artifacts[pk], sorted(parents[pk]), depth[pk]) for pk in order}
    _add_reward_ceilings(by_id)
    _add_evaluations(by_id)
    nodes = [by_id[pk] for pk in order]
    people = _people(nodes)
    return {
        "format": FORMAT_VERSION,
        "generated_at": timezone.now().isoformat(),
        "artifact": by_id[artifact.pk],
        "nodes": nodes,
        "edges": [list(e) for e in edges],
        "people": people,
        "totals": _totals(nodes, people),
        "truncated": truncated,
    }


def report_json(card: dict[str, Any]) -> str:
    return json.dumps(card, indent=1, ensure_ascii=False, allow_nan=False, default=str)


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell or line: no markup, no HTML, one line."""
    out = " ".join(str(text).split())
    for ch in "\\`*_[]<>|#!":
        out = out.replace(ch, "\\" + ch)
    return out


def report_markdown(card: dict[str, Any]) -> str:
    target = card["artifact"]
    totals = card["totals"]
    lines = [
        f"# Report card: {_md(target['kind_label'])} #{target['id']} {_md(target['name'])}",
        "",
        f"- SHA-256: `{target['sha256']}`",
        f"- Stage: {_md(target['stage'])}",
        f"- Generated: {card['generated_at']}",
        f"- Lineage: {totals['artifacts']} artifacts, {totals['runs']} runs",
        f"- Compute: {totals['compute_text']}"
        + (
            " ("
            + ", ".join(
                f"{_md(d)}: {duration_text(s)}" for d, s in totals["compute_by_device"].items()
            )
            + ")"
            if totals["compute_by_device"]
            else ""
        ),
        f"- People whose data went in: {totals['people']}",
    ]
    if totals["tokens_seen"]:
        lines.append(f"- Tokens seen in pretraining: {totals['tokens_seen']:,}")
    if card["truncated"]:
        lines.append("- The lineage was cut: older ancestors are left out.")
    lines += ["", "## Lineage", ""]
    lines += [
        "| # | Kind | Name | Stage | SHA-256 | Made by | Compute |",
        "|---|---|---|---|---|---|---|",
    ]
    for node in card["nodes"]:
        run = node["run"]
        made = (
            f"run #{run['id']} ({_md(run['kind'])}, {_md(run['status'])})"
            if run
            else (f"no run; registered by {_md(node['created_by'] or '—')}")
        )
        lines.append(
            f"| {node['id']} | {_md(node['kind_label'])} | {_md(node['name'])} | "
            f"{_md(node['stage'])} | `{node['sha256']}` | {made} | "
            f"{run['seconds_text'] if run else '—'} |"
        )
    for node in card["nodes"]:
        lines += ["", f"## {_md(node['kind_label'])} #{node['id']}: {_md(node['name'])}", ""]
        lines.append(f"- SHA-256: `{node['sha256']}`, {node['size_bytes']:,} bytes")
        lines.append(f"- Created {node['created_at']} by {_md(node['created_by'] or '—')}")
        if node["parents"]:
            lines.append("- Made from: " + ", ".join(f"#{p}" for p in node["parents"]))
        run = node["run"]
        if run:
            when = f"{run['started_at'] or '—'} → {run['finished_at'] or '—'}"
            lines.append(
                f"- Run #{run['id']} ({_md(run['kind'])}, {_md(run['status'])}) by "
                f"{_md(run['created_by'] or '—')}: {when}, {run['seconds_text']}"
            )
            extras = [
                f"{label} {_md(_number_text(run[key], None))}"
                for key, label in (
                    ("device", "device"),
                    ("dtype", "dtype"),
                    ("steps", "steps"),
                    ("tokens_seen", "tokens seen"),
                )
                if run.get(key) is not None
            ]
            if extras:
                lines.append("- " + ", ".join(extras))
            if run["config"]:
                config = json.dumps(run["config"], sort_keys=True, default=str)
                lines.append(f"- Config: `{config.replace('`', chr(39))}`")
        for figure in node["figures"]:
            if figure["key"] == "labelers":
                continue  # listed by name below
            lines.append(f"- {_md(figure['label'])}: {_md(figure['text'])}")
        data = node["data"]
        if data:
            if data["content_sha256"]:
                lines.append(f"- Content SHA-256: `{data['content_sha256']}`")
            if data["labelers"]:
                names = ", ".join(_md(n) for n in data["labelers"])
                lines.append(f"- Labelers ({len(data['labelers'])}): {names}")
        for row in node["evaluations"]:
            figures = "; ".join(f"{f['label']} {f['text']}" for f in row["figures"]) or "—"
            lines.append(f"- Evaluate run #{row['run']}: {_md(figures)}")
    lines += ["", "## People", ""]
    if card["people"]:
        lines += ["| Labeler | Datasets | Rankings |", "|---|---|---|"]
        for person in card["people"]:
            datasets = ", ".join(f"#{d['id']}" for d in person["datasets"])
            rankings = person["rankings"] if person["rankings"] is not None else "—"
            lines.append(f"| {_md(person['username'])} | {datasets} | {rankings} |")
    else:
        lines.append("No labeling snapshot in the lineage names its labelers.")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "—"


# --- the graph ------------------------------------------------------------------------------

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 180, 46, 28, 40, 16
KIND_COLORS = {
    ArtifactKind.WEBDATA: "#eef2f7",
    ArtifactKind.BLOCKLIST: "#f3f3f3",
    ArtifactKind.CORPUS: "#e8f3ec",
    ArtifactKind.TOKENIZER: "#fdf3e1",
    ArtifactKind.CHECKPOINT: "#e7effb",
    ArtifactKind.DATASET: "#f6eafa",
    ArtifactKind.OUTPUT: "#f3f3f3",
}


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lineage_graph(artifact: Artifact, max_nodes: int = MAX_NODES) -> dict[str, Any]:
    """Boxes in rows by depth (top: oldest), arrows parent → child, ready for an SVG.

    ``depth`` is the topological depth (longest path from a node without parents); ``layer`` is
    the row it is drawn in: the depth, except that a node without parents (a dataset, an
    upload) sits in the row just above its first consumer instead of at the top, which keeps
    arrows short. Within a row, nodes are ordered by the mean position of their parents.
    """
    artifacts, edges, truncated = _ancestry(artifact, max_nodes)
    order = _topological(artifacts, edges)
    depth = _depths(order, edges)
    parents: dict[int, list[int]] = defaultdict(list)
    children: dict[int, list[int]] = defaultdict(list)
    for parent, child in edges:
        parents[child].append(parent)
        children[parent].append(child)
    layer = dict(depth)
    for pk in order:
        if not parents[pk] and children[pk]:
            layer[pk] = max(0, min(depth[c] for c in children[pk]) - 1)
    rank = {pk: i for i, pk in enumerate(order)}
    rows: dict[int, list[int]] = defaultdict(list)
    for pk in order:
        rows[layer[pk]].append(pk)
    position: dict[int, float] = {}
    for index in sorted(rows):
        row = rows[index]

        def weight(pk: int) -> tuple[float, int]:
            placed = [position[p] for p in parents[pk] if p in position]
            return (sum(placed) / len(placed) if placed else -1.0, rank[pk])

        row.sort(key=weight)
        for slot, pk in enumerate(row):
            position[pk] = slot - (len(row) - 1) / 2
    widest = max((len(r) for r in rows.values()), default=1)
    width = MARGIN * 2 + widest * BOX_W + (widest - 1) * GAP_X
    height = MARGIN * 2 + len(rows) * BOX_H + max(0, len(rows) - 1) * GAP_Y
    row_of = {index: i for i, index in enumerate(sorted(rows))}
    boxes: dict[int, dict[str, Any]] = {}
    for pk in order:
        a = artifacts[pk]
        x = width / 2 + position[pk] * (BOX_W + GAP_X) - BOX_W / 2
        y = MARGIN + row_of[layer[pk]] * (BOX_H + GAP_Y)
        boxes[pk] = {
            "id": pk,
            "kind": a.kind,
            "kind_label": a.get_kind_display(),
            "name": a.name,
            "label": _short(a.name),
            "stage": _stage(a),
            "depth": depth[pk],
            "layer": layer[pk],
            "x": round(x, 1),
            "y": round(y, 1),
            "w": BOX_W,
            "h": BOX_H,
            "text_x": round(x + 8, 1),
            "title_y": round(y + 18, 1),
            "name_y": round(y + 36, 1),
            "fill": KIND_COLORS.get(a.kind, "#f3f3f3"),
            "url": a.run.get_absolute_url() if a.run_id else a.get_absolute_url(),
            "artifact_url": a.get_absolute_url(),
            "run_id": a.run_id,
            "is_target": pk == artifact.pk,
        }
    arrows = _arrows(edges, boxes, rows, row_of, layer, width)
    return {
        "nodes": [boxes[pk] for pk in order],
        "edges": arrows,
        "layers": [list(rows[index]) for index in sorted(rows)],
        "width": width,
        "height": height,
        "truncated": truncated,
    }


def _ports(ends: list[tuple[int, float]], box: dict[str, Any]) -> dict[int, float]:
    """Where each of a box's arrows meets it, spread along its edge in the order of the other
    ends' x, so arrows into (or out of) one box stay apart."""
    ends = sorted(ends, key=lambda end: (end[1], end[0]))
    return {pk: box["x"] + BOX_W * (i + 1) / (len(ends) + 1) for i, (pk, _) in enumerate(ends)}


def _lane(x: float, row: list[dict[str, Any]], width: float) -> float:
    """The x nearest to ``x`` where an arrow passes a row without crossing a box."""
    gaps = [row[0]["x"] - GAP_X / 2] if row else [x]
    gaps += [(a["x"] + BOX_W + b["x"]) / 2 for a, b in zip(row, row[1:], strict=False)]
    if row:
        gaps.append(row[-1]["x"] + BOX_W + GAP_X / 2)
    inside = [g for g in gaps if 0 < g < width] or gaps
    if any(b["x"] - 4 <= x <= b["x"] + BOX_W + 4 for b in row):
        return min(inside, key=lambda g: abs(g - x))
    return x


def _arrows(
    edges: list[tuple[int, int]],
    boxes: dict[int, dict[str, Any]],
    rows: dict[int, list[int]],
    row_of: dict[int, int],
    layer: dict[int, int],
    width: float,
) -> list[dict[str, Any]]:
    """Curves from the bottom of each parent to the top of each child; an arrow that skips rows
    bends through the gaps between the boxes of the rows it passes."""
    outgoing: dict[int, list[tuple[int, float]]] = defaultdict(list)
    incoming: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for parent, child in edges:
        outgoing[parent].append((child, boxes[child]["x"]))
        incoming[child].append((parent, boxes[parent]["x"]))
    out_x = {pk: _ports(ends, boxes[pk]) for pk, ends in outgoing.items()}
    in_x = {pk: _ports(ends, boxes[pk]) for pk, ends in incoming.items()}
    by_row = {
        row_of[index]: sorted((boxes[pk] for pk in pks), key=lambda b: b["x"])
        for index, pks in rows.items()
    }
    arrows = []
    for parent, child in edges:
        p, c = boxes[parent], boxes[child]
        x1, y1 = out_x[parent][child], p["y"] + BOX_H
        x2, y2 = in_x[child][parent], c["y"] - 2
        points = [(x1, y1)]
        first, last = row_of[layer[parent]], row_of[layer[child]]
        for r in range(first + 1, last):
            share = (r - first) / (last - first)
            lane = _lane(x1 + (x2 - x1) * share, by_row[r], width)
            top = MARGIN + r * (BOX_H + GAP_Y)
            points += [(lane, top - GAP_Y / 4), (lane, top + BOX_H + GAP_Y / 4)]
        points.append((x2, y2))
        path = f"M{x1:.1f},{y1:.1f}"
        for (ax, ay), (bx, by) in zip(points, points[1:], strict=False):
            mid = (ay + by) / 2
            path += f" C{ax:.1f},{mid:.1f} {bx:.1f},{mid:.1f} {bx:.1f},{by:.1f}"
        arrows.append({"from": parent, "to": child, "path": path})
    return arrows
