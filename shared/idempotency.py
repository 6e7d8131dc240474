"""Idempotent handlers: run once per key, however often the event is delivered.

Shaped after AWS Powertools' idempotency utility: a decorator over a small persistence layer
(here any :class:`~shared.storage.cache.Cache`: memory, the dev stack's SQLite file, Redis)::

    from shared.idempotency import idempotent, IdempotencyStore

    @idempotent(lambda: IdempotencyStore(cache_from_env("chat")), key=lambda event: event.id)
    def handle(event: CloudEvent) -> dict: ...

Per key, the store holds one JSON record:

1. ``in_progress`` (created atomically with ``set_if_absent``, with a TTL so that the key of a
   worker that crashed mid-way expires and a redelivery can run);
2. ``completed`` with the handler's JSON result (kept ``expires_after`` seconds): a repeated
   delivery gets the stored result back without running the handler;
3. removed when the handler raises, so a retry runs it again.

A repeated key whose payload differs (by SHA-256 of its canonical JSON) raises ``ConflictError``
(code ``idempotency_key_reused``): the same id was given to two different events. A duplicate
that arrives while the first is still running raises ``ConflictError`` (code ``in_progress``,
with ``Retry-After``), or waits up to ``wait_for_in_progress`` seconds for the first one's result.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from shared.errors import ConflictError, UnavailableError
from shared.storage.cache import Cache

__all__ = ["IdempotencyStore", "IdempotencyRecord", "idempotent", "payload_hash", "default_payload"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

IN_PROGRESS = "in_progress"
COMPLETED = "completed"


def _canonical(value: Any) -> str:
    # Objects without a JSON form hash as their type name: stable across processes, unlike repr().
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=lambda o: f"<{type(o).__name__}>")


def payload_hash(payload: Any) -> str:
    """SHA-256 of the payload's canonical JSON (key order does not matter)."""
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def default_payload(*args: Any, **kwargs: Any) -> Any:
    """What identifies a call's content: a CloudEvent's type and data, else the JSON arguments."""
    from shared.events.cloudevents import CloudEvent

    for value in (*args, *kwargs.values()):
        if isinstance(value, CloudEvent):
            return {"type": value.type, "data": value.data}
    return {"args": list(args), "kwargs": kwargs}


@dataclass(frozen=True)
class IdempotencyRecord:
    status: str
    payload_hash: str
    token: str
    result: Any = None

    def to_json(self) -> dict:
        return {"status": self.status, "hash": self.payload_hash, "token": self.token, "result": self.result}

    @classmethod
    def from_json(cls, doc: dict) -> "IdempotencyRecord":
        return cls(doc["status"], doc.get("hash", ""), doc.get("token", ""), doc.get("result"))


class IdempotencyStore:
    """Idempotency records in a cache.

    ``in_progress_ttl``: how long a running handler holds its key (longer than the slowest run);
    ``expires_after``: how long a completed result is remembered (longer than redeliveries go on).
    """

    def __init__(
        self,
        cache: Cache,
        *,
        prefix: str = "idempotency",
        in_progress_ttl: float = 300.0,
        expires_after: float = 24 * 3600.0,
        wait_for_in_progress: float = 0.0,
        poll_interval: float = 0.05,
    ) -> None:
        self.cache = cache
        self.prefix = prefix
        self.in_progress_ttl = in_progress_ttl
        self.expires_after = expires_after
        self.wait_for_in_progress = wait_for_in_progress
        self.poll_interval = poll_interval

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def get(self, key: str) -> IdempotencyRecord | None:
        doc = self.cache.get_json(self._key(key))
        return None if doc is None else IdempotencyRecord.from_json(doc)

    def run(self, key: str, payload: Any, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` once for ``key``; a repeat returns the first run's (JSON) result."""
        digest = payload_hash(payload)
        deadline = time.monotonic() + self.wait_for_in_progress
        while True:
            mine = IdempotencyRecord(IN_PROGRESS, digest, secrets.token_hex(8))
            if self.cache.set_if_absent(self._key(key), json.dumps(mine.to_json()), ttl=self.in_progress_ttl):
                return self._run_claimed(key, mine, fn)
            found = self.get(key)
            if found is None:
                continue  # it expired or was released between our two calls: claim again
            if found.payload_hash != digest:
                raise ConflictError(
                    "this idempotency key was already used with a different payload",
                    code="idempotency_key_reused",
                )
            if found.status == COMPLETED:
                log.info("idempotency key %s already completed; returning the stored result", key)
                return found.result
            if time.monotonic() >= deadline:
                retry_after = max(1, int(self.cache.ttl(self._key(key)) or 1))
                raise ConflictError(
                    "the same request is already being processed",
                    code="in_progress",
                    headers={"Retry-After": str(min(retry_after, 60))},
                )
            time.sleep(self.poll_interval)

    def _run_claimed(self, key: str, mine: IdempotencyRecord, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except BaseException:
            self._release(key, mine.token)
            raise
        stored = json.loads(json.dumps(result, default=str))  # what a repeat will get back
        done = IdempotencyRecord(COMPLETED, mine.payload_hash, mine.token, stored)
        try:
            self.cache.set(self._key(key), json.dumps(done.to_json()), ttl=self.expires_after)
        except UnavailableError:
            # The work is done; failing now would only make the event source run it again.
            # The in-progress claim expires after its TTL.
            log.warning("could not record idempotency key %s as completed", key, exc_info=True)
        return result

    def _release(self, key: str, token: str) -> None:
        try:
            current = self.get(key)
            # Only our own claim: after an in-progress TTL ran out another worker may own the key.
            if current is not None and current.token == token:
                self.cache.delete(self._key(key))
        except Exception:  # the handler's error matters more; the TTL cleans up
            log.warning("could not release idempotency key %s", key, exc_info=True)


def idempotent(
    store_factory: Callable[[], IdempotencyStore | Cache],
    key: Callable[..., str | None] = lambda event, *args, **kwargs: event.id,
    *,
    payload: Callable[..., Any] = default_payload,
    name: str | None = None,
    required: bool = True,
) -> Callable[[F], F]:
    """Make a handler idempotent by ``key(*args, **kwargs)`` (default: the event's id).

    ``store_factory`` builds the store lazily, once per process (a Cache is wrapped with the
    default settings). Keys are scoped by ``name`` (default: the function's qualified name), so
    two handlers of one event do not share records. With ``required=False`` a call without a key
    runs unprotected; otherwise it raises ``ValueError``.
    """

    def decorate(fn: F) -> F:
        scope = name or f"{fn.__module__}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        lock = threading.Lock()
        built: list[IdempotencyStore] = []

        def store() -> IdempotencyStore:
            if not built:
                with lock:
                    if not built:
                        made = store_factory()
                        built.append(made if isinstance(made, IdempotencyStore) else IdempotencyStore(made))
            return built[0]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user_key = key(*args, **kwargs)
            if not user_key:
                if required:
                    raise ValueError(f"{scope}: no idempotency key for this call")
                log.warning("%s: no idempotency key; running without protection", scope)
                return fn(*args, **kwargs)
            return store().run(f"{scope}:{user_key}", payload(*args, **kwargs), lambda: fn(*args, **kwargs))

        wrapper.idempotency_store = store  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
