"""Key-ordered parallel execution for the connector: jobs with different keys run at once,
jobs with the same key run one at a time, in the order they were submitted."""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from shared.dev import kafka_io

log = logging.getLogger("shared.dev.connector")


def ordering_key(record) -> tuple:
    """Records with equal ordering keys are delivered one at a time, in offset order. A keyed
    record is ordered with its key (a conversation) in its topic; a record without a key with
    its partition, the order Kafka itself promises it."""
    if record.key is not None:
        return ("key", record.topic, record.key)
    return ("partition", record.topic, record.partition)


@dataclass(eq=False)
class Job:
    record: Any
    progress: kafka_io.PartitionProgress
    key: tuple


class KeyedPool:
    """Worker threads that run jobs in parallel, except that jobs with the same key run one at
    a time, in the order they were submitted (a job waits behind the queued or running ones).

    Daemon threads rather than a ThreadPoolExecutor: a call still running when the connector
    stops must not hold the process open (its record is not committed; it comes again)."""

    def __init__(self, size: int, run: Callable[[Job], None], name: str):
        self._run = run
        self._ready: queue.SimpleQueue = queue.SimpleQueue()  # jobs whose key is free
        self._waiting: dict[tuple, deque] = {}  # key → jobs behind the one ready or running
        self._lock = threading.Lock()
        self._running = 0
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
                         for n in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            behind = self._waiting.get(job.key)
            if behind is not None:
                behind.append(job)
                return
            self._waiting[job.key] = deque()
        self._ready.put(job)

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    @property
    def idle(self) -> bool:
        """No job queued or running."""
        with self._lock:
            return not self._waiting

    def close(self) -> None:
        for _ in self._threads:
            self._ready.put(None)

    def _work(self) -> None:
        while (job := self._ready.get()) is not None:
            with self._lock:
                self._running += 1
            try:
                self._run(job)
            except BaseException:  # the runner reports its own errors; the key must not stay stuck
                log.exception("connector job for %s failed", job.key)
            finally:
                with self._lock:
                    self._running -= 1
                    behind = self._waiting[job.key]
                    following = behind.popleft() if behind else None
                    if following is None:
                        del self._waiting[job.key]
            if following is not None:
                self._ready.put(following)
