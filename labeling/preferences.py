"""Rankings and preference data: what labelers' orderings become for reward models and DPO.

Pure Python (stdlib + pyarrow, like :mod:`labeling.formats`): no Django, so the rules, the
aggregation and the snapshot writer can be tested, and used from a worker, without a database.

A *ranking* (:class:`Ranking`) is one labeler's ordering of the K responses shown for a prompt:
a list of *tiers*, best first, each tier the indices (0-based, into the responses as shown) of
responses judged equally good. ``[[2], [0, 1]]``: response 2 is best, 0 and 1 tie behind it.
``all_bad`` says that none of them is acceptable; the order is still recorded (the labeler may
have sorted bad from worse) but no preference pair comes from it: training "chosen" on a reply the
labeler called unacceptable would teach the model to give it. An arena vote (``"a"``, ``"b"``,
``"tie"``, ``"both_bad"``) is a ranking of two (:func:`ranking_from_vote`).

Aggregation (:func:`aggregate_rankings`), when several labelers ranked the same item: every
ranking of the item is one vote on every pair of its responses, for one direction (``i`` better
than ``j`` or the reverse) or for none (a tie, or any all-bad ranking). A pair ``(chosen,
rejected)`` is exported when *more than half* of the item's votes give that direction. So ties and
disagreement are left out: 2 votes need both, 3 need 2 (with 2-1 or 2-0-1), a 1-1 split or a
1-0-1 (one tie) is dropped. Each ranking counts once, whoever made it (labeler names are
provenance, and the database allows one ranking per labeler and item).

Snapshot (written by :func:`write_preference_snapshot`, read back by
:func:`read_preference_snapshot`), one folder::

    train.jsonl        one row per exported pair, in TRL's explicit-prompt conversational
                       preference format: {"prompt": [messages], "chosen": [{"role":
                       "assistant", "content": ...}], "rejected": [{...}]}; rows ordered by item
                       id, then (chosen, rejected) index
    validation.jsonl   same for the validation split (may be empty)
    train.parquet      the same rows, columns chosen, prompt, rejected (key order, as the JSON
    validation.parquet loader sees them), each list<struct<content: string, role: string>>,
                       plus name/tool_calls in the prompt only when some prompt message has
                       them, as formats.write_snapshot derives its schema
    raw_rankings.jsonl {"id", "prompt", "responses", "rankings": [{"labeler", "order",
                       "all_bad"}]} per item, sorted by id: every ranking, including ties,
                       all-bad ones and those outvoted, so another aggregation can be rerun
    index.jsonl        {"id", "split", "pairs": [[chosen, rejected], ...], "rankings", "meta"
                       [, "group"]} per item, sorted by id; "pairs" lists the item's rows in the
                       split's JSONL in order, so row n maps back to an item and two indices
    card.json          counts (items, pairs per split, rankings per labeler, ...),
                       content_sha256 and the caller's card_extra (e.g. agreement figures)
    README.md          a Hugging Face dataset card (YAML ``configs`` pointing at the JSONL files)

Decisions, beyond those of :func:`labeling.formats.write_snapshot` (which this follows: same
split rule, canonical JSON, no timestamps):

- Rows carry only ``prompt``/``chosen``/``rejected``: trainers see no stray columns; lineage is in
  ``index.jsonl``.
- The split is per item, from ``sha256(salt, group or id)``: every pair of an item, and every item
  of a group (the OASST importer groups by tree, since a deeper item's prompt holds a shallower
  item's reply), lands on the same side, and an item keeps its side when items are added or when
  its votes change. The "neither split empty" patch is applied over the items that yield pairs.
- Inside a tier indices are stored sorted, and an item's rankings are sorted by (labeler, order,
  all_bad): the same rankings in any order give byte-identical files.
- ``content_sha256`` is the SHA-256 of ``raw_rankings.jsonl``: it covers prompts, responses and
  every ranking (so the pairs), not the split or the items' meta.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from labeling.formats import (
    OASST_ROLES,
    SPLITS,
    FormatError,
    LineProblem,
    Message,
    _assign_splits,
    _canonical,
    _id_key,
    _numbered_objects,
    _oasst_children,
    _parquet_schema,
    _write_parquet,
    normalize_messages,
    parse_hh_pairs,
    validate_messages,
)

PREFERENCE_FORMAT_VERSION = 1
HH_LABELER = "import:hh"
OASST_LABELER = "import:oasst"

Order = list[list[int]]
Vote = Literal["a", "b", "tie", "both_bad"]
VOTES: dict[str, tuple[Order, bool]] = {
    "a": ([[0], [1]], False),
    "b": ([[1], [0]], False),
    "tie": ([[0, 1]], False),
    "both_bad": ([[0, 1]], True),
}


@dataclass(frozen=True)
class Ranking:
    """One ordering of the responses shown: tiers of response indices, best first."""

    order: Order
    all_bad: bool = False


@dataclass(frozen=True)
class RawRanking:
    """A ranking as stored, with who made it (a username, or ``import:<source>``)."""

    labeler: str
    order: Order
    all_bad: bool = False


@dataclass(frozen=True)
class PreferenceItem:
    """A prompt (messages ending where the assistant answers), the responses shown for it, in
    the order shown, and every ranking of them. ``meta`` goes to ``index.jsonl`` as it is;
    items with the same ``group`` land in the same split (default: by id)."""

    id: str | int
    prompt: list[Message]
    responses: list[str]
    rankings: list[RawRanking] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    group: str | None = None


@dataclass(frozen=True)
class PreferenceSnapshotCard:
    """What ``card.json`` holds. ``splits`` counts items, ``pairs`` counts rows, per split;
    ``labelers``: rankings per labeler; ``pairs_without_majority``: response pairs of ranked
    items that no direction won (ties, all-bad votes, disagreement). ``extra`` (the caller's
    ``card_extra``) is merged at the top level of ``card.json``."""

    items: int
    items_with_pairs: int
    splits: dict[str, int]
    pairs: dict[str, int]
    responses: int
    rankings: int
    all_bad_rankings: int
    labelers: dict[str, int]
    pairs_without_majority: int
    content_sha256: str
    validation_fraction: float
    salt: str
    aggregation: str = "majority"
    format_version: int = PREFERENCE_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}


@dataclass
class PreferenceSnapshot:
    """A snapshot read back: ``rows[split]`` are ``{"id", "chosen_index", "rejected_index",
    "prompt", "chosen", "rejected"}``; ``items`` rebuilt from ``raw_rankings.jsonl`` and the
    index; ``card`` is ``card.json``."""

    rows: dict[str, list[dict[str, Any]]]
    items: list[PreferenceItem]
    card: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Rankings and pairs


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_ranking(ranking: Ranking | RawRanking, shown: int) -> list[str]:
    """Why a ranking of ``shown`` responses cannot be accepted, in plain language (empty: fine).

    The tiers must hold every index of ``range(shown)`` exactly once: no index missing, none
    twice, none outside the range, no empty tier. Ties (several indices in one tier) are fine.
    """
    if not _is_index(shown) or shown < 1:
        return ["no responses were shown, so there is nothing to rank"]
    problems: list[str] = []
    if not isinstance(ranking.all_bad, bool):
        problems.append("all_bad must be true or false")
    order = ranking.order
    if not isinstance(order, list | tuple):
        return [*problems, "the ranking must be a list of tiers (lists of response indices)"]
    seen: Counter[int] = Counter()
    for t, tier in enumerate(order, 1):
        if not isinstance(tier, list | tuple):
            problems.append(f"tier {t} must be a list of response indices")
            continue
        if not tier:
            problems.append(f"tier {t} is empty")
        for value in tier:
            if not _is_index(value):
                problems.append(f"tier {t}: {value!r} is not a response index")
            elif not 0 <= value < shown:
                problems.append(
                    f"response {value} does not exist: {shown} responses were shown "
                    f"(indices 0 to {shown - 1})"
                )
            else:
                seen[value] += 1
    twice = sorted(i for i, n in seen.items() if n > 1)
    if twice:
        problems.append(f"response{_listed(twice)} ranked more than once")
    missing = [i for i in range(shown) if i not in seen]
    if missing:
        problems.append(f"response{_listed(missing)} not ranked")
    return problems


def _listed(indices: Sequence[int]) -> str:
    """``" 1 is"`` or ``"s 1, 2 are"``: completes "response..." for one or several."""
    if len(indices) == 1:
        return f" {indices[0]} is"
    return "s " + ", ".join(map(str, indices)) + " are"


def _checked(ranking: Ranking | RawRanking) -> None:
    """ValueError unless the tiers hold 0..n-1 exactly once, n being how many they hold."""
    order = ranking.order if isinstance(ranking.order, list | tuple) else []
    count = sum(len(tier) for tier in order if isinstance(tier, list | tuple))
    problems = validate_ranking(ranking, count)
    if problems:
        raise ValueError("invalid ranking: " + "; ".join(problems))


def pairs_from_ranking(ranking: Ranking | RawRanking) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` for every two responses in different tiers: better tiers first,
    indices ascending inside a tier. Tied responses give no pair, and an all-bad ranking gives
    none at all (nothing in it is preferable: its order is kept raw, never trained on).
    ValueError unless the tiers hold 0..n-1 exactly once."""
    _checked(ranking)
    if ranking.all_bad:
        return []
    tiers = [sorted(tier) for tier in ranking.order]
    return [
        (chosen, rejected)
        for t, better in enumerate(tiers)
        for worse in tiers[t + 1 :]
        for chosen in better
        for rejected in worse
    ]


