"""Following a reply while it is generated: the token channel first, the store as a backstop.

The inference worker appends JSON entries to the channel ``tokens:<request_id>`` of the
``inference`` cache namespace: ``{"type": "token", "text"}`` … then one terminal entry,
``{"type": "done", "finish_reason", "usage", "content"}`` or ``{"type": "error", "error"}``.
:func:`follow_reply` turns them into :class:`Token` and :class:`Finished` events, with a
:class:`Waiting` heartbeat after every empty read (one blocking read lasts at most
``read_seconds``), and :class:`TimedOut` at the deadline. After an empty read it also looks at
the store, so a reply stored by ``chat-results`` ends the wait even if no token was streamed
(a worker that does not stream, or a cache that is down).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from functions.chat.store import COMPLETE, ConversationStore, Message, Outcome
from shared.errors import UnavailableError
from shared.events.types import token_channel

log = logging.getLogger("functions.chat.replies")


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    from_channel: bool


@dataclass(frozen=True)
class Waiting:
    """Nothing arrived during one read: a chance to send a keep-alive or notice a timeout."""


@dataclass(frozen=True)
class TimedOut:
    pass


ReplyEvent = Token | Finished | Waiting | TimedOut


def outcome_of_entry(entry: Any) -> Outcome | None:
    """The outcome a terminal channel entry describes; ``None`` for a token or junk."""
    if not isinstance(entry, dict):
        return None
    if entry.get("type") == "done":
        usage = entry.get("usage") if isinstance(entry.get("usage"), dict) else None
        return Outcome.complete(str(entry.get("content") or ""), usage=usage, finish_reason=entry.get("finish_reason"))
    if entry.get("type") == "error":
        error = entry.get("error") if isinstance(entry.get("error"), dict) else {}
        return Outcome.failed(str(error.get("code") or "inference_error"), str(error.get("message") or "generation failed"))
    return None


def outcome_of_message(message: Message) -> Outcome:
    if message.status == COMPLETE:
        return Outcome.complete(message.content, usage=message.usage, finish_reason=message.finish_reason, model=message.model)
    error = dict(message.error or {})
    return Outcome.failed(error.get("code", "inference_error"), error.get("message", "generation failed"))


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("ignoring a malformed token channel entry")
        return None


def follow_reply(
    tokens: Any,
    store: ConversationStore,
    request_id: str,
    *,
    deadline: float,
    read_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[ReplyEvent]:
    """Events of one reply until it finishes or ``deadline`` (on ``clock``) passes."""
    channel, after = token_channel(request_id), None
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            yield TimedOut()
            return
        wait = min(read_seconds, remaining)
        try:
            entries = tokens.channel_read(channel, after, wait)
        except UnavailableError as exc:
            log.warning("token channel unavailable, polling the store: %s", exc)
            entries = []
            sleep(wait)
        for entry_id, raw in entries:
            after = entry_id
            entry = _decode(raw)
            outcome = outcome_of_entry(entry)
            if outcome is not None:
                yield Finished(outcome, from_channel=True)
                return
            if isinstance(entry, dict) and entry.get("type") == "token" and entry.get("text"):
                yield Token(str(entry["text"]))
        if not entries:
            stored = store.find_by_request_id(request_id)
            if stored is not None and stored.finished:
                yield Finished(outcome_of_message(stored), from_channel=False)
                return
            yield Waiting()
