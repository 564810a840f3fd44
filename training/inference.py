"""Serving generations from checkpoints inside the web process, kept out of the request's way.

Models stay loaded in a small LRU cache (one per process). Each generation runs in its own
thread; the request thread only relays token events from a queue, so a client that disconnects
makes the relay stop and set the engine's stop flag within one decoding step. A bounded number of
generations run at once per process; beyond it callers get ``Busy`` with a retry-after hint
instead of an ever-growing queue.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings

from training.models import Artifact
from training.reporting import without_nul

logger = logging.getLogger(__name__)


class Busy(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"all generation slots are busy; retry in {retry_after} s")


class EngineCache:
    """At most ``size`` engines, least recently used evicted first; loads are serialised."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._engines: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, artifact: Artifact, base_path: Path | None = None) -> Any:
        """The artifact's engine; ``base_path`` (from :func:`adapter_base_path`, looked up by
        the caller's thread, which sees its own transaction) when the artifact is an adapter."""
        from training.core.generate import Engine

        key = (artifact.pk, artifact.sha256)
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            engine = Engine.load(artifact.abspath(), base_path=base_path)
            self._engines[key] = engine
            while len(self._engines) > self.size:
                evicted, _ = self._engines.popitem(last=False)
                logger.info("engine cache: evicted checkpoint %s", evicted[0])
            return engine

    def clear(self) -> None:
        with self._lock:
            self._engines.clear()


def adapter_base_path(artifact: Artifact) -> Path | None:
    """A LoRA adapter checkpoint runs on the checkpoint it was trained from (its parent)."""
    if not (artifact.abspath() / "adapter_config.json").is_file():
        return None
    from training.models import ArtifactKind

    base = artifact.parents.filter(kind=ArtifactKind.CHECKPOINT).order_by("pk").first()
    if base is None:
        raise ValueError(f"adapter {artifact} has no base checkpoint among its parents")
    return base.abspath()


_cache: EngineCache | None = None
_slots: threading.BoundedSemaphore | None = None
_init_lock = threading.Lock()


def engine_cache() -> EngineCache:
    global _cache
    with _init_lock:
        if _cache is None:
            _cache = EngineCache(settings.ORCHARD_ENGINE_CACHE_SIZE)
        return _cache


def generation_slots() -> threading.BoundedSemaphore:
    global _slots
    with _init_lock:
        if _slots is None:
            _slots = threading.BoundedSemaphore(settings.ORCHARD_MAX_CONCURRENT_GENERATIONS)
        return _slots


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


