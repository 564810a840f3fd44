"""Rankings, preference pairs, the preference snapshot, and the HH / OpenAssistant importers.

Pure Python, no database. Real files come from ../shared/data (tests.support.data.SHARED_DATA);
tests that need them skip when they are absent.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from labeling.formats import open_lines, parse_hh_pairs
from labeling.preferences import (
    HH_LABELER,
    OASST_LABELER,
    PreferenceItem,
    Ranking,
    RawRanking,
    aggregate_rankings,
    pairs_from_ranking,
    pairs_from_vote,
    preference_items_from_hh,
    preference_items_from_oasst,
    ranking_from_vote,
    read_preference_snapshot,
    validate_ranking,
    write_preference_snapshot,
)
from tests.support.data import SHARED_DATA

OASST = SHARED_DATA / "conversations" / "oasst_en_100_tree.jsonl"
HH = SHARED_DATA / "preference" / "hh-rlhf-harmless-base-test.jsonl.gz"
HH_LINES = 2312  # SOURCES.md


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (see shared/data/SOURCES.md)")
    return path


# --------------------------------------------------------------------------------------------
# Rankings


@pytest.mark.parametrize(
    ("order", "shown", "expected"),
    [
        ([[0], [1]], 3, "response 2 is not ranked"),
        ([[0], [2]], 4, "responses 1, 3 are not ranked"),
        ([[0], [0, 1], [2]], 3, "response 0 is ranked more than once"),
        ([[0], [1], [5]], 3, "response 5 does not exist: 3 responses were shown (indices 0 to 2)"),
        ([[0], [1], [2], [3]], 3, "response 3 does not exist"),
        ([[0], [-1], [1, 2]], 3, "response -1 does not exist"),
        ([[0], [], [1, 2]], 3, "tier 2 is empty"),
        ([[0], ["1"], [2]], 3, "tier 2: '1' is not a response index"),
        ([[0], [True], [2]], 3, "tier 2: True is not a response index"),
        ([[0], 1, [2]], 3, "tier 2 must be a list of response indices"),
        ({"0": 1}, 3, "the ranking must be a list of tiers"),
        ([[0]], 0, "no responses were shown"),
    ],
)
def test_validate_ranking_refuses(order: Any, shown: int, expected: str) -> None:
    problems = validate_ranking(Ranking(order), shown)
    assert any(expected in p for p in problems), problems


def test_validate_ranking_names_every_problem() -> None:
    problems = validate_ranking(Ranking([[0, 0], [], [7]]), 3)
    assert problems == [
        "tier 2 is empty",
        "response 7 does not exist: 3 responses were shown (indices 0 to 2)",
        "response 0 is ranked more than once",
        "responses 1, 2 are not ranked",
    ]
    assert validate_ranking(Ranking([[0], [1]], all_bad="yes"), 2) == [  # type: ignore[arg-type]
        "all_bad must be true or false"
    ]


@pytest.mark.parametrize(
    "order", [[[0], [1], [2]], [[2, 0], [1]], [[0, 1, 2]], [[1], [0, 2]], ([2], [1, 0])]
)
def test_validate_ranking_accepts_permutations_with_ties(order: Any) -> None:
    assert validate_ranking(Ranking(order), 3) == []
    assert validate_ranking(Ranking(order, all_bad=True), 3) == []
    assert validate_ranking(RawRanking("lena", order), 3) == []


def test_pairs_from_ranking_with_ties() -> None:
    # 2 best; 0 and 3 tie; 1 last.
    assert pairs_from_ranking(Ranking([[2], [3, 0], [1]])) == [
        (2, 0),
        (2, 3),
        (2, 1),
        (0, 1),
        (3, 1),
    ]
    assert pairs_from_ranking(Ranking([[0, 1], [2, 3]])) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    assert pairs_from_ranking(Ranking([[1], [0]])) == [(1, 0)]
    assert pairs_from_ranking(Ranking([[0, 1, 2]])) == []
    # All bad: the order is kept raw but nothing in it is preferable.
    assert pairs_from_ranking(Ranking([[0], [1], [2]], all_bad=True)) == []
    with pytest.raises(ValueError, match="response 1 is not ranked"):
        pairs_from_ranking(Ranking([[0], [2]]))
    with pytest.raises(ValueError, match="more than once"):
        pairs_from_ranking(Ranking([[0], [0]]))


def test_arena_votes() -> None:
    assert pairs_from_vote("a") == [(0, 1)]
    assert pairs_from_vote("b") == [(1, 0)]
    assert pairs_from_vote("tie") == []
    assert pairs_from_vote("both_bad") == []
    assert ranking_from_vote("both_bad") == Ranking([[0, 1]], all_bad=True)
    with pytest.raises(ValueError, match="unknown vote"):
        pairs_from_vote("left")


def test_majority_aggregation() -> None:
    def raw(*orders: Any, bad: int = 0) -> list[RawRanking]:
        made = [RawRanking(f"l{i}", o) for i, o in enumerate(orders)]
        return made + [RawRanking(f"bad{i}", [[0], [1], [2]], True) for i in range(bad)]

    strict, swap = [[0], [1], [2]], [[1], [0], [2]]
    assert aggregate_rankings(raw(strict), 3) == [(0, 1), (0, 2), (1, 2)]
    # Two labelers disagree on (0, 1): dropped; the rest both agree on.
    assert aggregate_rankings(raw(strict, swap), 3) == [(0, 2), (1, 2)]
    # Three labelers: 2-1 on (0, 1) keeps the majority direction.
    assert aggregate_rankings(raw(strict, swap, strict), 3) == [(0, 1), (0, 2), (1, 2)]
    # A tie counts as a vote for no direction: 1 of 2 is no majority ...
    assert aggregate_rankings(raw(strict, [[0, 1], [2]]), 3) == [(0, 2), (1, 2)]
    # ... and so does an all-bad ranking (whatever its order says).
    assert aggregate_rankings(raw(strict, bad=1), 3) == []
    assert aggregate_rankings(raw(strict, strict, bad=1), 3) == [(0, 1), (0, 2), (1, 2)]
    assert aggregate_rankings([], 3) == []
    with pytest.raises(ValueError, match="not ranked"):
        aggregate_rankings(raw([[0], [1]]), 3)


# --------------------------------------------------------------------------------------------
# Snapshots


def prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def make_items(count: int, start: int = 0) -> list[PreferenceItem]:
    """Items with three responses: ``lena`` and ``leo`` agree on 0 > 1 > 2 for even ids; for odd
    ids ``leo`` swaps 0 and 1 (so that pair has no majority)."""
    items = []
    for i in range(start, start + count):
        leo = [[0], [1], [2]] if i % 2 == 0 else [[1], [0], [2]]
        items.append(
            PreferenceItem(
                id=i,
                prompt=prompt(f"Question {i}?"),
                responses=[f"Best {i}.", f"Middle {i}.", f"Worst {i}."],
                rankings=[RawRanking("lena", [[0], [1], [2]]), RawRanking("leo", leo)],
                meta={"project": "p"},
            )
        )
    return items


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_snapshot_is_deterministic(tmp_path: Path) -> None:
    items = make_items(30)
    shuffled = [
        PreferenceItem(i.id, i.prompt, i.responses, list(reversed(i.rankings)), i.meta)
        for i in reversed(items)
    ]
    card_a = write_preference_snapshot(items, tmp_path / "a", card_extra={"agreement": {"a": 1}})
    card_b = write_preference_snapshot(shuffled, tmp_path / "b", card_extra={"agreement": {"a": 1}})
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert card_a == card_b
    assert set(files(tmp_path / "a")) == {
        "README.md",
        "card.json",
        "index.jsonl",
        "raw_rankings.jsonl",
        "train.jsonl",
        "train.parquet",
        "validation.jsonl",
        "validation.parquet",
    }
    # content_sha256 covers the raw rankings only, not the split.
    salted = write_preference_snapshot(items, tmp_path / "c", salt="other")
    assert salted.content_sha256 == card_a.content_sha256
    assert (tmp_path / "c" / "raw_rankings.jsonl").read_bytes() == (
        tmp_path / "a" / "raw_rankings.jsonl"
    ).read_bytes()


def test_snapshot_rows_are_trl_preference_pairs_after_majority(tmp_path: Path) -> None:
    card = write_preference_snapshot(make_items(10), tmp_path, validation_fraction=0.3)
    snap = read_preference_snapshot(tmp_path)
    rows = [row for split in ("train", "validation") for row in snap.rows[split]]
    # Even ids: 3 pairs (both agree); odd ids: (0, 1) is split 1-1 and left out.
    assert len(rows) == 5 * 3 + 5 * 2
    assert card.pairs["train"] + card.pairs["validation"] == 25
    assert card.pairs_without_majority == 5
    assert card.items == card.items_with_pairs == 10
    assert card.labelers == {"lena": 10, "leo": 10}
    by_item: dict[int, set[tuple[int, int]]] = {}
    for row in rows:
        by_item.setdefault(row["id"], set()).add((row["chosen_index"], row["rejected_index"]))
    assert by_item[4] == {(0, 1), (0, 2), (1, 2)}
    assert by_item[5] == {(0, 2), (1, 2)}

    line = json.loads((tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(line) == {"prompt", "chosen", "rejected"}
    assert line["prompt"][-1]["role"] == "user"
    assert line["chosen"] == [{"role": "assistant", "content": line["chosen"][0]["content"]}]
    assert line["rejected"][0]["role"] == "assistant"
    first = snap.rows["train"][0]
    item = next(i for i in snap.items if i.id == first["id"])
    assert first["chosen"][0]["content"] == item.responses[first["chosen_index"]]
    assert first["rejected"][0]["content"] == item.responses[first["rejected_index"]]
    assert first["prompt"] == item.prompt


def test_snapshot_keeps_every_raw_ranking(tmp_path: Path) -> None:
    items = [
        *make_items(3),
        PreferenceItem(
            "all-bad",
            prompt("Anything?"),
            ["No.", "Nope."],
            [RawRanking("lena", [[1], [0]], all_bad=True), RawRanking("leo", [[0, 1]])],
        ),
        PreferenceItem("unranked", prompt("Later?"), ["A", "B"]),
    ]
    card = write_preference_snapshot(items, tmp_path / "first")
    tmp_path = tmp_path / "first"
    assert card.rankings == 8 and card.all_bad_rankings == 1
    assert card.items == 5 and card.items_with_pairs == 3
    raw = [
        json.loads(line)
        for line in (tmp_path / "raw_rankings.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["id"] for r in raw] == [0, 1, 2, "all-bad", "unranked"]
    assert raw[3]["rankings"] == [
        {"labeler": "lena", "order": [[1], [0]], "all_bad": True},
        {"labeler": "leo", "order": [[0, 1]], "all_bad": False},
    ]
    assert raw[1]["responses"] == ["Best 1.", "Middle 1.", "Worst 1."]
    assert raw[4]["rankings"] == []
    index = {
        e["id"]: e
        for e in map(
            json.loads, (tmp_path / "index.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
        )
    }
    assert index["all-bad"]["pairs"] == [] and index["all-bad"]["rankings"] == 2
    assert index[1]["pairs"] == [[0, 2], [1, 2]] and index[1]["meta"] == {"project": "p"}

    # Reading back gives the items; writing them again gives the same bytes.
    snap = read_preference_snapshot(tmp_path)
    assert [i.id for i in snap.items] == [0, 1, 2, "all-bad", "unranked"]
    assert snap.items[3].rankings[0] == RawRanking("lena", [[1], [0]], True)
    assert snap.card == card.to_dict()
    write_preference_snapshot(snap.items, tmp_path.parent / "again")
    assert files(tmp_path.parent / "again") == files(tmp_path)


def test_snapshot_split_is_per_item_and_stable(tmp_path: Path) -> None:
    def splits(folder: Path) -> dict[Any, set[str]]:
        found: dict[Any, set[str]] = {}
        for split, rows in read_preference_snapshot(folder).rows.items():
            for row in rows:
                found.setdefault(row["id"], set()).add(split)
        return found

    write_preference_snapshot(make_items(60), tmp_path / "v1", validation_fraction=0.2)
    write_preference_snapshot(make_items(90), tmp_path / "v2", validation_fraction=0.2)
    v1, v2 = splits(tmp_path / "v1"), splits(tmp_path / "v2")
    assert all(len(s) == 1 for s in v1.values())  # every pair of an item on one side
    assert 4 <= sum(s == {"validation"} for s in v1.values()) <= 24
    assert all(v2[i] == s for i, s in v1.items())
    # Votes changing does not move an item either.
    flipped = [
        PreferenceItem(i.id, i.prompt, i.responses, [RawRanking("ann", [[2], [1], [0]])])
        for i in make_items(60)
    ]
    write_preference_snapshot(flipped, tmp_path / "v3", validation_fraction=0.2)
    assert splits(tmp_path / "v3") == v1
    # Groups stay together.
    grouped = [
        PreferenceItem(i.id, i.prompt, i.responses, i.rankings, group=f"tree-{i.id // 5}")
        for i in make_items(80)
    ]
    write_preference_snapshot(grouped, tmp_path / "g", validation_fraction=0.3)
    g = splits(tmp_path / "g")
    for tree in range(16):
        assert len(set().union(*(g[i] for i in range(tree * 5, tree * 5 + 5)))) == 1
    # Small sets: neither split is left without pairs.
    card = write_preference_snapshot(make_items(2), tmp_path / "two", validation_fraction=0.01)
    assert card.pairs["train"] and card.pairs["validation"]


def test_snapshot_loads_with_datasets_json_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    hostile = PreferenceItem(
        "hostile",
        prompt('Ünïcødé ✓ 漢字 🍐 "quotes" \\ back\u2028slash <script>x</script>'),
        ["</script><img src=x onerror=alert(1)> & \x00 fine", "plain"],
        [RawRanking("lena", [[0], [1]])],
    )
    write_preference_snapshot([*make_items(12), hostile], tmp_path / "s", validation_fraction=0.3)
    snap = tmp_path / "s"
    rows = read_preference_snapshot(snap).rows
    assert rows["validation"]
    expected = {
        s: [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[s]] for s in rows
    }
    cache = str(tmp_path / "cache")
    for kind in ("json", "parquet"):
        data_files = {s: str(snap / f"{s}.{'jsonl' if kind == 'json' else kind}") for s in rows}
        loaded = datasets.load_dataset(kind, data_files=data_files, cache_dir=cache)
        for split in rows:
            assert loaded[split].column_names == ["chosen", "prompt", "rejected"]
            assert list(loaded[split]) == expected[split], (kind, split)
    text = (snap / "train.jsonl").read_text(encoding="utf-8")
    assert "\u2028" not in text
    assert [json.loads(line) for line in text.splitlines()] == expected["train"]


def test_snapshot_card_and_readme(tmp_path: Path) -> None:
    extra = {"project": "Arithmetic", "agreement": {"pairwise": 0.8, "alpha": None}}
    card = write_preference_snapshot(make_items(20), tmp_path, card_extra=extra)
    on_disk = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    assert on_disk == card.to_dict()
    assert on_disk["agreement"] == {"pairwise": 0.8, "alpha": None}
    assert on_disk["items"] == 20 and on_disk["aggregation"] == "majority"
    assert sum(on_disk["splits"].values()) == 20
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    front, body = text[4:].split("\n---\n", 1)
    yaml = pytest.importorskip("yaml")
    meta = yaml.safe_load(front)
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "train.jsonl"},
        {"split": "validation", "path": "validation.jsonl"},
    ]
    assert "preference" in meta["tags"]
    assert card.content_sha256 in body
    assert f"Pairs: train {card.pairs['train']}, validation {card.pairs['validation']}" in body
    assert 'agreement: `{"alpha":null,"pairwise":0.8}`' in body
    with pytest.raises(ValueError, match="may not set"):
        write_preference_snapshot(make_items(3), tmp_path / "x", card_extra={"pairs": 1})


def test_snapshot_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no ranked items"):
        write_preference_snapshot([], tmp_path)
    with pytest.raises(ValueError, match="appears twice"):
        write_preference_snapshot([*make_items(2), *make_items(1)], tmp_path)
    bad_rank = PreferenceItem(9, prompt("Q"), ["a", "b"], [RawRanking("lena", [[0]])])
    with pytest.raises(ValueError, match="item 9: ranking by lena: response 1 is not ranked"):
        write_preference_snapshot([*make_items(2), bad_rank], tmp_path)
    ends_with_reply = PreferenceItem(
        8, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], ["a", "b"]
    )
    with pytest.raises(ValueError, match="item 8: prompt: .*two assistant turns in a row"):
        write_preference_snapshot([*make_items(2), ends_with_reply], tmp_path)
    with pytest.raises(ValueError, match="at least two responses"):
        write_preference_snapshot([PreferenceItem(7, prompt("Q"), ["only"])], tmp_path)
    with pytest.raises(ValueError, match="no preference pairs"):
        tie = PreferenceItem(6, prompt("Q"), ["a", "b"], [RawRanking("lena", [[0, 1]])])
        write_preference_snapshot([tie], tmp_path)
    with pytest.raises(ValueError, match="card_extra"):
        write_preference_snapshot(make_items(2), tmp_path, card_extra={"when": object()})
    assert not any(tmp_path.iterdir())  # nothing written when refused


# --------------------------------------------------------------------------------------------
# Importers (real data)


def test_hh_import_gives_one_ranked_pair_per_line() -> None:
    items, problems = preference_items_from_hh(open_lines(needs(HH)))
    pairs, pair_problems = parse_hh_pairs(open_lines(HH))
    assert len(items) == len(pairs) and problems == pair_problems
    assert len(items) + len(problems) == HH_LINES
    assert 2290 <= len(items) <= 2310  # 2,299 with the current parser
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert items[0].responses[0] in first["chosen"] and items[0].responses[1] in first["rejected"]
    for item in items:
        assert len(item.responses) == 2 and item.responses[0] != item.responses[1]
        assert item.prompt[-1]["role"] == "user"
        assert item.rankings == [RawRanking(HH_LABELER, [[0], [1]], False)]
    assert len({i.id for i in items}) == len(items)


def oasst_expected(human_only: bool) -> dict[str, list[Any]]:
    """Independently: for each kept prompter message, the ranks of its kept, ranked assistant
    replies, when there are two or more."""
    expected: dict[str, list[Any]] = {}

    def kept(m: dict[str, Any]) -> bool:
        return not (
            m.get("deleted")
            or m.get("review_result") is False
            or (human_only and m.get("synthetic"))
        )

    def walk(m: dict[str, Any]) -> None:
        replies = [r for r in m.get("replies", []) if kept(r)]
        if m["role"] == "prompter":
            ranks = [
                r["rank"] for r in replies if r["role"] == "assistant" and r.get("rank") is not None
            ]
            if len(ranks) >= 2:
                expected[m["message_id"]] = ranks
        for r in replies:
            walk(r)

    with OASST.open(encoding="utf-8") as f:
        for line in f:
            root = json.loads(line)["prompt"]
            if kept(root):
                walk(root)
    return expected


def test_oasst_import_makes_items_where_two_replies_are_ranked() -> None:
    items, problems = preference_items_from_oasst(open_lines(needs(OASST)))
    expected = oasst_expected(human_only=True)
    assert {i.meta["message_id"]: i.meta["ranks"] for i in items} == expected
    assert len(items) == 207
    assert all("synthetic" in str(p) for p in problems)  # the 5 model-written prompts
    trees = {}
    with OASST.open(encoding="utf-8") as f:
        for line in f:
            tree = json.loads(line)
            trees[tree["message_tree_id"]] = tree

    def find(node: dict[str, Any], message_id: str) -> dict[str, Any] | None:
        if node["message_id"] == message_id:
            return node
        for reply in node.get("replies", []):
            if (hit := find(reply, message_id)) is not None:
                return hit
        return None

    for item in items:
        assert item.id == f"oasst:{item.meta['message_id']}"
        assert item.group == f"oasst:{item.meta['tree_id']}"
        assert item.prompt[0]["role"] == "user" and item.prompt[-1]["role"] == "user"
        assert [m["role"] for m in item.prompt] == ["user", "assistant"] * (
            len(item.prompt) // 2
        ) + ["user"]
        [ranking] = item.rankings
        assert ranking.labeler == OASST_LABELER and not ranking.all_bad
        assert validate_ranking(ranking, len(item.responses)) == []
        # The ranking follows ``rank``: tier by tier, ranks ascend; the best reply is rank 0's.
        ranks = item.meta["ranks"]
        tier_ranks = [{ranks[i] for i in tier} for tier in ranking.order]
        assert all(len(t) == 1 for t in tier_ranks)
        assert [t.pop() for t in tier_ranks] == sorted(set(ranks))
        tree = trees[item.meta["tree_id"]]["prompt"]
        node = find(tree, item.meta["message_id"])
        assert node is not None and node["text"] == item.prompt[-1]["content"]
        for k, reply_id in enumerate(item.meta["reply_ids"]):
            reply = find(tree, reply_id)
            assert reply is not None and reply in node["replies"]
            assert (reply["text"], reply["rank"]) == (item.responses[k], ranks[k])
        assert ranks[ranking.order[0][0]] == min(ranks)

    everything, _ = preference_items_from_oasst(open_lines(OASST), human_only=False)
    assert {i.meta["message_id"]: i.meta["ranks"] for i in everything} == oasst_expected(False)
    assert len(everything) > len(items)


def test_oasst_import_ties_equal_ranks_and_reports_trees_without_items() -> None:
    def msg(mid: str, role: str, text: str, rank: int | None = None, **kw: Any) -> dict[str, Any]:
        return {"message_id": mid, "role": role, "text": text, "rank": rank, "replies": [], **kw}

    root = msg("p", "prompter", "Hi?")
    root["replies"] = [
        msg("a1", "assistant", "Hello.", 1),
        msg("a2", "assistant", "Hey.", 0),
        msg("a3", "assistant", "Yo.", 1),
        msg("a4", "assistant", "Unranked."),
        msg("a5", "assistant", "Model-made.", 0, synthetic=True),
    ]
    lonely = msg("q", "prompter", "Anyone?")
    lonely["replies"] = [msg("b1", "assistant", "Only me.", 0)]
    lines = [
        json.dumps({"message_tree_id": "t1", "prompt": root}),
        json.dumps({"message_tree_id": "t2", "prompt": lonely}),
        "not json",
    ]
    items, problems = preference_items_from_oasst(lines)
    [item] = items
    assert item.responses == ["Hello.", "Hey.", "Yo."]
    assert item.rankings[0].order == [[1], [0, 2]]
    assert pairs_from_ranking(item.rankings[0]) == [(1, 0), (1, 2)]
    assert len(problems) == 2
    assert str(problems[0]) == "line 2: tree t2: no user turn has two or more ranked replies"
    assert problems[1].line == 3 and "not valid JSON" in problems[1].message
    with_synthetic, _ = preference_items_from_oasst(lines, human_only=False)
    assert with_synthetic[0].rankings[0].order == [[1, 3], [0, 2]]


def test_imported_items_make_a_snapshot(tmp_path: Path) -> None:
    items, _ = preference_items_from_oasst(open_lines(needs(OASST)))
    card = write_preference_snapshot(items, tmp_path, validation_fraction=0.2)
    # One labeler, strict ranks: every pair of every item is exported.
    assert card.pairs_without_majority == 0
    n = sum(len(i.responses) * (len(i.responses) - 1) // 2 for i in items)
    assert card.pairs["train"] + card.pairs["validation"] == n
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    split_of_tree: dict[str, set[str]] = {}
    for entry in index:
        split_of_tree.setdefault(entry["group"], set()).add(entry["split"])
    assert all(len(s) == 1 for s in split_of_tree.values())
