"""Conversation formats: what the labeling app imports, and the dataset snapshot it exports.

Pure Python (stdlib + pyarrow): no Django, so the parsers and the writer can be tested, and used
from a worker, without a database.

A *message* is ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``. An
assistant message may add ``"tool_calls": [{"type": "function", "function": {"name": str,
"arguments": dict | str}}]``; a tool message may add ``"name"`` (the function it answers). The
rules a conversation must follow to be trained on are in :func:`validate_messages`.

Import formats (one JSON object per line; blank lines are ignored; ``.gz`` files are read
transparently by :func:`open_lines`):

- ``messages``: the Hugging Face chat format, ``{"messages": [...]}``. Every other top-level key
  (``id``, ``tags``, ...) is kept in ``meta``; ``id``, when present, becomes ``source_id``.
- ``sharegpt``: ``{"conversations": [{"from": "human" | "gpt" | "system", "value": str}]}``
  (also ``user``/``assistant``/``tool``, and ``function_call``/``observation`` as LLaMA-Factory
  writes them; an optional top-level ``system`` string becomes the first turn). Other keys go to
  ``meta`` as above.
- ``oasst``: OpenAssistant message trees, ``{"message_tree_id", "prompt": {message}}`` where each
  message has ``message_id``, ``text``, ``role`` (``prompter`` → user, ``assistant``), ``lang``,
  ``synthetic`` (model-written), an optional ``rank`` among its siblings (0 = best) and its
  ``replies``. See :func:`parse_oasst_trees`.
- ``hh``: Anthropic HH-RLHF, ``{"chosen": transcript, "rejected": transcript}`` with transcripts
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` that share everything but the final reply. Read as
  conversations (:func:`parse_hh_jsonl`) or as preference pairs (:func:`parse_hh_pairs`).

Parsers never stop at a bad line: each problem is a :class:`LineProblem` (1-based line number and
a plain-language message) next to the conversations that were fine, so an import can say "12
imported, 2 skipped: line 7: ..." and lose nothing silently.

Snapshot (written by :func:`write_snapshot`, read back by :func:`read_snapshot`), one folder::

    train.jsonl        one {"messages": [...]} per line, rows sorted by conversation id
    validation.jsonl   same for the validation split (may be empty, see below)
    train.parquet      the same rows, for datasets.load_dataset("parquet", ...)
    validation.parquet
    index.jsonl        {"id", "split", "messages_sha256", "meta"[, "group"]} per conversation,
                       sorted by id: lineage
    card.json          counts, content_sha256 and the caller's card_extra
    README.md          a Hugging Face dataset card (YAML ``configs`` pointing at the JSONL files)

Snapshot decisions:

- Messages are normalised (:func:`normalize_messages`): only ``role``, ``content``, ``name``
  (tool turns) and ``tool_calls`` (assistant turns) are kept, so Orchard-only keys such as
  ``draft`` never leak into training data.
- Tool-call ``arguments`` are stored as JSON *strings* (the OpenAI wire format), both in JSONL and
  Parquet. As objects, every call's argument names would become one Arrow struct whose fields are
  the union over the whole dataset, and values of different types under one name would not load at
  all. Use :func:`decode_tool_arguments` before a chat template that wants objects.
- The Parquet schema is derived from the data: ``messages: list<struct<content: string, role:
  string>>`` plus ``name: string`` and ``tool_calls: list<struct<function: struct<arguments:
  string, name: string>, type: string>>`` only when some message has them. So a plain chat
  snapshot loads back from either file with exactly the keys it was written with. Arrow structs
  have fixed fields, so where only some messages have ``name``/``tool_calls`` the Parquet rows
  carry ``None`` for the others (the JSON loader of ``datasets`` keeps them absent): drop
  ``None`` values (:func:`decode_tool_arguments` does) and the two are equal.
- The split is decided per conversation from ``sha256(salt, group or id)``: a conversation keeps
  its split when others are added, removed, or when it is edited (hashing the content too would
  let an edited conversation jump to the other split, so an older version of it could sit in
  train while the new one is evaluated). ``group`` keeps related conversations (paths of one
  OASST tree) on the same side. Small sets are patched so that, with at least two conversations
  and ``0 < validation_fraction < 1``, neither split is empty; that patch is the only thing that
  can move a conversation when others are added.
- Files hold no timestamps: the same conversations (in any order) give byte-identical files.
  ``content_sha256`` is the SHA-256 of the rows ``{"id", "messages"}`` sorted by id, each as
  canonical JSON (sorted keys, compact, UTF-8, see :func:`_canonical`) plus a newline. It covers
  content, not the split, which depends on the salt and fraction recorded beside it.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("messages", "sharegpt", "oasst", "hh")
SPLITS = ("train", "validation")
SNAPSHOT_FORMAT_VERSION = 1

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_call": "assistant",  # value is {"name", "arguments"}: a tool call
}
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}

Format = Literal["messages", "sharegpt", "oasst", "hh"]
Message = dict[str, Any]


class FormatError(ValueError):
    """Input that cannot be read at all. ``line`` is 1-based, or None when no line is meant."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class LineProblem:
    """Why one input line (or one conversation from it) was skipped."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ImportedConversation:
    """One conversation read from a file, with where it came from.

    ``source`` is the format name, ``source_id`` the id the source gave it (or its line number),
    ``meta`` everything else worth keeping; ``line`` is the input line it came from.
    """

    messages: list[Message]
    source: str
    source_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass
class ParseResult:
    """What an import found: the conversations that passed, and the problems of the rest."""

    conversations: list[ImportedConversation] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)

    def summary(self, max_problems: int = 5) -> str:
        """``"12 imported, 2 skipped: line 7: ...; line 9: ..."``, for a flash message."""
        text = f"{len(self.conversations)} imported, {len(self.problems)} skipped"
        if self.problems:
            shown = "; ".join(str(p) for p in self.problems[:max_problems])
            more = len(self.problems) - max_problems
            text += f": {shown}" + (f"; and {more} more" if more > 0 else "")
        return text


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two final assistant replies, ``chosen`` preferred by a person."""

    prompt_messages: list[Message]
    chosen: str
    rejected: str
    line: int = 0