def stream_generation(*, artifact: Artifact, prompts: list[str], params: Any) -> Iterator[dict]:
    """Yield ``{"event": "token"|"done"|"error", ...}`` dicts while a generation runs.

    Raises ``Busy`` before starting when no slot is free. Closing the iterator (the client went
    away) stops the generation at its next step and frees the slot.
    """
    slots = generation_slots()
    if not slots.acquire(blocking=False):
        raise Busy(retry_after=settings.ORCHARD_GENERATION_RETRY_AFTER_SECONDS)
    try:
        base_path = adapter_base_path(artifact)
    except Exception:
        slots.release()
        raise
    events: queue.Queue[dict] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            engine = engine_cache().get(artifact, base_path)
            completions = engine.generate(
                prompts,
                params,
                on_token=lambda event: events.put({"event": "token", **_plain(event)}),
                should_stop=stop.is_set,
            )
            events.put({"event": "done", "completions": [_plain(c) for c in completions]})
        except Exception as exc:  # shown to the person; the server keeps serving
            logger.exception("generation failed for checkpoint %s", artifact.pk)
            events.put({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            slots.release()

    thread = threading.Thread(target=work, name=f"generate-{artifact.pk}", daemon=True)
    thread.start()
    try:
        while True:
            event = events.get()
            yield event
            if event["event"] in ("done", "error"):
                return
    finally:
        stop.set()  # no-op after a normal end; stops the engine when the client disconnected


def complete(*, artifact: Artifact, prompts: list[str], params: Any) -> list[dict]:
    """Every completion at once (no streaming): the compare page and labeling drafts use it.

    Raises ``Busy`` when no generation slot is free, ``ValueError`` with the engine's message
    when the generation fails (a prompt longer than the context window, for example).
    """
    for event in stream_generation(artifact=artifact, prompts=prompts, params=params):
        if event["event"] == "done":
            return without_nul(event["completions"])
        if event["event"] == "error":
            raise ValueError(event["message"])
    raise ValueError("the generation ended without a result")


def chat_prompts(artifact: Artifact, conversations: list[list[dict]]) -> list[str]:
    """Each conversation rendered with the checkpoint's own chat template, ready for a reply."""
    from training.core.generate import chat_prompt

    tokenizer = engine_cache().get(artifact, adapter_base_path(artifact)).tokenizer
    return [chat_prompt(tokenizer, messages) for messages in conversations]


# --- chat ---------------------------------------------------------------------------------------

_per_user: dict[int, int] = {}
_per_user_lock = threading.Lock()


class _UserSlot:
    """At most ``ORCHARD_MAX_GENERATIONS_PER_USER`` generations per person in this process, so
    one person with many tabs cannot take every slot."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id

    def __enter__(self) -> _UserSlot:
        with _per_user_lock:
            if _per_user.get(self.user_id, 0) >= settings.ORCHARD_MAX_GENERATIONS_PER_USER:
                raise Busy(retry_after=settings.ORCHARD_GENERATION_RETRY_AFTER_SECONDS)
            _per_user[self.user_id] = _per_user.get(self.user_id, 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        with _per_user_lock:
            _per_user[self.user_id] -= 1


def user_slot(user_id: int) -> _UserSlot:
    return _UserSlot(user_id)


def stream_chat(
    *, artifact: Artifact, messages: list[dict], params: Any, tools: bool = False
) -> Iterator[dict]:
    """Like :func:`stream_generation`, for one chat reply: ``token`` events, with tools also
    ``tool_call`` and ``tool_result`` events, and a final ``done`` with ``messages`` (the new
    assistant and tool turns) and ``finish_reason``. The conversation must already fit the
    context window (see ``training.core.chat.fit_messages``)."""
    slots = generation_slots()
    if not slots.acquire(blocking=False):
        raise Busy(retry_after=settings.ORCHARD_GENERATION_RETRY_AFTER_SECONDS)
    try:
        base_path = adapter_base_path(artifact)
    except Exception:
        slots.release()
        raise
    events: queue.Queue[dict] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            engine = engine_cache().get(artifact, base_path)
            reply = _chat_reply(engine, messages, params, tools, events, stop)
            events.put({"event": "done", **without_nul(reply)})
        except Exception as exc:  # shown to the person; the server keeps serving
            logger.exception("chat generation failed for checkpoint %s", artifact.pk)
            events.put({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            slots.release()

    thread = threading.Thread(target=work, name=f"chat-{artifact.pk}", daemon=True)
    thread.start()
    try:
        while True:
            event = events.get()
            yield event
            if event["event"] in ("done", "error"):
                return
    finally:
        stop.set()


def _chat_reply(
    engine: Any, messages: list[dict], params: Any, tools: bool, events: queue.Queue, stop: Any
) -> dict:
    if tools:
        from training.core.tools import generate_with_tools

        def relay(event: dict) -> None:
            if event["event"] != "done":  # the caller sends the one "done", with the turns
                events.put(without_nul(event))

        run = generate_with_tools(engine, messages, params, on_event=relay, should_stop=stop.is_set)
        return {"messages": run.messages, "finish_reason": run.finish_reason, "tokens": run.tokens}
    from training.core.generate import chat_prompt

    prompt = chat_prompt(engine.tokenizer, messages)
    (completion,) = engine.generate(
        [prompt],
        params,
        on_token=lambda e: events.put({"event": "token", "text": without_nul(e.text)}),
        should_stop=stop.is_set,
    )
    reply = {"role": "assistant", "content": completion.text}
    return {
        "messages": [reply],
        "finish_reason": completion.finish_reason,
        "tokens": len(completion.token_ids),
    }


def context_window(artifact: Artifact) -> int:
    """The checkpoint's context window, from its config (an adapter's: its base's)."""
    import json

    folder = adapter_base_path(artifact) or artifact.abspath()
    config = json.loads((folder / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def tokenizer_for(artifact: Artifact) -> Any:
    """The checkpoint's tokenizer alone (fast to load: no weights), cached per process."""
    return _tokenizer(artifact.pk, artifact.sha256, str(artifact.abspath()))


@lru_cache(maxsize=8)
def _tokenizer(pk: int, sha256: str, folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
