"""Event publishers: produce CloudEvents to Kafka (binary mode), or keep them in memory.

``publish(topic, type, data, *, key=None, id=None, subject=None, extensions=None)`` returns the
event id and returns only once the broker has the event (``acks=all``), so a caller that got an
id may tell its client the work is queued. Failures raise ``UnavailableError`` (HTTP 503).

The Kafka producer is built lazily, once per process (and again after a fork), then reused by
every warm invocation; building it never happens at import time.
"""
from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from typing import Any, Mapping

from shared.errors import UnavailableError
from shared.events.cloudevents import CloudEvent, encode_data, to_kafka_headers
from shared.events.kafka import producer_config
from shared.events.types import DEFAULT_SOURCE

__all__ = ["EventPublisher", "KafkaPublisher", "MemoryPublisher", "publisher_from_env"]

log = logging.getLogger(__name__)


class EventPublisher(ABC):
    """Publishes CloudEvents to topics."""

    def __init__(self, source: str = DEFAULT_SOURCE) -> None:
        self.source = source

    def publish(
        self,
        topic: str,
        type: str,
        data: Any,
        *,
        key: str | None = None,
        id: str | None = None,
        subject: str | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one event; return its id (``id`` when given: pass a stable one to de-duplicate)."""
        if not topic or not type:
            raise ValueError("an event needs a topic and a type")
        event = CloudEvent.new(self.source, type, data, id=id, subject=subject, extensions=extensions, key=key)
        event.topic = topic
        self._send(event)
        return event.id

    @abstractmethod
    def _send(self, event: CloudEvent) -> None: ...

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything sent so far is delivered."""

    def close(self) -> None:
        """Release the connection; a later publish opens a new one."""


class MemoryPublisher(EventPublisher):
    """Keeps events in a list (tests, and the no-broker fallback of ``publisher_from_env``)."""

    def __init__(self, source: str = DEFAULT_SOURCE) -> None:
        super().__init__(source)
        self.events: list[CloudEvent] = []
        self._lock = threading.Lock()

    def _send(self, event: CloudEvent) -> None:
        with self._lock:
            self.events.append(event)

    def on(self, topic: str) -> list[CloudEvent]:
        """The events published to ``topic``, oldest first."""
        with self._lock:
            return [e for e in self.events if e.topic == topic]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


class KafkaPublisher(EventPublisher):
    """kafka-python producer; CloudEvents binary mode (``ce_*`` headers, JSON value)."""

    def __init__(
        self,
        bootstrap_servers: str,
        source: str = DEFAULT_SOURCE,
        *,
        send_timeout: float = 15.0,
        **producer_overrides: Any,
    ) -> None:
        super().__init__(source)
        self.bootstrap_servers = bootstrap_servers
        self.send_timeout = send_timeout
        self._overrides = producer_overrides
        self._producer: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KafkaPublisher({self.bootstrap_servers!r}, source={self.source!r})"

    def _get_producer(self) -> Any:
        if self._producer is not None and self._pid == os.getpid():
            return self._producer
        with self._lock:
            if self._producer is None or self._pid != os.getpid():
                from kafka import KafkaProducer
                from kafka.errors import KafkaError

                try:
                    self._producer = KafkaProducer(
                        **producer_config(self.bootstrap_servers, client_id="chatfaas-publisher", **self._overrides)
                    )
                except KafkaError as exc:
                    raise UnavailableError("the event broker is unavailable", retry_after=2) from exc
                self._pid = os.getpid()
        return self._producer

    def _send(self, event: CloudEvent) -> None:
        from kafka.errors import KafkaError

        producer = self._get_producer()
        try:
            future = producer.send(
                event.topic,
                value=encode_data(event),
                key=event.key.encode("utf-8") if event.key is not None else None,
                headers=to_kafka_headers(event),
            )
            metadata = future.get(timeout=self.send_timeout)
        except KafkaError as exc:
            log.warning("publishing %s to %s failed: %s", event.type, event.topic, exc)
            raise UnavailableError("the event broker is unavailable", retry_after=2) from exc
        event.partition, event.offset = metadata.partition, metadata.offset

    def flush(self, timeout: float | None = None) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None and self._pid == os.getpid():
            producer.close(timeout=5)


_fallback: MemoryPublisher | None = None
_kafka_publishers: dict[tuple[str, str], KafkaPublisher] = {}
_registry_lock = threading.Lock()


def publisher_from_env(source: str | None = None, environ: Mapping[str, str] | None = None) -> EventPublisher:
    """``KAFKA_BOOTSTRAP_SERVERS`` -> a KafkaPublisher; without it, the process's MemoryPublisher.

    One publisher (so one producer) per broker and source per process, however often it is called.

    ``source`` defaults to ``EVENT_SOURCE``, else ``/functions/<FUNCTION_NAME>``, else ``/chatfaas``.
    """
    global _fallback
    env = os.environ if environ is None else environ
    source = source or env.get("EVENT_SOURCE") or (
        f"/functions/{env['FUNCTION_NAME']}" if env.get("FUNCTION_NAME") else DEFAULT_SOURCE
    )
    servers = env.get("KAFKA_BOOTSTRAP_SERVERS")
    with _registry_lock:
        if servers:
            if (servers, source) not in _kafka_publishers:
                _kafka_publishers[(servers, source)] = KafkaPublisher(servers, source)
            return _kafka_publishers[(servers, source)]
        if _fallback is None:
            log.warning("KAFKA_BOOTSTRAP_SERVERS is not set: events stay in this process (MemoryPublisher)")
            _fallback = MemoryPublisher(source)
        return _fallback