# --------------------------------------------------------------------------------------------
# Validation and normalisation


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _tool_call_problems(calls: Any, where: str) -> list[str]:
    if not isinstance(calls, list) or not calls:
        return [f"{where}: tool_calls must be a non-empty list"]
    problems = []
    for j, call in enumerate(calls, 1):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            problems.append(f"{where}: tool call {j} has no function object")
            continue
        if call.get("type", "function") != "function":
            problems.append(f"{where}: tool call {j} has type {call.get('type')!r}, not 'function'")
        if not _is_text(fn.get("name")):
            problems.append(f"{where}: tool call {j} has no function name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                json.loads(args)
            except ValueError:
                problems.append(f"{where}: tool call {j} arguments are a string but not JSON")
        elif not isinstance(args, dict):
            problems.append(f"{where}: tool call {j} arguments must be an object or a JSON string")
    return problems


def _call_names(message: Mapping[str, Any]) -> set[str]:
    names = set()
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            names.add(call["function"].get("name"))
    return names


def validate_messages(messages: Any) -> list[str]:
    """Everything that keeps a conversation from being trained on, in plain language.

    Rules (strict, because every chat template must render the result and the loss must land on
    assistant text):

    - a non-empty list of objects, each with a known ``role``; other keys are allowed (the
      editor's ``draft``) and dropped by :func:`normalize_messages`;
    - ``content`` is a string; system and user text may not be blank; an assistant turn may be
      blank only if it makes tool calls (then ``null`` content is accepted too); tool results may
      be empty;
    - a system turn only as the very first message; the first other turn is the user's;
    - no two user turns or two assistant turns in a row (templates such as Llama 2's and Gemma's
      refuse them, and they are almost always an editing slip: merge them);
    - ``tool_calls`` only on assistant turns; each tool turn follows the assistant turn that made
      the call (or another tool turn answering the same assistant), at most one result per call,
      and, unless the tool-calling turn is the last, every call gets its result;
    - the last turn is the assistant's, so there is something to learn.
    """
    if not isinstance(messages, list):
        return ["messages must be a list"]
    if not messages:
        return ["the conversation has no messages"]
    problems: list[str] = []
    roles: list[str | None] = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            problems.append(f"message {i} is not an object")
            roles.append(None)
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append(
                f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
            )
            roles.append(None)
            continue
        roles.append(role)
        where = f"message {i} ({role})"
        content = message.get("content")
        calls = message.get("tool_calls")
        if "tool_calls" in message and role != "assistant":
            problems.append(f"{where}: only assistant turns can make tool calls")
        if role == "assistant" and calls is not None:
            problems.extend(_tool_call_problems(calls, where))
        if content is None and role == "assistant" and calls:
            pass
        elif not isinstance(content, str):
            problems.append(f"{where}: content must be text")
        elif not content.strip() and role in ("system", "user"):
            problems.append(f"{where}: content is empty")
        elif not content.strip() and role == "assistant" and not calls:
            problems.append(f"{where}: content is empty (and it makes no tool call)")
        if role == "tool" and "name" in message and not _is_text(message["name"]):
            problems.append(f"{where}: name must be a non-empty string")
        if role == "system" and i != 1:
            problems.append(f"{where}: a system message may only come first")

    # Order rules, over the turns whose role is known.
    pending_calls: set[str] | None = None  # names still unanswered, None: no tool calls open
    open_calls = 0
    previous: str | None = None
    for i, (message, role) in enumerate(zip(messages, roles, strict=True), 1):
        if role is None:
            previous = None
            continue
        where = f"message {i} ({role})"
        if role == "tool":
            if pending_calls is None:
                problems.append(f"{where}: a tool result must follow an assistant tool call")
            elif open_calls == 0:
                problems.append(f"{where}: more tool results than tool calls")
            else:
                open_calls -= 1
                name = message.get("name")
                if isinstance(name, str) and name.strip() and name not in pending_calls:
                    problems.append(f"{where}: answers {name!r}, which the assistant did not call")
        else:
            if pending_calls is not None and open_calls:
                problems.append(
                    f"{where}: {open_calls} tool call(s) of the previous assistant turn "
                    "have no result"
                )
            pending_calls, open_calls = None, 0
            if role == previous and role in ("user", "assistant"):
                problems.append(f"{where}: two {role} turns in a row (merge them into one)")
            if role == "assistant" and message.get("tool_calls"):
                calls = message["tool_calls"]
                pending_calls = _call_names(message)
                open_calls = len(calls) if isinstance(calls, list) else 0
        previous = role

    known = [r for r in roles if r is not None]
    if known and len(known) == len(roles):
        if "user" not in known:
            problems.append("the conversation has no user turn")
        if "assistant" not in known:
            problems.append("the conversation has no assistant turn")
        first = next((r for r in known if r != "system"), None)
        if first is not None and first != "user" and "user" in known:
            problems.append(f"the first turn after the system message is {first}, not user")
        if known[-1] != "assistant" and "assistant" in known:
            problems.append(f"the conversation ends with a {known[-1]} turn, not assistant")
    return problems


def _arguments_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """The canonical form stored and exported: known keys only, arguments as JSON text.

    Expects messages that :func:`validate_messages` accepts. Idempotent. ``null`` assistant content
    becomes ``""``; a tool call without ``type`` gets ``"function"``.
    """
    out: list[Message] = []
    for message in messages:
        role = message["role"]
        item: Message = {"role": role, "content": message.get("content") or ""}
        if role == "tool" and isinstance(message.get("name"), str) and message["name"].strip():
            item["name"] = message["name"]
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = [
                {
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": _arguments_text(call["function"].get("arguments")),
                    },
                }
                for call in message["tool_calls"]
            ]
        out.append(item)
    return out


