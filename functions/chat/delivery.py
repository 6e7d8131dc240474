"""How a turn's reply reaches the client: one JSON message, or an SSE stream of OpenAI chunks.

Both read :meth:`ChatService.follow` and store the outcome they see with
:meth:`ChatService.finish` (a no-op when ``chat-results`` stored it first). Neither holds a
worker thread past ``CHAT_REPLY_TIMEOUT_SECONDS``; the reply still lands in the store later.
A client that leaves a stream early loses nothing: ``chat-results`` stores the full reply
from the result event.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from functions.chat import metrics
from functions.chat.replies import Finished, TimedOut, Token, Waiting
from functions.chat.schemas import message_location
from functions.chat.service import ChatService, Turn
from functions.chat.store import FAILED, Message
from shared.errors import GatewayTimeoutError, PlatformError
from shared.http import sse_event

KEEP_ALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def turn_details(turn: Turn) -> dict[str, str]:
    return {
        "conversation_id": turn.conversation.id,
        "message_id": turn.request_id,
        "location": message_location(turn.conversation.id, turn.request_id),
    }


def timeout_error(turn: Turn, seconds: float) -> GatewayTimeoutError:
    details = turn_details(turn)
    return GatewayTimeoutError(
        f"the reply took longer than {seconds:g}s; it is still being generated: poll {details['location']}",
        code="reply_timeout", details=details, headers={"Location": details["location"]},
    )


def failure_error(turn: Turn, message: Message) -> PlatformError:
    """A generation that failed, as a 502 carrying the worker's reason and the message's place."""
    error = dict(message.error or {})
    details = {**turn_details(turn), "reason": error.get("code", "inference_error")}
    return PlatformError(
        error.get("message") or "the generation failed", status=502, code=error.get("code") or "inference_error",
        details=details, headers={"Location": details["location"]},
    )


def wait_for_reply(service: ChatService, turn: Turn) -> Message:
    """The finished assistant message; 504 at the deadline, 502 when the generation failed."""
    started = time.monotonic()
    for event in service.follow(turn):
        if isinstance(event, Finished):
            message = service.finish(turn.request_id, event.outcome)
            metrics.turn_ended("sync", message.status, time.monotonic() - started)
            if message.status == FAILED:
                raise failure_error(turn, message)
            return message
        if isinstance(event, TimedOut):
            metrics.turn_ended("sync", "timeout")
            raise timeout_error(turn, service.settings.reply_timeout_seconds)
    raise timeout_error(turn, service.settings.reply_timeout_seconds)  # pragma: no cover - follow always ends


def _chunk(turn: Turn, created: int, delta: dict, finish_reason: str | None = None, **extra: Any) -> bytes:
    return sse_event({
        "id": f"chatcmpl-{turn.request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": turn.generation.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    })


def _error_event(code: str, message: str, **details: Any) -> bytes:
    return sse_event({"error": {"code": code, "message": message, **details}}, event="error")


def stream_reply(service: ChatService, turn: Turn) -> Iterator[bytes]:
    """SSE: a role chunk, a chunk per token, a final chunk with ``finish_reason`` (and usage),
    then ``data: [DONE]``; a failure or a timeout is an ``event: error`` before ``[DONE]``."""
    created = int(time.time())
    yield _chunk(turn, created, {"role": "assistant", "content": ""})
    try:
        yield from _stream_events(service, turn, created)
    except PlatformError as err:  # the head is sent: an error can only travel as an event now
        yield _error_event(err.code, err.message, **turn_details(turn))
    yield DONE


def _stream_events(service: ChatService, turn: Turn, created: int) -> Iterator[bytes]:
    sent, started = "", time.monotonic()
    for event in service.follow(turn):
        if isinstance(event, Token):
            sent += event.text
            yield _chunk(turn, created, {"content": event.text})
        elif isinstance(event, Waiting):
            yield KEEP_ALIVE
        elif isinstance(event, TimedOut):
            metrics.turn_ended("stream", "timeout")
            err = timeout_error(turn, service.settings.reply_timeout_seconds)
            yield _error_event(err.code, err.message, **turn_details(turn))
            return
        elif isinstance(event, Finished):
            message = service.finish(turn.request_id, event.outcome)
            metrics.turn_ended("stream", message.status, time.monotonic() - started)
            if message.status == FAILED:
                error = dict(message.error or {})
                yield _error_event(error.get("code", "inference_error"), error.get("message", "generation failed"),
                                   **turn_details(turn))
                return
            # Text that never reached the channel (a worker that does not stream): send the rest.
            if message.content.startswith(sent) and len(message.content) > len(sent):
                yield _chunk(turn, created, {"content": message.content[len(sent):]})
            yield _chunk(turn, created, {}, message.finish_reason or "stop",
                         usage=dict(message.usage) if message.usage else None)
            return
