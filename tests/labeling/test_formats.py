"""Conversation import formats and dataset snapshots (labeling.formats): pure Python, no database.

Real files come from ../shared/data (tests.support.data.SHARED_DATA); tests that need them skip
when they are absent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labeling.formats import (
    FormatError,
    ImportedConversation,
    LineProblem,
    SnapshotItem,
    decode_tool_arguments,
    detect_format,
    normalize_messages,
    open_lines,
    parse_auto,
    parse_hh_jsonl,
    parse_hh_pairs,
    parse_hh_transcript,
    parse_messages_jsonl,
    parse_oasst_trees,
    read_snapshot,
    validate_messages,
    write_snapshot,
)
from tests.support.data import SHARED_DATA

OASST = SHARED_DATA / "conversations" / "oasst_en_100_tree.jsonl"
HH = SHARED_DATA / "preference" / "hh-rlhf-harmless-base-test.jsonl.gz"
HH_LINES = 2312  # SOURCES.md


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def chat(*texts: str) -> list[dict[str, Any]]:
    """Alternating user/assistant messages."""
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(texts)]


def line(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


def alternates(messages: list[dict[str, Any]]) -> bool:
    roles = [m["role"] for m in messages]
    return roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) % 2 == 0


TOOL_CONVERSATION = [
    {"role": "system", "content": "You can check the weather."},
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Zürich"}}}
        ],
    },
    {"role": "tool", "name": "weather", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": "21 °C and sunny."},
]


# --------------------------------------------------------------------------------------------
# validate_messages


def test_valid_conversations_have_no_problems() -> None:
    assert validate_messages(chat("Hi", "Hello!")) == []
    assert validate_messages([{"role": "system", "content": "Be brief."}, *chat("a", "b")]) == []
    assert validate_messages(TOOL_CONVERSATION) == []
    # The editor's own keys are allowed (and dropped on export).
    drafted = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo", "draft": 1},
    ]
    assert validate_messages(drafted) == []


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ({"role": "user"}, "messages must be a list"),
        ([], "no messages"),
        (["hi", *chat("a", "b")], "message 1 is not an object"),
        ([{"role": "bot", "content": "x"}, *chat("a", "b")], "unknown role 'bot'"),
        (chat("a", 5), "message 2 (assistant): content must be text"),  # type: ignore[arg-type]
        (chat("  ", "b"), "message 1 (user): content is empty"),
        (chat("a", ""), "message 2 (assistant): content is empty"),
        ([*chat("a", "b"), {"role": "system", "content": "s"}], "system message may only come"),
        ([{"role": "tool", "content": "42"}, *chat("a", "b")], "must follow an assistant tool"),
        (chat("a"), "no assistant turn"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}], "no user"),
        (chat("a", "b", "c"), "ends with a user turn"),
        ([*chat("a"), *chat("b", "c")], "two user turns in a row"),
        ([{"role": "assistant", "content": "hi"}, *chat("a", "b")], "first turn after the system"),
        (
            [
                *chat("a", "b"),
                {"role": "user", "content": "c", "tool_calls": []},
                *chat("", "d")[1:],
            ],
            "only assistant turns can make tool calls",
        ),
        (TOOL_CONVERSATION[:3] + TOOL_CONVERSATION[4:], "1 tool call(s) of the previous"),
        (
            [*TOOL_CONVERSATION[:4], TOOL_CONVERSATION[3], TOOL_CONVERSATION[4]],
            "more tool results than tool calls",
        ),
        (
            [*TOOL_CONVERSATION[:3], {**TOOL_CONVERSATION[3], "name": "clock"}],
            "answers 'clock', which the assistant did not call",
        ),
        (
            [
                *chat("a"),
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
                },
            ],
            "arguments are a string but not JSON",
        ),
    ],
)
def test_validation_problems_are_named(messages: Any, expected: str) -> None:
    problems = validate_messages(messages)
    assert any(expected in p for p in problems), problems


def test_a_conversation_may_end_with_a_tool_call() -> None:
    """Teaching the model to call a tool needs no result after the call."""
    assert validate_messages(TOOL_CONVERSATION[:3]) == []


def test_normalize_keeps_known_keys_and_stores_arguments_as_json_text() -> None:
    normal = normalize_messages(
        [*TOOL_CONVERSATION[:1], {**TOOL_CONVERSATION[1], "draft": "x"}, *TOOL_CONVERSATION[2:]]
    )
    assert "draft" not in normal[1]
    assert normal[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Zürich"}'}}
        ],
    }
    assert normalize_messages(normal) == normal  # idempotent
    assert decode_tool_arguments(normal)[2]["tool_calls"][0]["function"]["arguments"] == {
        "city": "Zürich"
    }


# --------------------------------------------------------------------------------------------
# messages / ShareGPT JSONL


def test_messages_jsonl_imports_good_lines_and_names_the_bad_ones() -> None:
    lines = [
        line({"messages": chat("Hi", "Hello!"), "id": "a1", "tags": ["greeting"]}),
        "\n",  # blank lines are ignored but still counted
        line({"messages": chat("2+2?", "4")}),
        '{"messages": [\n',  # line 4: bad JSON
        line({"messages": [{"role": "robot", "content": "x"}, *chat("a", "b")]}),
        line({"messages": chat("", "b")}),
        line({"messages": chat("only a question")}),
        line(["not", "an", "object"]),
        line({"text": "no messages here"}),
        line({"messages": chat("Ünïcødé <script>alert(1)</script>", "ok")}).encode(),
        b'{"messages": "\xff"}\n',
    ]
    result = parse_messages_jsonl(lines)
    assert [c.source_id for c in result.conversations] == ["a1", "line 3", "line 10"]
    first = result.conversations[0]
    assert first == ImportedConversation(
        chat("Hi", "Hello!"), "messages", "a1", {"id": "a1", "tags": ["greeting"]}, 1
    )
    assert result.conversations[2].messages[0]["content"] == "Ünïcødé <script>alert(1)</script>"
    by_line = {p.line: p.message for p in result.problems}
    assert sorted(by_line) == [4, 5, 6, 7, 8, 9, 11]
    assert "not valid JSON" in by_line[4]
    assert "unknown role 'robot'" in by_line[5]
    assert "content is empty" in by_line[6]
    assert "no assistant turn" in by_line[7]
    assert "not a JSON object" in by_line[8]
    assert "no messages" in by_line[9]
    assert "not valid UTF-8" in by_line[11]
    assert result.summary(2).startswith("3 imported, 7 skipped: line 4: not valid JSON")
    assert result.summary(2).endswith("; and 5 more")


def test_sharegpt_lines_map_speakers_to_roles() -> None:
    lines = [
        line(
            {
                "id": 7,
                "system": "Be kind.",
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello"},
                    {"from": "human", "value": "Weather?"},
                    {"from": "function_call", "value": '{"name": "weather", "arguments": {}}'},
                    {"from": "observation", "value": "sunny"},
                    {"from": "gpt", "value": "Sunny."},
                ],
                "source": "x",
            }
        ),
        line(
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    *[{"from": f, "value": v} for f, v in (("human", "a"), ("gpt", "b"))],
                ]
            }
        ),
        line({"conversations": [{"from": "alien", "value": "a"}]}),
    ]
    result = parse_messages_jsonl(lines)
    first, second = result.conversations
    assert first.source == "sharegpt" and first.source_id == "7"
    assert first.meta == {"id": 7, "source": "x"}
    assert [m["role"] for m in first.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert first.messages[4]["tool_calls"][0]["function"] == {"name": "weather", "arguments": "{}"}
    assert second.messages == [{"role": "system", "content": "S"}, *chat("a", "b")]
    assert result.problems == [LineProblem(3, result.problems[0].message)]
    assert "unknown speaker 'alien'" in result.problems[0].message


def test_open_lines_reads_gzip_transparently(tmp_path: Path) -> None:
    text = line({"messages": chat("Grüße", "Hallo")}) * 2
    (tmp_path / "a.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    plain = parse_messages_jsonl(open_lines(tmp_path / "a.jsonl"))
    packed = parse_messages_jsonl(open_lines(tmp_path / "a.jsonl.gz"))
    assert len(plain.conversations) == 2
    assert [c.messages for c in packed.conversations] == [c.messages for c in plain.conversations]


# --------------------------------------------------------------------------------------------
# OpenAssistant


def oasst_messages() -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
    """(line, message, parent) for every message of the file."""
    for number, raw in enumerate(needs(OASST).read_text(encoding="utf-8").splitlines(), 1):
        stack = [(json.loads(raw)["prompt"], None)]
        while stack:
            message, parent = stack.pop()
            yield number, message, parent
            stack.extend((reply, message) for reply in message.get("replies", []))


def test_oasst_best_mode_one_alternating_conversation_per_tree() -> None:
    result = parse_oasst_trees(open_lines(needs(OASST)), human_only=False, mode="best")
    assert len(result.conversations) == 100 and result.problems == []
    for conversation in result.conversations:
        assert alternates(conversation.messages), conversation.source_id
        assert conversation.source == "oasst"
        assert conversation.source_id == conversation.meta["tree_id"]
        assert conversation.meta["lang"] == "en"
        assert len(conversation.meta["message_ids"]) == len(conversation.messages)


def test_oasst_human_only_leaves_out_model_written_text() -> None:
    synthetic = {m["text"] for _, m, _ in oasst_messages() if m.get("synthetic")}
    human = {m["text"] for _, m, _ in oasst_messages() if not m.get("synthetic")}
    synthetic -= human
    assert len(synthetic) > 10  # SOURCES.md: 22 synthetic messages
    synthetic_roots = {n for n, m, parent in oasst_messages() if parent is None and m["synthetic"]}
    for mode in ("best", "all"):
        result = parse_oasst_trees(open_lines(OASST), mode=mode)
        texts = {m["content"] for c in result.conversations for m in c.messages}
        assert not texts & synthetic
        # Trees whose prompt is model-written are skipped, and said so.
        assert {p.line for p in result.problems} == synthetic_roots
        assert all("synthetic" in p.message for p in result.problems)
        assert len(result.conversations) + (mode == "best") * len(synthetic_roots) >= 100
    unfiltered = parse_oasst_trees(open_lines(OASST), human_only=False, mode="all")
    assert {m["content"] for c in unfiltered.conversations for m in c.messages} & synthetic


def test_oasst_all_mode_gives_every_path() -> None:
    best = parse_oasst_trees(open_lines(needs(OASST)), mode="best")
    every = parse_oasst_trees(open_lines(OASST), mode="all")
    assert len(every.conversations) > len(best.conversations) * 3
    assert len({c.source_id for c in every.conversations}) == len(every.conversations)
    paths = {tuple(c.meta["message_ids"]) for c in every.conversations}
    assert {tuple(c.meta["message_ids"]) for c in best.conversations} <= paths
    for conversation in every.conversations:
        assert alternates(conversation.messages)


def test_oasst_best_mode_follows_rank_zero() -> None:
    by_id = {m["message_id"]: m for _, m, _ in oasst_messages()}
    result = parse_oasst_trees(open_lines(OASST), human_only=False, mode="best")
    checked = 0
    for conversation in result.conversations:
        ids = conversation.meta["message_ids"]
        for parent_id, chosen_id in zip(ids, ids[1:], strict=False):
            # Candidates: assistant replies, and user replies that someone answered.
            replies = [
                r
                for r in by_id[parent_id]["replies"]
                if r["role"] == "assistant" or r.get("replies")
            ]
            chosen = by_id[chosen_id]
            ranks = [r.get("rank") for r in replies]
            if any(rank is not None for rank in ranks):
                assert chosen["rank"] == min(r for r in ranks if r is not None)
                checked += 1
            else:
                assert chosen is replies[0]  # unranked: the first
        assert not by_id[ids[-1]]["replies"] or all(
            r["role"] == "prompter" and not r.get("replies") for r in by_id[ids[-1]]["replies"]
        )  # down to a leaf (or to unanswered follow-ups only)
    assert checked >= 100  # levels with ranked replies
    # One tree by hand: the first line's prompt has three ranked replies, rank 0 is taken.
    first = result.conversations[0]
    assert first.meta["ranks"][1] == 0
    assert first.messages[1]["content"].startswith("The first step is to research your options.")


def test_oasst_best_mode_takes_rank_zero_wherever_it_is() -> None:
    def reply(mid: str, role: str, rank: int | None, *replies: dict[str, Any]) -> dict[str, Any]:
        return {"message_id": mid, "role": role, "text": mid, "rank": rank, "replies": [*replies]}

    root = reply(
        "q",
        "prompter",
        None,
        reply("a2", "assistant", 2),
        reply(
            "a0",
            "assistant",
            0,
            reply("dead-end", "prompter", None),  # first, but nobody answered it
            reply("q2", "prompter", None, reply("b1", "assistant", 1), reply("b0", "assistant", 0)),
        ),
        reply("a1", "assistant", 1),
    )
    result = parse_oasst_trees([line({"message_tree_id": "t", "prompt": root})])
    [conversation] = result.conversations
    assert conversation.meta["message_ids"] == ["q", "a0", "q2", "b0"]
    assert conversation.meta["ranks"] == [None, 0, None, 0]


def test_oasst_trims_a_trailing_user_turn_and_reports_lonely_prompts() -> None:
    tree = {
        "message_tree_id": "t1",
        "prompt": {
            "message_id": "p",
            "role": "prompter",
            "text": "Q?",
            "lang": "de",
            "replies": [
                {
                    "message_id": "a",
                    "role": "assistant",
                    "text": "A.",
                    "rank": 0,
                    "replies": [{"message_id": "q2", "role": "prompter", "text": "And?"}],
                },
                {
                    "message_id": "b",
                    "role": "assistant",
                    "text": "Bad.",
                    "rank": 1,
                    "deleted": True,
                },
            ],
        },
    }
    lonely = {
        "message_tree_id": "t2",
        "prompt": {"message_id": "x", "role": "prompter", "text": "Anyone?", "replies": []},
    }
    result = parse_oasst_trees([line(tree), line(lonely)], mode="all")
    [conversation] = result.conversations
    assert conversation.messages == chat("Q?", "A.")
    assert conversation.meta == {
        "tree_id": "t1",
        "message_ids": ["p", "a"],
        "ranks": [None, 0],
        "lang": "de",
    }
    assert conversation.source_id == "t1/a"
    assert result.problems == [LineProblem(2, "tree t2: the prompt has no assistant reply")]


# --------------------------------------------------------------------------------------------
# HH-RLHF


def test_hh_transcript_multi_turn() -> None:
    text = (
        "\n\nHuman: What is a Human: tag?\n\nAssistant: A label.\n\nHuman:  More?"
        "\n\nAssistant: Line one.\nLine two.\n"
    )
    assert parse_hh_transcript(text) == chat(
        "What is a Human: tag?", "A label.", "More?", "Line one.\nLine two."
    )
    with pytest.raises(FormatError, match="before the first"):
        parse_hh_transcript("Preamble\n\nHuman: hi\n\nAssistant: yo")


def test_hh_pairs_share_the_prompt_and_differ_in_the_final_reply() -> None:
    pairs, problems = parse_hh_pairs(open_lines(needs(HH)))
    assert len(pairs) + len(problems) == HH_LINES
    assert len(pairs) >= HH_LINES - 20
    assert sum("differ before the final reply" in p.message for p in problems) == 5
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        raw = [json.loads(x) for x in f]
    for pair in pairs:
        assert pair.chosen != pair.rejected
        assert alternates([*pair.prompt_messages, {"role": "assistant", "content": "x"}])
        record = raw[pair.line - 1]
        assert record["chosen"].rstrip().endswith(pair.chosen)
        assert record["rejected"].rstrip().endswith(pair.rejected)
    assert any(len(p.prompt_messages) >= 3 for p in pairs)  # multi-turn prompts


def test_hh_jsonl_gives_the_chosen_conversation_with_the_rejected_reply_in_meta() -> None:
    result = parse_hh_jsonl(open_lines(needs(HH)))
    assert len(result.conversations) + len(result.problems) == HH_LINES
    first = result.conversations[0]
    assert first.source == "hh" and first.source_id == "line 1"
    assert first.messages[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.meta["same_prompt"] is True
    assert first.meta["rejected"] != first.messages[-1]["content"]
    assert all(alternates(c.messages) for c in result.conversations)


# --------------------------------------------------------------------------------------------
# detect_format / parse_auto


def test_detect_format_for_each_kind() -> None:
    assert detect_format(line({"messages": chat("a", "b")})) == "messages"
    assert detect_format(line({"conversations": []}).encode()) == "sharegpt"
    assert detect_format('{"chosen": "x", "rejected": "y"}') == "hh"
    assert detect_format('{"message_tree_id": "t", "prompt": {}}') == "oasst"
    if OASST.exists():
        assert detect_format(OASST.open(encoding="utf-8").readline()) == "oasst"
    if HH.exists():
        assert detect_format(next(open_lines(HH))) == "hh"
    for bad in ("not json", "[1, 2]", '{"text": "plain corpus"}'):
        with pytest.raises(FormatError) as caught:
            detect_format(bad)
        assert caught.value.line == 1


def test_parse_auto_picks_the_parser() -> None:
    result = parse_auto(
        [
            "\n",
            line(
                {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
            ),
        ]
    )
    assert [c.source for c in result.conversations] == ["sharegpt"]
    if HH.exists():
        assert parse_auto(open_lines(HH)).conversations[0].source == "hh"
    assert parse_auto([]).conversations == []


# --------------------------------------------------------------------------------------------
# Snapshots


def items(count: int, start: int = 0) -> list[SnapshotItem]:
    return [
        SnapshotItem(
            i,
            chat(f"Question {i}?", f"Answer {i}."),
            {"tags": ["math"] if i % 3 == 0 else [], "labeler": "lena"},
        )
        for i in range(start, start + count)
    ]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_snapshot_is_deterministic(tmp_path: Path) -> None:
    conversations = items(40)
    card_a = write_snapshot(conversations, tmp_path / "a", card_extra={"labelers": ["lena"]})
    card_b = write_snapshot(
        list(reversed(conversations)), tmp_path / "b", card_extra={"labelers": ["lena"]}
    )
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert set(files(tmp_path / "a")) == {
        "README.md",
        "card.json",
        "index.jsonl",
        "train.jsonl",
        "train.parquet",
        "validation.jsonl",
        "validation.parquet",
    }
    assert card_a == card_b
    # content_sha256 is over the rows sorted by id, independent of the split.
    expected = hashlib.sha256()
    for item in conversations:
        row = {"id": item.id, "messages": item.messages}
        canonical = json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        expected.update((canonical + "\n").encode())
    assert card_a.content_sha256 == expected.hexdigest()
    salted = write_snapshot(conversations, tmp_path / "c", salt="other")
    assert salted.content_sha256 == card_a.content_sha256


def test_snapshot_card_counts(tmp_path: Path) -> None:
    extra = {"labelers": ["lena", "leo"], "guideline_versions": [1, 2]}
    card = write_snapshot(
        [*items(9), SnapshotItem("tools", TOOL_CONVERSATION, {"tags": ["tools", "tools"]})],
        tmp_path,
        card_extra=extra,
    )
    on_disk = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    assert on_disk == card.to_dict()
    assert on_disk["labelers"] == ["lena", "leo"] and on_disk["guideline_versions"] == [1, 2]
    assert card.conversations == 10
    assert sum(card.splits.values()) == 10 and card.splits["validation"] >= 1
    assert card.role_turns == {"system": 1, "user": 10, "assistant": 11, "tool": 1}
    assert card.turns == 23 and card.tool_calls == 1
    assert card.tags == {"math": 3, "tools": 1}  # a tag counts once per conversation
    texts = [m["content"] or "" for i in items(9) for m in i.messages]
    assert card.characters == sum(map(len, texts)) + sum(
        len(m["content"] or "") for m in TOOL_CONVERSATION
    )
    with pytest.raises(ValueError, match="may not set"):
        write_snapshot(items(3), tmp_path / "x", card_extra={"conversations": 1})


def test_snapshot_split_is_stable_when_conversations_are_added(tmp_path: Path) -> None:
    def splits(folder: Path) -> dict[Any, str]:
        return {row["id"]: split for split, rows in read_snapshot(folder).items() for row in rows}

    write_snapshot(items(60), tmp_path / "v1", validation_fraction=0.2)
    write_snapshot(items(80), tmp_path / "v2", validation_fraction=0.2)
    v1, v2 = splits(tmp_path / "v1"), splits(tmp_path / "v2")
    assert 4 <= list(v1.values()).count("validation") <= 24
    assert all(v2[i] == split for i, split in v1.items())
    # Editing a conversation keeps its split too.
    edited = [SnapshotItem(i.id, chat("Edited?", "Yes."), i.meta) for i in items(60)]
    write_snapshot(edited, tmp_path / "v3", validation_fraction=0.2)
    assert splits(tmp_path / "v3") == v1


def test_snapshot_validation_is_never_empty_for_two_or_more(tmp_path: Path) -> None:
    for count in (2, 3, 5):
        card = write_snapshot(items(count), tmp_path / str(count), validation_fraction=0.01)
        assert card.splits["validation"] >= 1 and card.splits["train"] >= 1
    card = write_snapshot(items(2), tmp_path / "high", validation_fraction=0.99)
    assert card.splits == {"train": 1, "validation": 1}
    card = write_snapshot(items(5), tmp_path / "zero", validation_fraction=0.0)
    assert card.splits == {"train": 5, "validation": 0}
    assert (tmp_path / "zero" / "validation.jsonl").read_bytes() == b""
    assert "validation.jsonl" not in (tmp_path / "zero" / "README.md").read_text()
    one = write_snapshot(items(1), tmp_path / "one")
    assert one.splits == {"train": 1, "validation": 0}


def test_snapshot_groups_stay_together(tmp_path: Path) -> None:
    grouped = [
        SnapshotItem(i, chat(f"Q{i}", f"A{i}"), {}, group=f"tree-{i // 4}") for i in range(80)
    ]
    write_snapshot(grouped, tmp_path, validation_fraction=0.3)
    split_of = {r["id"]: s for s, rows in read_snapshot(tmp_path).items() for r in rows}
    for tree in range(20):
        assert len({split_of[i] for i in range(tree * 4, tree * 4 + 4)}) == 1


def test_snapshot_loads_with_datasets_json_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    hostile = chat(
        "Ünïcødé ✓ 漢字 🍐 \"quotes\" \\ back\u2028slash <script>alert('x')</script>",
        "</script><img src=x onerror=alert(1)> & \x00 fine",
    )
    conversations = [*items(12), SnapshotItem("hostile", hostile, {"note": "<b>"})]
    write_snapshot(conversations, tmp_path / "snap", validation_fraction=0.3)
    snap = tmp_path / "snap"
    rows = read_snapshot(snap)
    expected = {split: [r["messages"] for r in rows[split]] for split in rows}
    assert expected["validation"]
    written = {str(item.id): item.messages for item in conversations}
    assert {str(r["id"]): r["messages"] for s in rows for r in rows[s]} == written
    assert rows["train"][0]["meta"] == {"labeler": "lena", "tags": ["math"]}

    cache = str(tmp_path / "cache")
    for kind in ("json", "parquet"):
        data_files = {s: str(snap / f"{s}.{'jsonl' if kind == 'json' else kind}") for s in rows}
        loaded = datasets.load_dataset(kind, data_files=data_files, cache_dir=cache)
        for split in rows:
            assert loaded[split].column_names == ["messages"]
            assert loaded[split]["messages"] == expected[split], (kind, split)

    for split in rows:
        text = (snap / f"{split}.jsonl").read_text(encoding="utf-8")
        assert "\u2028" not in text  # escaped, so even str.splitlines() keeps rows whole
        assert [json.loads(raw) for raw in text.splitlines()] == [
            {"messages": m} for m in expected[split]
        ]
    assert "🍐" in (snap / "train.jsonl").read_text(encoding="utf-8") + (
        snap / "validation.jsonl"
    ).read_text(encoding="utf-8")  # ensure_ascii=False


def test_snapshot_with_tool_calls_loads_the_same_from_json_and_parquet(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    other_tool = [
        *chat("Time?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "clock", "arguments": {"tz": "UTC", "format": 24}}}
            ],
        },
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "Noon."},
    ]
    conversations = [
        SnapshotItem(1, TOOL_CONVERSATION),
        SnapshotItem(2, other_tool),
        *items(6, start=3),
    ]
    write_snapshot(conversations, tmp_path, validation_fraction=0.0)
    cache = str(tmp_path / "cache")
    as_json = datasets.load_dataset(
        "json", data_files=str(tmp_path / "train.jsonl"), cache_dir=cache
    )["train"]["messages"]
    as_parquet = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "train.parquet"), cache_dir=cache
    )["train"]["messages"]
    # Arrow structs have fixed fields: Parquet rows carry None where a message lacks a key.
    assert as_parquet[0][0] == {
        "role": "system",
        "content": "You can check the weather.",
        "name": None,
        "tool_calls": None,
    }
    assert [decode_tool_arguments(m) for m in as_json] == [
        decode_tool_arguments(m) for m in as_parquet
    ]
    stored = [r["messages"] for r in read_snapshot(tmp_path)["train"]]
    assert [decode_tool_arguments(m) for m in as_parquet] == [
        decode_tool_arguments(m) for m in stored
    ]
    call = decode_tool_arguments(as_parquet[1])[1]["tool_calls"][0]
    assert call == {
        "type": "function",
        "function": {"name": "clock", "arguments": {"tz": "UTC", "format": 24}},
    }


def test_snapshot_readme_is_a_dataset_card(tmp_path: Path) -> None:
    write_snapshot(items(20), tmp_path, card_extra={"guideline_version": 3, "name": "---\nx: 1"})
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(front)["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "train.jsonl"},
                {"split": "validation", "path": "validation.jsonl"},
            ],
        }
    ]
    card = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    assert f"Conversations: {card['conversations']}" in body
    assert card["content_sha256"] in body
    assert "guideline_version: `3`" in body


def test_snapshot_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no approved conversations"):
        write_snapshot([], tmp_path)
    with pytest.raises(ValueError, match="appears twice"):
        write_snapshot([*items(2), *items(1)], tmp_path)
    with pytest.raises(ValueError, match="conversation 9: .*no assistant turn"):
        write_snapshot([*items(2), SnapshotItem(9, chat("a"))], tmp_path)
    with pytest.raises(ValueError, match="card_extra"):
        write_snapshot(items(2), tmp_path, card_extra={"when": object()})
    assert not any(tmp_path.iterdir())  # nothing written when refused


def test_snapshot_drops_editor_only_keys(tmp_path: Path) -> None:
    drafted = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "draft": "Hullo"},
    ]
    write_snapshot([SnapshotItem("d", drafted), *items(1)], tmp_path)
    rows = read_snapshot(tmp_path)
    [row] = [r for s in rows.values() for r in s if r["id"] == "d"]
    assert row["messages"] == chat("Hi", "Hello")