def ranking_from_vote(vote: str) -> Ranking:
    """An arena vote as a ranking of the two sides: ``"a"`` (left better), ``"b"``, ``"tie"``,
    ``"both_bad"`` (a tie marked all-bad)."""
    if vote not in VOTES:
        raise ValueError(f"unknown vote {vote!r} (expected one of {', '.join(VOTES)})")
    order, all_bad = VOTES[vote]
    return Ranking([list(tier) for tier in order], all_bad)


def pairs_from_vote(vote: str) -> list[tuple[int, int]]:
    """``[(0, 1)]`` for ``"a"``, ``[(1, 0)]`` for ``"b"``, ``[]`` for ``"tie"`` and
    ``"both_bad"``."""
    return pairs_from_ranking(ranking_from_vote(vote))


def aggregate_rankings(
    rankings: Sequence[Ranking | RawRanking], shown: int
) -> list[tuple[int, int]]:
    """The ``(chosen, rejected)`` pairs a majority of the rankings agree on, sorted.

    Each ranking votes on each pair of responses: for a direction, or for none (tied, or the
    ranking is all-bad). A direction is kept when it has more than half of all the votes, so a
    tie or a split vote drops the pair (see the module docstring). ValueError for a ranking that
    :func:`validate_ranking` refuses."""
    votes: Counter[tuple[int, int]] = Counter()
    for ranking in rankings:
        problems = validate_ranking(ranking, shown)
        if problems:
            raise ValueError("invalid ranking: " + "; ".join(problems))
        votes.update(pairs_from_ranking(ranking))
    return sorted(pair for pair, n in votes.items() if 2 * n > len(rankings))


