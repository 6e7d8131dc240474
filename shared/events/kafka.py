"""kafka-python settings tuned for Apache Kafka *and* the tansu broker of the dev stack and tests.

What we found running kafka-python 3.0.12 against tansu 0.6 (memory storage):

- ``api_version`` auto-detection works (tansu answers ApiVersions; kafka-python settles on
  (3, 9)), so we leave it unset; ``KAFKA_API_VERSION=2.8`` pins one if a broker needs it.
- Producers: ``acks="all"`` with kafka-python's default idempotence works; topics are
  auto-created on first produce, but we create them up front (:func:`ensure_topics`, which
  uses CreateTopics, supported by tansu) so partition counts are what we chose.
- Consumer groups: the first member of a new group is assigned after about 2-3 s; a second
  member joining (a rebalance) takes about 6 s. tansu holds a JoinGroup until every known member
  rejoins or the rebalance timeout ends, and kafka-python sends ``max_poll_interval_ms`` as that
  timeout, so it stays a few seconds in dev (``KAFKA_MAX_POLL_INTERVAL_MS``, default 5000).
  The flip side: a consumer that does not call ``poll()`` within that interval leaves the group,
  so a slow handler must run while the consumer keeps polling (paused partitions).
- Without a group (``assign()``), the first record arrives in tens of milliseconds: tests that
  only need to read a topic should read it that way (:func:`read_topic`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable

from shared.errors import UnavailableError

__all__ = ["api_version", "producer_config", "consumer_config", "ensure_topics", "read_topic"]


def api_version(environ: dict | None = None) -> tuple[int, ...] | None:
    """``KAFKA_API_VERSION`` ("2.8", "3.9"...) as kafka-python's tuple; None: auto-detect."""
    raw = (os.environ if environ is None else environ).get("KAFKA_API_VERSION", "").strip()
    if not raw:
        return None
    try:
        return tuple(int(part) for part in raw.split("."))
    except ValueError:
        raise ValueError(f"KAFKA_API_VERSION must look like 2.8, got {raw!r}") from None


def _common(bootstrap_servers: str, client_id: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"bootstrap_servers": bootstrap_servers.split(",")}
    if client_id:
        config["client_id"] = client_id
    version = api_version()
    if version:
        config["api_version"] = version
    return config


def producer_config(bootstrap_servers: str, *, client_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """KafkaProducer kwargs: durable (acks=all), quick to give up when the broker is away."""
    config = _common(bootstrap_servers, client_id)
    config.update(
        acks="all",
        linger_ms=int(os.environ.get("KAFKA_LINGER_MS", "2")),  # small: a chat turn waits on it
        bootstrap_timeout_ms=5000,  # the constructor fails fast when no broker answers
        max_block_ms=5000,          # send() blocks at most this long for metadata or buffer room
        request_timeout_ms=10000,
        delivery_timeout_ms=15000,  # the future fails after this instead of retrying forever
        retry_backoff_ms=100,
    )
    config.update(overrides)
    return config


def consumer_config(
    bootstrap_servers: str, group_id: str | None, *, client_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """KafkaConsumer kwargs: manual commits, start from the earliest record, short group timings."""
    max_poll = int(os.environ.get("KAFKA_MAX_POLL_INTERVAL_MS", "5000"))
    config = _common(bootstrap_servers, client_id)
    config.update(
        group_id=group_id,
        enable_auto_commit=False,  # commit only after the handler succeeded (at-least-once)
        auto_offset_reset="earliest",
        max_poll_interval_ms=max_poll,
        session_timeout_ms=max(max_poll, 10000),
        heartbeat_interval_ms=1000,
        max_poll_records=50,
        # How long the broker may hold a fetch with no data. tansu answers a held fetch only when
        # it times out, not when a record arrives, so this bounds the delivery latency of an
        # event (a chat turn waits on two of them); Apache Kafka answers as soon as data comes.
        fetch_max_wait_ms=int(os.environ.get("KAFKA_FETCH_MAX_WAIT_MS", "100")),
        request_timeout_ms=max(30000, max_poll + 5000),
    )
    config.update(overrides)
    return config


def _kafka_unavailable(exc: Exception) -> UnavailableError:
    return UnavailableError(f"the event broker is unavailable: {type(exc).__name__}", retry_after=2)


def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], partitions: int = 3, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet (CreateTopics); return those created here."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    wanted = list(dict.fromkeys(topics))
    try:
        admin = KafkaAdminClient(**_common(bootstrap_servers, "chatfaas-admin"), request_timeout_ms=10000)
    except KafkaError as exc:
        raise _kafka_unavailable(exc) from exc
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for topic in (t for t in wanted if t not in existing):
            try:
                admin.create_topics([NewTopic(topic, partitions, replication_factor)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass  # another process created it first
    except KafkaError as exc:
        raise _kafka_unavailable(exc) from exc
    finally:
        admin.close()
    return created


def read_topic(bootstrap_servers: str, topic: str, count: int, timeout: float = 10.0) -> list[Any]:
    """Read the first ``count`` records of every partition of ``topic`` without a group (tests, tools)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**consumer_config(bootstrap_servers, None, client_id="chatfaas-reader"))
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.05)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[Any] = []
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    finally:
        consumer.close()
