"""kafka-python settings and helpers shared by the gateway's queue, the queue worker and the connector:
topic creation, commits, and the commit bookkeeping for records that finish out of order."""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Iterable

from shared.events.kafka import consumer_config, producer_config
from shared.events.kafka import ensure_topics as shared_ensure_topics

log = logging.getLogger("shared.dev.kafka")

ASYNC_TOPIC = "gateway.async"
DLQ_SUFFIX = ".dlq"
DEFAULT_PARTITIONS = 8


def topic_partitions() -> int:
    """Partitions of the topics the dev stack creates (``KAFKA_TOPIC_PARTITIONS``, default 8).

    Several partitions let consumers spread a topic's records over members and, in the
    connector, give records without a key (ordered per partition) some parallelism too."""
    return max(1, int(os.environ.get("KAFKA_TOPIC_PARTITIONS", str(DEFAULT_PARTITIONS))))


def bootstrap_servers(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None


def consumer_settings() -> dict:
    """Consumer kwargs (less servers and group) from :func:`shared.events.kafka.consumer_config`.

    A group join waits for the whole rebalance timeout (which kafka-python takes from
    max_poll_interval_ms) on tansu, so it stays a few seconds in dev; the queue worker and the
    connector never block poll() for longer (slow work runs on other threads while the consumer
    thread keeps polling, with partitions paused when it must wait)."""
    config = consumer_config("unused", None)
    for key in ("bootstrap_servers", "group_id", "client_id"):
        config.pop(key, None)
    return config


def producer(servers: str):
    from kafka import KafkaProducer

    return KafkaProducer(**producer_config(servers, linger_ms=0))


def ensure_topics(servers: str, topics: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet (with :func:`topic_partitions` partitions unless
    told); returns the ones created. Existing topics keep their partition count."""
    return shared_ensure_topics(servers, topics, partitions=partitions or topic_partitions())


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


def commit_positions(consumer, positions: dict) -> bool:
    """Commit ``{TopicPartition: next offset to consume}``; False when it failed (a rebalance took
    a partition away meanwhile): those records are delivered again, which at-least-once allows."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    if not positions:
        return True
    try:
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in positions.items()})
        return True
    except KafkaError as exc:
        log.warning("commit of %s failed (%s); those records will be delivered again", positions, exc)
        return False


def commit_positions_soon(consumer, positions: dict) -> None:
    """Send a commit of ``{TopicPartition: next offset}`` without waiting for it: the form a
    rebalance listener needs, as kafka-python 3 runs listeners on its IO thread, where a blocking
    commit raises. A commit that fails only means those records are delivered again."""
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    if not positions:
        return
    try:
        consumer.commit_async({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in positions.items()})
    except KafkaError as exc:
        log.warning("commit of %s failed (%s); those records will be delivered again", positions, exc)


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


class PartitionProgress:
    """Which offset of one partition may be committed while its records finish out of order.

    Records are added in fetch order (rising offsets, gaps allowed: compaction, transaction
    markers); the commit position is the lowest offset not finished yet, or the one after the
    last record when all are done, so a commit never passes an unfinished record."""

    def __init__(self) -> None:
        self._offsets: deque[int] = deque()
        self._finished: set[int] = set()
        self._after_last: int | None = None
        self.committed: int | None = None  # the last position committed
        self.revoked = False  # taken away by a rebalance: its results no longer count

    def add(self, offset: int) -> bool:
        """Track a fetched record; False for one tracked already (fetched again after a reset of
        the fetch position: it is queued, running or done, and must not run twice at once)."""
        if self._after_last is not None and offset < self._after_last:
            return False
        self._offsets.append(offset)
        self._after_last = offset + 1
        return True

    def finish(self, offset: int) -> None:
        self._finished.add(offset)

    @property
    def unfinished(self) -> int:
        return len(self._offsets) - len(self._finished)

    def position(self) -> int | None:
        """The offset to commit (the next record to consume); None before the first record."""
        while self._offsets and self._offsets[0] in self._finished:
            self._finished.discard(self._offsets.popleft())
        return self._offsets[0] if self._offsets else self._after_last


class OffsetTracker:
    """:class:`PartitionProgress` for each assigned partition, safe to share between the thread
    that polls and commits and the threads that finish records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict = {}

    def add(self, partition, offset: int) -> PartitionProgress | None:
        """Track a fetched record; the returned progress is what :meth:`finish` takes (None: the
        record is tracked already)."""
        with self._lock:
            progress = self._partitions.get(partition)
            if progress is None:
                progress = self._partitions[partition] = PartitionProgress()
            return progress if progress.add(offset) else None

    def finish(self, progress: PartitionProgress, offset: int) -> None:
        with self._lock:
            progress.finish(offset)

    @property
    def unfinished(self) -> int:
        with self._lock:
            return sum(p.unfinished for p in self._partitions.values())

    def to_commit(self, partitions: Iterable | None = None) -> dict:
        """``{partition: position}`` for the partitions (default: all) whose position moved."""
        with self._lock:
            wanted = self._partitions if partitions is None else [p for p in partitions if p in self._partitions]
            moves = {}
            for partition in wanted:
                progress = self._partitions[partition]
                position = progress.position()
                if position is not None and position != progress.committed:
                    moves[partition] = position
            return moves

    def committed(self, positions: dict) -> None:
        with self._lock:
            for partition, position in positions.items():
                if partition in self._partitions:
                    self._partitions[partition].committed = position

    def keep_only(self, assigned: Iterable) -> list:
        """After a rebalance: forget the partitions no longer assigned (their unfinished records
        are abandoned to the new owner); returns those. Kept partitions keep their records, as
        the consumer keeps their fetch positions."""
        assigned = set(assigned)
        with self._lock:
            lost = [partition for partition in self._partitions if partition not in assigned]
            for partition in lost:
                self._partitions.pop(partition).revoked = True
            return lost