def decode_tool_arguments(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """A copy with JSON-string tool-call arguments turned back into objects.

    Snapshots store arguments as text (see the module docstring); chat templates that render
    ``arguments | tojson``, Orchard's own included, want the object, or they would quote it twice.
    Keys that a loader filled with ``None`` are dropped too.
    """
    out = []
    for message in messages:
        item = {k: copy.deepcopy(v) for k, v in message.items() if v is not None}
        for call in item.get("tool_calls") or []:
            fn = call.get("function") or {}
            if isinstance(fn.get("arguments"), str):
                with contextlib.suppress(ValueError):
                    fn["arguments"] = json.loads(fn["arguments"])
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------
# Reading lines


def open_lines(path: Path | str) -> Iterator[bytes]:
    """The lines of a file as bytes, gunzipped when the name ends in ``.gz``.

    Bytes rather than text so that one line of bad UTF-8 becomes a problem for that line (the
    parsers decode each line) instead of an exception that stops the whole import.
    """
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def _numbered_objects(
    lines: Iterable[str | bytes], problems: list[LineProblem]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line that is a JSON object; problems otherwise."""
    for number, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(LineProblem(number, f"not valid UTF-8 (byte {e.start + 1})"))
                continue
        if number == 1:
            raw = raw.removeprefix("\ufeff")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as e:
            problems.append(LineProblem(number, f"not valid JSON ({e})"))
            continue
        if not isinstance(obj, dict):
            problems.append(LineProblem(number, "not a JSON object"))
            continue
        yield number, obj


def _accept(
    result: ParseResult, line: int, conversation: ImportedConversation, what: str = ""
) -> None:
    """Add the conversation if it validates; otherwise record why not, against its line."""
    problems = validate_messages(conversation.messages)
    if problems:
        result.problems.append(LineProblem(line, what + "; ".join(problems)))
        return
    conversation.messages = normalize_messages(conversation.messages)
    result.conversations.append(conversation)


def _source_id(obj: Mapping[str, Any], line: int) -> str:
    value = obj.get("id")
    return str(value) if value is not None and value != "" else f"line {line}"


# --------------------------------------------------------------------------------------------
# messages / ShareGPT


def _sharegpt_messages(obj: Mapping[str, Any]) -> list[Message]:
    """ShareGPT turns as messages; FormatError (message only) for what cannot be mapped."""
    turns = obj["conversations"]
    if not isinstance(turns, list):
        raise FormatError("conversations must be a list")
    messages: list[Message] = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        messages.append({"role": "system", "content": obj["system"]})
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise FormatError(f"turn {i} is not an object")
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            known = ", ".join(sorted(SHAREGPT_ROLES))
            raise FormatError(f"turn {i}: unknown speaker {speaker!r} (expected one of {known})")
        value = turn.get("value")
        if speaker == "function_call":
            try:
                call = json.loads(value) if isinstance(value, str) else value
                function = {"name": call["name"], "arguments": call.get("arguments", {})}
            except (ValueError, TypeError, KeyError):
                raise FormatError(
                    f"turn {i}: function_call value must be JSON with a name"
                ) from None
            messages.append(
                {"role": "assistant", "content": "", "tool_calls": [{"function": function}]}
            )
        else:
            messages.append({"role": role, "content": value})
    return messages


def parse_messages_jsonl(lines: Iterable[str | bytes]) -> ParseResult:
    """HF ``{"messages": [...]}`` lines, and ShareGPT ``{"conversations": [...]}`` lines.

    The two may be mixed in one file. Every other top-level key is kept in ``meta``.
    """
    result = ParseResult()
    for number, obj in _numbered_objects(lines, result.problems):
        if "messages" in obj:
            source, messages = "messages", obj["messages"]
            meta = {k: v for k, v in obj.items() if k != "messages"}
        elif "conversations" in obj:
            source = "sharegpt"
            try:
                messages = _sharegpt_messages(obj)
            except FormatError as e:
                result.problems.append(LineProblem(number, e.message))
                continue
            meta = {k: v for k, v in obj.items() if k not in ("conversations", "system")}
        else:
            result.problems.append(
                LineProblem(number, "no messages (expected a 'messages' or 'conversations' list)")
            )
            continue
        conversation = ImportedConversation(messages, source, _source_id(obj, number), meta, number)
        _accept(result, number, conversation)
    return result


# --------------------------------------------------------------------------------------------
# OpenAssistant trees


def _oasst_children(node: Mapping[str, Any], human_only: bool) -> list[dict[str, Any]]:
    """The replies worth following: not deleted, not failed review, human-written if asked."""
    children = []
    for reply in node.get("replies") or []:
        if (
            not isinstance(reply, dict)
            or reply.get("deleted")
            or reply.get("review_result") is False
        ):
            continue
        if human_only and reply.get("synthetic"):
            continue
        children.append(reply)
    return children


def _rank_key(indexed: tuple[int, Mapping[str, Any]]) -> tuple[int, float, int]:
    """Ranked replies first, lowest rank best; unranked ones after, in file order."""
    position, reply = indexed
    rank = reply.get("rank")
    if isinstance(rank, int | float) and not isinstance(rank, bool):
        return (0, rank, position)
    return (1, 0, position)


def _oasst_paths(root: dict[str, Any], human_only: bool, mode: str) -> list[list[dict[str, Any]]]:
    """Root-to-leaf paths: the best one (greedy by rank) or all of them.

    The best path only steps into a user turn that has an assistant reply: a follow-up question
    nobody answered would be trimmed anyway, and its answered siblings are worth more.
    """
    if mode == "best":
        path = [root]
        while children := [
            child
            for child in _oasst_children(path[-1], human_only)
            if child.get("role") != "prompter" or _oasst_children(child, human_only)
        ]:
            path.append(min(enumerate(children), key=_rank_key)[1])
        return [path]
    paths: list[list[dict[str, Any]]] = []
    stack = [[root]]
    while stack:
        path = stack.pop()
        children = _oasst_children(path[-1], human_only)
        if not children:
            paths.append(path)
        stack.extend([*path, child] for child in reversed(children))
    return paths


def _trimmed_paths(paths: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Paths without a trailing user turn; a path that trimming turned into the start of another
    path (or a copy of one) is dropped, since the longer path already holds it."""
    trimmed = [path[:-1] if path[-1].get("role") == "prompter" else path for path in paths]
    keys = [tuple(id(m) for m in path) for path in trimmed]
    prefixes = {key[:k] for key in keys for k in range(1, len(key))}
    kept: list[list[dict[str, Any]]] = []
    seen: set[tuple[int, ...]] = set()
    for path, key in zip(trimmed, keys, strict=True):
        if path and key not in prefixes and key not in seen:
            seen.add(key)
            kept.append(path)
    return kept


def parse_oasst_trees(
    lines: Iterable[str | bytes],
    *,
    human_only: bool = True,
    mode: Literal["best", "all"] = "best",
) -> ParseResult:
    """OpenAssistant message trees, one per line.

    ``mode="best"``: one conversation per tree, taking at each level the reply with the lowest
    ``rank`` (0 = best; unranked replies after ranked ones, first one first) down to a leaf,
    never stepping into a follow-up question that nobody answered. ``mode="all"``: every
    root-to-leaf path (they share prefixes: keep them together with ``SnapshotItem.group``).
    ``human_only`` drops model-written (``synthetic``) messages and everything under them, so a
    tree whose prompt is synthetic yields nothing (reported as a problem). Deleted messages and
    ones that failed review are always dropped. A trailing user turn is trimmed, so every
    conversation ends with an assistant reply; a trimmed path that equals another path or is the
    start of a longer one is dropped.

    ``source_id`` is the tree id (best) or ``tree_id/last_message_id`` (all); ``meta`` has
    ``tree_id``, ``message_ids``, ``ranks`` (None where unranked) and ``lang`` (the prompt's).
    """
    if mode not in ("best", "all"):
        raise ValueError(f"mode must be 'best' or 'all', not {mode!r}")
    result = ParseResult()
    for number, obj in _numbered_objects(lines, result.problems):
        root = obj.get("prompt")
        if not isinstance(root, dict) or "replies" not in root and "text" not in root:
            result.problems.append(LineProblem(number, "not an OpenAssistant tree (no prompt)"))
            continue
        tree_id = str(obj.get("message_tree_id") or root.get("message_id") or f"line {number}")
        if root.get("deleted") or root.get("review_result") is False:
            result.problems.append(
                LineProblem(number, f"tree {tree_id}: the prompt was deleted or failed review")
            )
            continue
        if human_only and root.get("synthetic"):
            result.problems.append(
                LineProblem(number, f"tree {tree_id}: the prompt is model-written (synthetic)")
            )
            continue
        paths = _trimmed_paths(_oasst_paths(root, human_only, mode))
        if not paths:
            result.problems.append(
                LineProblem(number, f"tree {tree_id}: the prompt has no assistant reply")
            )
        for path in paths:
            unknown = sorted({str(m.get("role")) for m in path} - set(OASST_ROLES))
            if unknown:
                result.problems.append(
                    LineProblem(number, f"tree {tree_id}: unknown role {', '.join(unknown)}")
                )
                continue
            ids = [str(m.get("message_id")) for m in path]
            messages = [{"role": OASST_ROLES[m["role"]], "content": m.get("text")} for m in path]
            meta = {
                "tree_id": tree_id,
                "message_ids": ids,
                "ranks": [m.get("rank") for m in path],
                "lang": root.get("lang"),
            }
            source_id = tree_id if mode == "best" else f"{tree_id}/{ids[-1]}"
            conversation = ImportedConversation(messages, "oasst", source_id, meta, number)
            _accept(result, number, conversation, f"tree {tree_id}: ")
    return result


# --------------------------------------------------------------------------------------------
# Anthropic HH-RLHF

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[Message]:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` as messages, each content stripped of the
    whitespace around it.

    Only ``Human:``/``Assistant:`` after a blank line start a turn (the texts quote "Human:" inside
    sentences). Text before the first marker is a FormatError, since it would be silently lost.
    """
    if not isinstance(text, str):
        raise FormatError("the transcript is not text")
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")  # tolerate a transcript that starts right at "Human:"
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise FormatError("text before the first 'Human:' or 'Assistant:'")
    if len(parts) == 1:
        raise FormatError("no 'Human:' or 'Assistant:' turns")
    return [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _hh_split(obj: Mapping[str, Any], key: str) -> tuple[list[Message], str]:
    """(prompt messages, final assistant reply) of one transcript; FormatError if impossible."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise FormatError(f"'{key}' is missing or not text")
    try:
        messages = parse_hh_transcript(value)
    except FormatError as e:
        raise FormatError(f"{key}: {e.message}") from None
    if messages[-1]["role"] != "assistant":
        raise FormatError(f"{key}: the transcript does not end with an Assistant reply")
    return messages[:-1], messages[-1]["content"]


def parse_hh_jsonl(lines: Iterable[str | bytes]) -> ParseResult:
    """HH-RLHF lines as conversations: the ``chosen`` transcript, with the rejected final reply
    kept in ``meta["rejected"]`` (and ``meta["same_prompt"]``: whether the two transcripts agree
    up to it) so nothing of the pair is lost."""
    result = ParseResult()
    for number, obj in _numbered_objects(lines, result.problems):
        try:
            prompt, chosen = _hh_split(obj, "chosen")
        except FormatError as e:
            result.problems.append(LineProblem(number, e.message))
            continue
        meta: dict[str, Any] = {k: v for k, v in obj.items() if k not in ("chosen", "rejected")}
        try:
            rejected_prompt, rejected = _hh_split(obj, "rejected")
            meta.update(rejected=rejected, same_prompt=rejected_prompt == prompt)
        except FormatError:
            pass
        messages = [*prompt, {"role": "assistant", "content": chosen}]
        conversation = ImportedConversation(messages, "hh", _source_id(obj, number), meta, number)
        _accept(result, number, conversation)
    return result


def parse_hh_pairs(
    lines: Iterable[str | bytes],
) -> tuple[list[PreferencePair], list[LineProblem]]:
    """HH-RLHF lines as preference pairs: the shared prompt, then the chosen and rejected replies.

    A line is skipped with a problem when the two transcripts differ before the final reply (the
    pair would compare answers to different conversations), when the replies are identical, or
    when prompt + chosen reply is not a valid conversation.
    """
    pairs: list[PreferencePair] = []
    problems: list[LineProblem] = []
    for number, obj in _numbered_objects(lines, problems):
        try:
            prompt, chosen = _hh_split(obj, "chosen")
            rejected_prompt, rejected = _hh_split(obj, "rejected")
        except FormatError as e:
            problems.append(LineProblem(number, e.message))
            continue
        if prompt != rejected_prompt:
            problems.append(
                LineProblem(number, "chosen and rejected differ before the final reply")
            )
            continue
        if chosen == rejected:
            problems.append(LineProblem(number, "chosen and rejected replies are identical"))
            continue
        invalid = validate_messages([*prompt, {"role": "assistant", "content": chosen}])
        invalid += [
            p
            for p in validate_messages([*prompt, {"role": "assistant", "content": rejected}])
            if p not in invalid
        ]
        if invalid:
            problems.append(LineProblem(number, "; ".join(invalid)))
            continue
        pairs.append(PreferencePair(normalize_messages(prompt), chosen, rejected, number))
    return pairs, problems


# --------------------------------------------------------------------------------------------
# Auto-detection


def detect_format(first_line: str | bytes) -> Format:
    """Which parser reads a file, from its first non-blank line; FormatError if none does."""
    if isinstance(first_line, bytes):
        try:
            first_line = first_line.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("not valid UTF-8", 1) from None
    try:
        obj = json.loads(first_line.removeprefix("\ufeff"))
    except ValueError:
        raise FormatError("not a JSON line, so not a supported conversation format", 1) from None
    if not isinstance(obj, dict):
        raise FormatError("not a JSON object, so not a supported conversation format", 1)
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "message_tree_id" in obj or isinstance(obj.get("prompt"), dict):
        return "oasst"
    if "chosen" in obj and "rejected" in obj:
        return "hh"
    keys = ", ".join(sorted(obj)[:8]) or "none"
    raise FormatError(
        f"unrecognised format (keys: {keys}); expected messages, conversations, "
        "an OpenAssistant tree, or chosen/rejected",
        1,
    )


def parse_auto(lines: Iterable[str | bytes], *, format: Format | None = None) -> ParseResult:
    """Parse with the parser ``detect_format`` picks from the first non-blank line (or the one
    named). OASST uses its defaults (best path, human-written only); HH gives conversations."""
    iterator = iter(lines)
    head: list[str | bytes] = []
    for raw in iterator:
        head.append(raw)
        if raw.strip():
            break
    if format is None:
        if not head or not head[-1].strip():
            return ParseResult()
        format = detect_format(head[-1])
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}")
    everything = itertools.chain(head, iterator)
    if format == "oasst":
        return parse_oasst_trees(everything)
    if format == "hh":
        return parse_hh_jsonl(everything)
    return parse_messages_jsonl(everything)  # handles both messages and ShareGPT lines


# --------------------------------------------------------------------------------------------
# Snapshots


@dataclass(frozen=True)
class SnapshotItem:
    """One approved conversation to export.

    ``meta`` goes to ``index.jsonl`` as it is; a ``tags`` list in it is counted in the card.
    ``group``: conversations with the same group land in the same split (default: each its own,
    by id).
    """

    id: str | int
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)
    group: str | None = None


@dataclass(frozen=True)
class SnapshotCard:
    """What ``card.json`` holds. ``characters`` counts message text (not tool-call arguments);
    ``tags`` counts conversations per tag. ``extra`` (the caller's ``card_extra``, such as
    labelers and guideline versions) is merged at the top level of ``card.json``."""

    conversations: int
    splits: dict[str, int]
    turns: int
    role_turns: dict[str, int]
    tool_calls: int
    characters: int
    tags: dict[str, int]
    content_sha256: str
    validation_fraction: float
    salt: str
    format_version: int = SNAPSHOT_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}


def _canonical(value: Any) -> str:
    """The one JSON text of a value: sorted keys, compact, no ASCII escaping except for U+0085,
    U+2028 and U+2029, which JSON allows raw but ``str.splitlines`` (and old JavaScript) treat as
    line ends, so a reader splitting JSONL that way would cut a row in two."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _id_key(item_id: str | int) -> tuple[int, int | str]:
    """Rows sort by id: numbers numerically, before strings."""
    return (0, item_id) if isinstance(item_id, int) else (1, item_id)


def _score(salt: str, key: str) -> float:
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _assign_splits(
    items: Sequence[SnapshotItem], fraction: float, salt: str
) -> dict[str | int, str]:
    """Split per item from the hash of its group (or id), then make sure, with two or more
    groups and 0 < fraction < 1, that neither split is empty: the lowest-scoring group moves to
    validation, or the highest to train."""
    scores: dict[str, float] = {}
    group_of: dict[str | int, str] = {}
    for item in items:
        key = item.group if item.group is not None else f"id:{_canonical(item.id)}"
        group_of[item.id] = key
        scores[key] = _score(salt, key)
    in_validation = {key for key, score in scores.items() if score < fraction}
    if len(scores) >= 2 and 0 < fraction < 1:
        if not in_validation:
            in_validation = {min(scores, key=lambda k: (scores[k], k))}
        elif len(in_validation) == len(scores):
            in_validation -= {max(scores, key=lambda k: (scores[k], k))}
    return {
        item_id: ("validation" if key in in_validation else "train")
        for item_id, key in group_of.items()
    }


def _parquet_schema(rows: Sequence[Mapping[str, Any]]) -> Any:
    import pyarrow as pa  # here, not at the top: importing the parsers should stay light

    has_name = any("name" in m for row in rows for m in row["messages"])
    has_calls = any("tool_calls" in m for row in rows for m in row["messages"])
    fields = [pa.field("content", pa.string()), pa.field("role", pa.string())]
    if has_name:
        fields.append(pa.field("name", pa.string()))
    if has_calls:
        function = pa.struct([("arguments", pa.string()), ("name", pa.string())])
        call = pa.struct([("function", function), ("type", pa.string())])
        fields.append(pa.field("tool_calls", pa.list_(call)))
    fields.sort(key=lambda f: f.name)
    return pa.schema([pa.field("messages", pa.list_(pa.struct(fields)))])


def _write_parquet(path: Path, rows: Sequence[Mapping[str, Any]], schema: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, path, compression="zstd")


def _readme(card: SnapshotCard, splits: Sequence[str]) -> str:
    """A Hugging Face dataset card: YAML front matter for ``load_dataset``, then a summary.

    Only fixed text goes into the YAML; caller-supplied values appear in the body as JSON, so no
    value can break the front matter.
    """
    data_files = "".join(f"  - split: {s}\n    path: {s}.jsonl\n" for s in splits)
    roles = ", ".join(f"{role} {n}" for role, n in card.role_turns.items()) or "none"
    tags = ", ".join(f"{tag} ({n})" for tag, n in card.tags.items()) or "none"
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        data_files.rstrip("\n"),
        "tags:",
        "- conversational",
        "- orchard",
        "---",
        "",
        "# Conversation snapshot",
        "",
        "Chat conversations approved by reviewers in Orchard, in the Hugging Face "
        '`messages` format (one `{"messages": [...]}` per line; the Parquet files hold the same '
        "rows). Tool-call arguments are JSON strings.",
        "",
        f"- Conversations: {card.conversations} "
        f"(train {card.splits['train']}, validation {card.splits['validation']})",
        f"- Turns: {card.turns} ({roles}); tool calls: {card.tool_calls}",
        f"- Characters of text: {card.characters}",
        f"- Tags: {tags}",
        f"- Validation fraction: {card.validation_fraction}",
        f"- Content SHA-256: `{card.content_sha256}`",
        "",
        "`index.jsonl` lists each conversation's id, split and metadata; `card.json` holds these",
        "numbers for programs.",
    ]
    if card.extra:
        lines += ["", "## Provenance", ""]
        lines += [f"- {key}: `{_canonical(card.extra[key])}`" for key in sorted(card.extra)]
    return "\n".join(lines) + "\n"


def write_snapshot(
    conversations: Sequence[SnapshotItem],
    out_dir: Path,
    *,
    validation_fraction: float = 0.1,
    salt: str = "",
    card_extra: Mapping[str, Any] | None = None,
) -> SnapshotCard:
    """Write a dataset snapshot of approved conversations to ``out_dir`` (see the module
    docstring for the files and the split). ValueError for an empty list, duplicate ids, a
    conversation that does not validate, or ``card_extra`` that is not JSON or that reuses a
    computed key. The caller records the time and who asked: nothing here depends on the clock."""
    if not conversations:
        raise ValueError("no approved conversations to put in a snapshot")
    if not 0 <= validation_fraction <= 1:
        raise ValueError("validation_fraction must be between 0 and 1")
    extra = dict(card_extra or {})
    try:
        _canonical(extra)
    except (TypeError, ValueError) as e:
        raise ValueError(f"card_extra must be plain JSON data ({e})") from None
    seen: set[Any] = set()
    for item in conversations:
        if isinstance(item.id, bool) or not isinstance(item.id, int | str):
            raise ValueError(f"conversation id {item.id!r} must be an int or a string")
        key = _canonical(item.id)
        if key in seen:
            raise ValueError(f"conversation {item.id} appears twice")
        seen.add(key)
        problems = validate_messages(item.messages)
        if problems:
            raise ValueError(f"conversation {item.id}: " + "; ".join(problems))
        try:
            _canonical(item.meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"conversation {item.id}: meta is not plain JSON ({e})") from None

    items = sorted(conversations, key=lambda item: _id_key(item.id))
    split_of = _assign_splits(items, validation_fraction, salt)
    rows = {item.id: {"messages": normalize_messages(item.messages)} for item in items}

    role_turns: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    tool_calls = characters = 0
    content = hashlib.sha256()
    for item in items:
        messages = rows[item.id]["messages"]
        role_turns.update(m["role"] for m in messages)
        tool_calls += sum(len(m.get("tool_calls", [])) for m in messages)
        characters += sum(len(m["content"]) for m in messages)
        item_tags = item.meta.get("tags")
        if isinstance(item_tags, list):
            tags.update(set(map(str, item_tags)))
        content.update((_canonical({"id": item.id, "messages": messages}) + "\n").encode())
    by_split = {s: [item for item in items if split_of[item.id] == s] for s in SPLITS}
    card = SnapshotCard(
        conversations=len(items),
        splits={s: len(by_split[s]) for s in SPLITS},
        turns=sum(role_turns.values()),
        role_turns={role: role_turns[role] for role in ROLES if role_turns[role]},
        tool_calls=tool_calls,
        characters=characters,
        tags=dict(sorted(tags.items())),
        content_sha256=content.hexdigest(),
        validation_fraction=validation_fraction,
        salt=salt,
        extra=extra,
    )
    clash = sorted(set(extra) & set(asdict(card)))
    if clash:
        raise ValueError(f"card_extra may not set {', '.join(clash)}: the snapshot computes it")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = _parquet_schema(list(rows.values()))
    for split in SPLITS:
        split_rows = [rows[item.id] for item in by_split[split]]
        text = "".join(_canonical(row) + "\n" for row in split_rows)
        (out_dir / f"{split}.jsonl").write_text(text, encoding="utf-8")
        _write_parquet(out_dir / f"{split}.parquet", split_rows, schema)
    index = "".join(
        _canonical(
            {
                "id": item.id,
                "split": split_of[item.id],
                "messages_sha256": hashlib.sha256(
                    _canonical(rows[item.id]["messages"]).encode()
                ).hexdigest(),
                "meta": item.meta,
                **({"group": item.group} if item.group is not None else {}),
            }
        )
        + "\n"
        for item in items
    )
    (out_dir / "index.jsonl").write_text(index, encoding="utf-8")
    card_text = json.dumps(card.to_dict(), ensure_ascii=False, sort_keys=True, indent=2) + "\n"
    (out_dir / "card.json").write_text(card_text, encoding="utf-8")
    non_empty = [s for s in SPLITS if card.splits[s]]
    (out_dir / "README.md").write_text(_readme(card, non_empty), encoding="utf-8")
    return card


def read_snapshot(snapshot_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "validation": [...]}``, each row ``{"id", "meta", "messages"}``, from the
    JSONL files and the index (for tests and the preview)."""
    snapshot_dir = Path(snapshot_dir)
    index: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    with (snapshot_dir / "index.jsonl").open(encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            index[entry["split"]].append(entry)
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        with (snapshot_dir / f"{split}.jsonl").open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if len(rows) != len(index[split]):
            raise FormatError(
                f"{split}.jsonl has {len(rows)} rows but index.jsonl lists {len(index[split])}"
            )
        out[split] = [
            {"id": entry["id"], "meta": entry["meta"], "messages": row["messages"]}
            for entry, row in zip(index[split], rows, strict=True)
        ]
    return out