# --------------------------------------------------------------------------------------------
# Snapshots


def _canonical_ranking(ranking: RawRanking) -> dict[str, Any]:
    return {
        "labeler": ranking.labeler,
        "order": [sorted(tier) for tier in ranking.order],
        "all_bad": ranking.all_bad,
    }


def _check_item(item: PreferenceItem) -> None:
    """ValueError naming the item for anything that keeps it out of a snapshot."""
    if isinstance(item.id, bool) or not isinstance(item.id, int | str):
        raise ValueError(f"item id {item.id!r} must be an int or a string")
    where = f"item {item.id}"
    if not isinstance(item.responses, list | tuple) or len(item.responses) < 2:
        raise ValueError(f"{where}: needs at least two responses to compare")
    if not all(isinstance(r, str) for r in item.responses):
        raise ValueError(f"{where}: every response must be text")
    # The prompt must be a conversation that an assistant reply completes.
    problems = validate_messages([*item.prompt, {"role": "assistant", "content": "reply"}])
    if problems:
        raise ValueError(f"{where}: prompt: " + "; ".join(problems))
    for ranking in item.rankings:
        if not isinstance(ranking.labeler, str) or not ranking.labeler.strip():
            raise ValueError(f"{where}: a ranking has no labeler")
        problems = validate_ranking(ranking, len(item.responses))
        if problems:
            raise ValueError(f"{where}: ranking by {ranking.labeler}: " + "; ".join(problems))
    for what, value in (("meta", item.meta), ("group", item.group)):
        try:
            _canonical(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {what} is not plain JSON ({e})") from None


def _readme(card: PreferenceSnapshotCard, splits: Sequence[str]) -> str:
    """A Hugging Face dataset card; caller values only in the body, as JSON (see formats)."""
    data_files = "".join(f"  - split: {s}\n    path: {s}.jsonl\n" for s in splits)
    labelers = ", ".join(f"{name} ({n})" for name, n in card.labelers.items()) or "none"
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        data_files.rstrip("\n"),
        "tags:",
        "- preference",
        "- conversational",
        "- orchard",
        "---",
        "",
        "# Preference snapshot",
        "",
        "Preference pairs from responses ranked by labelers in Orchard, in TRL's conversational "
        'format with an explicit prompt (one `{"prompt": [...], "chosen": [...], "rejected": '
        "[...]}` per line; the Parquet files hold the same rows), ready for reward-model or DPO "
        "training.",
        "",
        f"- Items: {card.items} (train {card.splits['train']}, "
        f"validation {card.splits['validation']}); {card.items_with_pairs} give pairs",
        f"- Pairs: train {card.pairs['train']}, validation {card.pairs['validation']}",
        f"- Rankings: {card.rankings} ({card.all_bad_rankings} all-bad); labelers: {labelers}",
        f"- Aggregation: {card.aggregation}: a pair is kept when more than half of an item's "
        f"rankings prefer it; {card.pairs_without_majority} response pairs had no majority "
        "(ties, all-bad votes or disagreement) and are left out",
        f"- Validation fraction: {card.validation_fraction}",
        f"- Content SHA-256: `{card.content_sha256}` (of `raw_rankings.jsonl`)",
        "",
        "`raw_rankings.jsonl` keeps every ranking of every item; `index.jsonl` lists each item's",
        "split and the (chosen, rejected) response indices of its rows; `card.json` holds these",
        "numbers for programs.",
    ]
    if card.extra:
        lines += ["", "## Provenance", ""]
        lines += [f"- {key}: `{_canonical(card.extra[key])}`" for key in sorted(card.extra)]
    return "\n".join(lines) + "\n"


