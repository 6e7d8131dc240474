"""kafka-python settings shared by the gateway's queue, the queue worker and the connector."""
from __future__ import annotations

import logging
import os
import threading
from typing import Iterable

log = logging.getLogger("shared.dev.kafka")

ASYNC_TOPIC = "gateway.async"
DLQ_SUFFIX = ".dlq"


def bootstrap_servers(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None


def consumer_settings() -> dict:
    """Consumer-group timings. A group join waits for the whole rebalance timeout (which
    kafka-python takes from max_poll_interval_ms) on tansu, so dev keeps it to a few seconds;
    the connector never blocks poll() for longer (it pauses partitions while backing off)."""
    max_poll = int(os.environ.get("KAFKA_MAX_POLL_INTERVAL_MS", "5000"))
    return {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": max_poll,
        "session_timeout_ms": max(max_poll, 6000),
        "heartbeat_interval_ms": 1000,
        "max_poll_records": 50,
    }


def producer(servers: str):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0, retries=5)


def ensure_topics(servers: str, topics: Iterable[str], partitions: int = 3) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="chatfaas-dev-admin")
    try:
        existing = set(admin.list_topics())
        missing = sorted(set(topics) - existing)
        if missing:
            admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        return missing
    finally:
        admin.close()


def run_while_polling(consumer, fn, *args, poll_ms: int = 200):
    """Run ``fn(*args)`` in a thread while this thread keeps polling a paused consumer.

    kafka-python evicts a member that does not call poll() within max_poll_interval_ms, and dev
    keeps that interval short (see :func:`consumer_settings`); a slow function call or a long
    retry backoff must not cost the group membership. Pausing every assigned partition makes
    those polls return nothing, so record order is unchanged. Records from partitions assigned
    by a rebalance meanwhile are rewound, so they are fetched again later.
    """
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    consumer.pause(*consumer.assignment())
    worker.start()
    while worker.is_alive():
        for partition, records in consumer.poll(timeout_ms=poll_ms).items():
            consumer.seek(partition, records[0].offset)
            consumer.pause(partition)
        worker.join(timeout=0.01)
    consumer.resume(*consumer.paused())
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def commit(consumer, partition, offset: int) -> bool:
    """Commit ``offset + 1``; False when a rebalance took the partition away meanwhile."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    try:
        consumer.commit({partition: OffsetAndMetadata(offset + 1, "", -1)})
        return True
    except KafkaError as exc:
        log.warning("commit of %s@%d failed (%s); the record will be delivered again", partition, offset, exc)
        return False