def write_preference_snapshot(
    items: Sequence[PreferenceItem],
    out_dir: Path,
    *,
    validation_fraction: float = 0.1,
    salt: str = "",
    card_extra: Mapping[str, Any] | None = None,
) -> PreferenceSnapshotCard:
    """Write a preference snapshot of ranked items to ``out_dir`` (files, aggregation and split
    in the module docstring). ValueError, before anything is written, for no items, duplicate
    ids, an invalid prompt or ranking, fewer than two responses, no pair at all to export, or
    ``card_extra`` that is not JSON or reuses a computed key. Nothing depends on the clock."""
    if not items:
        raise ValueError("no ranked items to put in a preference snapshot")
    if not 0 <= validation_fraction <= 1:
        raise ValueError("validation_fraction must be between 0 and 1")
    extra = dict(card_extra or {})
    try:
        _canonical(extra)
    except (TypeError, ValueError) as e:
        raise ValueError(f"card_extra must be plain JSON data ({e})") from None
    seen: set[str] = set()
    for item in items:
        _check_item(item)
        key = _canonical(item.id)
        if key in seen:
            raise ValueError(f"item {item.id} appears twice")
        seen.add(key)

    ordered = sorted(items, key=lambda item: _id_key(item.id))
    raw_lines: list[str] = []
    prompt_of: dict[str | int, list[Message]] = {}
    pairs_of: dict[str | int, list[tuple[int, int]]] = {}
    labelers: Counter[str] = Counter()
    without_majority = 0
    for item in ordered:
        rankings = sorted(
            (_canonical_ranking(r) for r in item.rankings),
            key=lambda r: (r["labeler"], _canonical(r["order"]), r["all_bad"]),
        )
        prompt_of[item.id] = normalize_messages(item.prompt)
        raw = {
            "id": item.id,
            "prompt": prompt_of[item.id],
            "responses": list(item.responses),
            "rankings": rankings,
        }
        raw_lines.append(_canonical(raw) + "\n")
        pairs = aggregate_rankings(item.rankings, len(item.responses))
        pairs_of[item.id] = pairs
        labelers.update(r.labeler for r in item.rankings)
        if item.rankings:
            n = len(item.responses)
            without_majority += n * (n - 1) // 2 - len(pairs)
    if not any(pairs_of.values()):
        raise ValueError(
            "no preference pairs to export: every ranking is a tie, all-bad, or outvoted"
        )

    with_pairs = [item for item in ordered if pairs_of[item.id]]
    split_of = _assign_splits(with_pairs, validation_fraction, salt)
    for item in ordered:
        if item.id not in split_of:  # no rows: its hash alone decides, no patching
            split_of.update(_assign_splits([item], validation_fraction, salt))

    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for item in ordered:
        prompt = prompt_of[item.id]
        for chosen, rejected in pairs_of[item.id]:
            rows[split_of[item.id]].append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": item.responses[chosen]}],
                    "rejected": [{"role": "assistant", "content": item.responses[rejected]}],
                }
            )
    raw_text = "".join(raw_lines)
    card = PreferenceSnapshotCard(
        items=len(ordered),
        items_with_pairs=len(with_pairs),
        splits={s: sum(split_of[i.id] == s for i in ordered) for s in SPLITS},
        pairs={s: len(rows[s]) for s in SPLITS},
        responses=sum(len(i.responses) for i in ordered),
        rankings=sum(len(i.rankings) for i in ordered),
        all_bad_rankings=sum(r.all_bad for i in ordered for r in i.rankings),
        labelers=dict(sorted(labelers.items())),
        pairs_without_majority=without_majority,
        content_sha256=hashlib.sha256(raw_text.encode()).hexdigest(),
        validation_fraction=validation_fraction,
        salt=salt,
        extra=extra,
    )
    clash = sorted(set(extra) & set(asdict(card)))
    if clash:
        raise ValueError(f"card_extra may not set {', '.join(clash)}: the snapshot computes it")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = _pair_schema([row for s in SPLITS for row in rows[s]])
    for split in SPLITS:
        text = "".join(_canonical(row) + "\n" for row in rows[split])
        (out_dir / f"{split}.jsonl").write_text(text, encoding="utf-8")
        _write_parquet(out_dir / f"{split}.parquet", rows[split], schema)
    (out_dir / "raw_rankings.jsonl").write_text(raw_text, encoding="utf-8")
    index = "".join(
        _canonical(
            {
                "id": item.id,
                "split": split_of[item.id],
                "pairs": [list(pair) for pair in pairs_of[item.id]],
                "rankings": len(item.rankings),
                "meta": item.meta,
                **({"group": item.group} if item.group is not None else {}),
            }
        )
        + "\n"
        for item in ordered
    )
    (out_dir / "index.jsonl").write_text(index, encoding="utf-8")
    card_text = json.dumps(card.to_dict(), ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    (out_dir / "card.json").write_text(card_text, encoding="utf-8")
    non_empty = [s for s in SPLITS if card.pairs[s]]
    (out_dir / "README.md").write_text(_readme(card, non_empty), encoding="utf-8")
    return card


def _pair_schema(rows: Sequence[Mapping[str, Any]]) -> Any:
    """``prompt`` typed like formats' ``messages`` column (name/tool_calls only when present);
    ``chosen``/``rejected`` always ``list<struct<content: string, role: string>>``. Columns in
    key order, as in the JSONL rows, so both loaders give the same column order."""
    import pyarrow as pa

    prompt = _parquet_schema([{"messages": row["prompt"]} for row in rows]).field("messages").type
    reply = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    return pa.schema([("chosen", reply), ("prompt", prompt), ("rejected", reply)])


def read_preference_snapshot(snapshot_dir: Path) -> PreferenceSnapshot:
    """A snapshot read back from its JSONL files, index, raw rankings and card (for tests, the
    preview and re-aggregation). FormatError when the files do not match each other."""
    snapshot_dir = Path(snapshot_dir)

    def lines(name: str) -> list[dict[str, Any]]:
        with (snapshot_dir / name).open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    index = lines("index.jsonl")
    raw = {_canonical(entry["id"]): entry for entry in lines("raw_rankings.jsonl")}
    rows: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        pairs = [(e["id"], c, r) for e in index if e["split"] == split for c, r in e["pairs"]]
        split_rows = lines(f"{split}.jsonl")
        if len(split_rows) != len(pairs):
            raise FormatError(
                f"{split}.jsonl has {len(split_rows)} rows but index.jsonl lists {len(pairs)} pairs"
            )
        rows[split] = [
            {"id": item_id, "chosen_index": c, "rejected_index": r, **row}
            for (item_id, c, r), row in zip(pairs, split_rows, strict=True)
        ]
    items = []
    for entry in index:
        stored = raw.get(_canonical(entry["id"]))
        if stored is None:
            raise FormatError(f"item {entry['id']} is in index.jsonl but not raw_rankings.jsonl")
        items.append(
            PreferenceItem(
                id=entry["id"],
                prompt=stored["prompt"],
                responses=stored["responses"],
                rankings=[RawRanking(**r) for r in stored["rankings"]],
                meta=entry["meta"],
                group=entry.get("group"),
            )
        )
    card = json.loads((snapshot_dir / "card.json").read_text(encoding="utf-8"))
    return PreferenceSnapshot(rows=rows, items=items, card=card)


# --------------------------------------------------------------------------------------------
# Importers


def preference_items_from_hh(
    lines: Iterable[str | bytes],
) -> tuple[list[PreferenceItem], list[LineProblem]]:
    """Anthropic HH-RLHF lines as ranked items (via :func:`labeling.formats.parse_hh_pairs`):
    each pair becomes an item with responses ``[chosen, rejected]`` and one ranking
    ``[[0], [1]]`` by ``import:hh``. Ids are ``"hh:<line>"``; ``meta`` has the source and line."""
    pairs, problems = parse_hh_pairs(lines)
    items = [
        PreferenceItem(
            id=f"hh:{pair.line}",
            prompt=pair.prompt_messages,
            responses=[pair.chosen, pair.rejected],
            rankings=[RawRanking(HH_LABELER, [[0], [1]], False)],
            meta={"source": "hh", "line": pair.line},
        )
        for pair in pairs
    ]
    return items, problems


def _rank_of(message: Mapping[str, Any]) -> float | None:
    rank = message.get("rank")
    if isinstance(rank, int | float) and not isinstance(rank, bool):
        return rank
    return None


def preference_items_from_oasst(
    lines: Iterable[str | bytes], human_only: bool = True
) -> tuple[list[PreferenceItem], list[LineProblem]]:
    """OpenAssistant message trees as ranked items.

    One item per user (prompter) turn that has two or more *ranked* assistant replies: the
    prompt is the conversation from the root down to and including that turn, the responses
    are those replies in file order, and the ranking (by ``import:oasst``) puts them in tiers by
    ``rank`` (0 = best; equal ranks tie). Unranked replies are left out. Replies and turns that
    were deleted or failed review are always skipped, model-written (``synthetic``) ones when
    ``human_only`` (then everything under them too). A tree that gives no item, or an item whose
    texts do not make a valid conversation, is reported as a problem.

    Ids are ``"oasst:<prompter message id>"``; ``group`` is ``"oasst:<tree id>"`` (a deeper
    item's prompt contains a shallower item's reply, so one tree stays in one split); ``meta``
    has ``source``, ``tree_id``, ``message_id``, ``reply_ids``, ``ranks`` and ``lang``.
    """
    items: list[PreferenceItem] = []
    problems: list[LineProblem] = []
    for number, obj in _numbered_objects(lines, problems):
        root = obj.get("prompt")
        if not isinstance(root, dict):
            problems.append(LineProblem(number, "not an OpenAssistant tree (no prompt)"))
            continue
        tree_id = str(obj.get("message_tree_id") or root.get("message_id") or f"line {number}")
        if root.get("deleted") or root.get("review_result") is False:
            problems.append(
                LineProblem(number, f"tree {tree_id}: the prompt was deleted or failed review")
            )
            continue
        if human_only and root.get("synthetic"):
            problems.append(
                LineProblem(number, f"tree {tree_id}: the prompt is model-written (synthetic)")
            )
            continue
        found = 0
        stack: list[list[dict[str, Any]]] = [[root]]
        while stack:
            path = stack.pop()
            node = path[-1]
            children = _oasst_children(node, human_only)
            stack.extend([*path, child] for child in reversed(children))
            if node.get("role") != "prompter":
                continue
            ranked = [
                c for c in children if c.get("role") == "assistant" and _rank_of(c) is not None
            ]
            if len(ranked) < 2:
                continue
            found += 1
            message_id = str(node.get("message_id"))
            unknown = sorted({str(m.get("role")) for m in path} - set(OASST_ROLES))
            if unknown:
                problems.append(
                    LineProblem(
                        number, f"tree {tree_id}, message {message_id}: unknown role {unknown[0]}"
                    )
                )
                continue
            prompt = [{"role": OASST_ROLES[m["role"]], "content": m.get("text")} for m in path]
            invalid: list[str] = []
            for reply in ranked:
                for p in validate_messages(
                    [*prompt, {"role": "assistant", "content": reply.get("text")}]
                ):
                    if p not in invalid:
                        invalid.append(p)
            if invalid:
                problems.append(
                    LineProblem(
                        number, f"tree {tree_id}, message {message_id}: " + "; ".join(invalid)
                    )
                )
                continue
            ranks = [_rank_of(r) for r in ranked]
            order = [
                [i for i, rank in enumerate(ranks) if rank == level] for level in sorted(set(ranks))
            ]
            items.append(
                PreferenceItem(
                    id=f"oasst:{message_id}",
                    prompt=normalize_messages(prompt),
                    responses=[r["text"] for r in ranked],
                    rankings=[RawRanking(OASST_LABELER, order, False)],
                    meta={
                        "source": "oasst",
                        "tree_id": tree_id,
                        "message_id": message_id,
                        "reply_ids": [str(r.get("message_id")) for r in ranked],
                        "ranks": ranks,
                        "lang": root.get("lang"),
                    },
                    group=f"oasst:{tree_id}",
                )
            )
        if not found:
            problems.append(
                LineProblem(number, f"tree {tree_id}: no user turn has two or more ranked replies")
            )
    return items, problems


__all__ = [
    "HH_LABELER",
    "OASST_LABELER",
    "PREFERENCE_FORMAT_VERSION",
    "VOTES",
    "PreferenceItem",
    "PreferenceSnapshot",
    "PreferenceSnapshotCard",
    "Ranking",
    "RawRanking",
    "aggregate_rankings",
    "pairs_from_ranking",
    "pairs_from_vote",
    "preference_items_from_hh",
    "preference_items_from_oasst",
    "ranking_from_vote",
    "read_preference_snapshot",
    "validate_ranking",
    "write_preference_snapshot",
]
