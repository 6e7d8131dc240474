"""The Kafka connector: the event source for OpenFaaS CE (Knative uses ``KafkaSource`` instead).

Subscriptions come from stack.yml's ``topic`` annotations (comma-separated). Each function gets
its own consumer group (``connector-<function>``) and consumer thread.

Delivery is concurrent with per-key order (Confluent parallel-consumer's "key" ordering): up to
``CONNECTOR_CONCURRENCY`` records (default 8; per function, the annotation
``com.chatfaas.connector.concurrency``) are delivered at once on a pool of threads. Records with
the same Kafka key (the conversation id) are delivered one after the other in offset order; a
record without a key is ordered with its partition. Different keys run in parallel, within and
across partitions, so a function that batches concurrent requests sees them together.

The consumer thread alone touches the KafkaConsumer: it keeps polling (so the group membership
outlives slow calls and long backoffs), hands records to the pool and commits. Per partition it
commits the lowest offset not finished yet, never past a record still queued or running, so a
crash loses nothing accepted (records after it may be delivered again: at-least-once).
Back-pressure: once ``CONNECTOR_MAX_PENDING`` records (default 4x concurrency) are fetched but
unfinished, fetching pauses (``KafkaConsumer.pause``) while polls go on, until records finish.

Rebalance: before it, each partition's finished prefix is committed. After it, a partition
still assigned keeps its queued and running records (kafka-python keeps its fetch position); for
a partition now owned by another member, queued records are dropped and running ones abandoned
(they finish, but do not count): the new owner delivers them again from the committed offset.
Waiting for them instead could outlast ``max_poll_interval_ms`` and cost the membership anyway.

Stop (SIGTERM): nothing new starts, running deliveries get ``CONNECTOR_STOP_GRACE`` seconds
(default 5; a backoff wait ends at once), what finished is committed, and the rest is delivered
again after the restart.

Each record is POSTed to ``<gateway>/function/<name>`` as a CloudEvent in HTTP binary mode: the
record's ``ce_*`` Kafka headers become ``ce-*`` HTTP headers (a record without them gets the
attributes KafkaSource would give it), plus ``X-Topic``, ``X-Kafka-Key``, ``X-Kafka-Partition``,
``X-Kafka-Offset``; the body is the record value.

Outcomes: 2xx → done. 429, 5xx, timeouts and connection errors → retry with exponential
backoff (honouring ``Retry-After``); after ``CONNECTOR_MAX_ATTEMPTS`` tries (a function that cannot
be reached at all is waited for, without counting) the record goes to
``<topic>.dlq`` with ``x-dlq-*`` headers, then it is done. Any other 4xx is a bad event:
dead-lettered at once, so it never blocks its key.

Run: ``python -m shared.dev.connector --stack stack.yml --gateway http://127.0.0.1:8080``
(env ``KAFKA_BOOTSTRAP_SERVERS``, ``GATEWAY_URL``, ``CONNECTOR_MAX_ATTEMPTS``,
``CONNECTOR_BACKOFF_BASE``, ``CONNECTOR_BACKOFF_MAX``, ``CONNECTOR_TIMEOUT``,
``CONNECTOR_CONCURRENCY``, ``CONNECTOR_MAX_PENDING``, ``CONNECTOR_STOP_GRACE``).
"""
from __future__ import annotations

import argparse
import email.utils
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Mapping, Sequence

import requests

from shared.dev import kafka_io
from shared.dev.keyed_pool import Job, KeyedPool, ordering_key
from shared.dev.logs import setup_logging
from shared.stack import load_stack

log = logging.getLogger("shared.dev.connector")

MAX_RETRY_AFTER = 300.0
CONCURRENCY_ANNOTATION = "com.chatfaas.connector.concurrency"
DEFAULT_CONCURRENCY = 8


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 120.0

    @classmethod
    def from_env(cls) -> "DeliveryPolicy":
        return cls(
            max_attempts=max(1, int(os.environ.get("CONNECTOR_MAX_ATTEMPTS", "5"))),
            backoff_base=float(os.environ.get("CONNECTOR_BACKOFF_BASE", "0.5")),
            backoff_max=float(os.environ.get("CONNECTOR_BACKOFF_MAX", "30")),
            timeout=float(os.environ.get("CONNECTOR_TIMEOUT", "120")),
        )

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before try ``attempt + 1``: base·2^(attempt-1) capped at max, or longer if the
        function asked for it with Retry-After."""
        backoff = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        if retry_after is not None:
            return max(backoff, min(retry_after, MAX_RETRY_AFTER))
        return backoff


@dataclass(frozen=True)
class Parallelism:
    """How many records of one function are delivered at once, and how many may wait."""

    concurrency: int = DEFAULT_CONCURRENCY
    max_pending: int | None = None  # fetched but unfinished, before fetching pauses; 4x concurrency
    stop_grace: float = 5.0

    def __post_init__(self) -> None:
        if self.max_pending is None:
            object.__setattr__(self, "max_pending", 4 * self.concurrency)

    @classmethod
    def from_env(cls, annotations: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None) -> "Parallelism":
        """The function's ``com.chatfaas.connector.concurrency`` annotation, else
        ``CONNECTOR_CONCURRENCY``; ``CONNECTOR_MAX_PENDING`` defaults to 4x that."""
        env = os.environ if environ is None else environ
        raw = (annotations or {}).get(CONCURRENCY_ANNOTATION) or env.get("CONNECTOR_CONCURRENCY")
        concurrency = _positive_int(raw, DEFAULT_CONCURRENCY, CONCURRENCY_ANNOTATION)
        max_pending = _positive_int(env.get("CONNECTOR_MAX_PENDING"), 4 * concurrency, "CONNECTOR_MAX_PENDING")
        return cls(concurrency=concurrency, max_pending=max(max_pending, concurrency),
                   stop_grace=float(env.get("CONNECTOR_STOP_GRACE", "5")))


def _positive_int(raw: str | None, default: int, what: str) -> int:
    if raw is None or not str(raw).strip():
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class Attempt:
    """One try's result: ``status`` is None when no HTTP answer came back."""

    status: int | None
    reason: str
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def unreachable(self) -> bool:
        """The function was not reached at all (down or restarting), as opposed to failing."""
        return (self.status is None and self.reason.startswith("connection_error")) or self.status == 502

    @property
    def retryable(self) -> bool:
        # A 4xx that carries Retry-After (429, or 409 "in_progress" from the idempotency layer
        # while a duplicate delivery is still running) asks to be tried again, not dead-lettered.
        return (self.status is None or self.status == 429 or self.status >= 500
                or self.retry_after is not None)


@dataclass(frozen=True)
class Verdict:
    delivered: bool
    attempts: int
    last: Attempt


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", errors="replace") if value is not None else ""


def event_headers(record) -> dict[str, str]:
    """HTTP headers (CloudEvents binary mode + OpenFaaS connector headers) for a Kafka record."""
    headers: dict[str, str] = {}
    content_type = "application/json"
    for key, value in record.headers or ():
        lowered = key.lower()
        if lowered.startswith("ce_"):
            headers["ce-" + lowered[3:]] = _text(value)
        elif lowered in ("content-type", "content_type"):
            content_type = _text(value)
    # What KafkaSource sends for a record that is not a CloudEvent.
    headers.setdefault("ce-specversion", "1.0")
    headers.setdefault("ce-id", f"{record.topic}-{record.partition}-{record.offset}")
    headers.setdefault("ce-source", f"/apis/v1/namespaces/default/kafkasources/connector#{record.topic}")
    headers.setdefault("ce-type", "dev.knative.kafka.event")
    if "ce-time" not in headers and record.timestamp and record.timestamp > 0:
        headers["ce-time"] = datetime.fromtimestamp(record.timestamp / 1000, timezone.utc).isoformat()
    headers["Content-Type"] = content_type
    headers["X-Topic"] = record.topic
    headers["X-Kafka-Partition"] = str(record.partition)
    headers["X-Kafka-Offset"] = str(record.offset)
    if record.key is not None:
        headers["X-Kafka-Key"] = _text(record.key)
    headers["X-Connector"] = "chatfaas-kafka-connector"
    return headers


class FunctionConsumer(threading.Thread):
    """Delivers the records of one function's topics to that function: concurrently, one at a
    time per key, committing per partition only what is finished."""

    def __init__(self, function: str, topics: Sequence[str], *, gateway: str, servers: str,
                 policy: DeliveryPolicy, stopping: threading.Event, producer_factory: Callable | None = None,
                 parallelism: Parallelism | None = None):
        super().__init__(name=f"connector-{function}", daemon=True)
        self.function = function
        self.topics = list(topics)
        self.url = f"{gateway.rstrip('/')}/function/{function}"
        self.servers = servers
        self.policy = policy
        self.parallelism = parallelism or Parallelism.from_env()
        self.stopping = stopping
        # CONNECTOR_GROUP_PREFIX keeps two stacks on one broker (tests, several dev stacks) from
        # sharing consumer groups and so each other's records.
        self.group_id = f"{os.environ.get('CONNECTOR_GROUP_PREFIX', 'connector')}-{function}"
        self.tracker = kafka_io.OffsetTracker()
        self.paused = False  # fetching paused for back-pressure (read by tests and logs)
        self._sessions = threading.local()  # requests.Session is not meant to be shared by threads
        self._producer = None
        self._producer_lock = threading.Lock()
        self._producer_factory = producer_factory or (lambda: kafka_io.producer(servers))
        self._pool: KeyedPool | None = None
        self._failure: BaseException | None = None

    # -- one try / all tries -------------------------------------------------------------
    @property
    def http(self):
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
        return session

    def attempt(self, record) -> Attempt:
        try:
            response = self.http.post(self.url, data=record.value or b"", headers=event_headers(record),
                                      timeout=self.policy.timeout)
        except requests.Timeout:
            return Attempt(None, "timeout")
        except requests.RequestException as exc:
            return Attempt(None, f"connection_error: {exc.__class__.__name__}")
        reason = f"http_{response.status_code}"
        if not 200 <= response.status_code < 300:
            reason += ": " + response.text[:500]
        return Attempt(response.status_code, reason, parse_retry_after(response.headers.get("Retry-After")))

    def deliver(self, record) -> Verdict | None:
        """Try until delivered, dead (4xx) or out of attempts; None if stopped meanwhile.

        Tries that never reached the function (connection refused, the gateway's 502) do not
        count towards ``max_attempts``: the record is not at fault, and dead-lettering it while a
        function is down or restarting would lose accepted work. They are retried, with the
        backoff capped at ``backoff_max``, until the function is back."""
        attempt_no = 0
        counted = 0
        while True:
            attempt_no += 1
            last = self.attempt(record)
            if last.ok:
                return Verdict(True, attempt_no, last)
            if not last.unreachable:
                counted += 1
            if not last.retryable or counted >= self.policy.max_attempts:
                return Verdict(False, attempt_no, last)
            delay = self.policy.delay(attempt_no, last.retry_after)
            log.info("%s: %s@%d/%d try %d: %s; retrying in %.2fs", self.function, record.topic,
                     record.partition, record.offset, attempt_no, last.reason[:120], delay)
            if self.stopping.wait(delay):
                return None

    def dead_letter(self, record, verdict: Verdict) -> None:
        with self._producer_lock:
            if self._producer is None:
                self._producer = self._producer_factory()
        headers = list(record.headers or ()) + [
            ("x-dlq-reason", verdict.last.reason.encode()),
            ("x-dlq-status", str(verdict.last.status or "").encode()),
            ("x-dlq-attempts", str(verdict.attempts).encode()),
            ("x-dlq-function", self.function.encode()),
            ("x-dlq-original-topic", record.topic.encode()),
            ("x-dlq-original-partition", str(record.partition).encode()),
            ("x-dlq-original-offset", str(record.offset).encode()),
        ]
        self._producer.send(record.topic + kafka_io.DLQ_SUFFIX, value=record.value, key=record.key,
                            headers=headers).get(timeout=30)
        log.warning("%s: %s@%d/%d dead-lettered after %d tries: %s", self.function, record.topic,
                    record.partition, record.offset, verdict.attempts, verdict.last.reason[:200])

    def process(self, record) -> bool:
        """Deliver or dead-letter one record; True when it is finished (its offset may be committed)."""
        verdict = self.deliver(record)
        if verdict is None:
            return False
        if not verdict.delivered:
            self.dead_letter(record, verdict)
        return True

    # -- on a pool thread ----------------------------------------------------------------
    def _run_job(self, job: Job) -> None:
        if self.stopping.is_set() or job.progress.revoked or self._failure is not None:
            return  # abandoned: left unfinished, so no commit passes it
        try:
            finished = self.process(job.record)
        except Exception as exc:  # e.g. the DLQ cannot be written: stop loudly, commit nothing past it
            log.exception("%s: %s@%d/%d could not be finished", self.function, job.record.topic,
                          job.record.partition, job.record.offset)
            self._failure = exc
            return
        if finished:
            self.tracker.finish(job.progress, job.record.offset)

    # -- on the consumer thread ----------------------------------------------------------
    def dispatch(self, partition, record) -> None:
        progress = self.tracker.add(partition, record.offset)
        if progress is not None:
            self._pool.submit(Job(record, progress, ordering_key(record)))

    def commit(self, consumer, partitions=None) -> None:
        """Commit each partition's finished prefix (only where it moved)."""
        positions = self.tracker.to_commit(partitions)
        if positions and kafka_io.commit_positions(consumer, positions):
            self.tracker.committed(positions)

    def throttle(self, consumer) -> int:
        """Pause fetching while ``max_pending`` records are unfinished (polls go on, keeping the
        membership), resume below it; returns how many more records may be fetched now."""
        unfinished = self.tracker.unfinished
        room = self.parallelism.max_pending - unfinished
        if room <= 0:
            unpaused = consumer.assignment() - consumer.paused()  # e.g. assigned by a rebalance
            if unpaused:
                consumer.pause(*unpaused)
            if not self.paused:
                log.info("%s: %d records unfinished; fetching paused", self.function, unfinished)
            self.paused = True
        elif self.paused:
            consumer.resume(*consumer.paused())
            self.paused = False
        return max(1, room)

    def drain(self, consumer) -> None:
        """On stop: let running deliveries finish for ``stop_grace`` seconds (queued ones are
        skipped), still polling so the final commit is accepted; the rest is abandoned."""
        consumer.pause(*consumer.assignment())
        deadline = time.monotonic() + self.parallelism.stop_grace
        while not self._pool.idle and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)  # records of partitions assigned meanwhile: never committed
            self.commit(consumer)
        self.commit(consumer)
        if not self._pool.idle:
            log.warning("%s: stopping with %d deliveries still running; they will be delivered again",
                        self.function, self._pool.running)

    def _consumer(self):
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        owner = self

        class Rebalance(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                # Before the group rejoins: the last moment to commit what finished since the
                # loop's last commit. Not waited for (see commit_positions_soon); a partition kept
                # is committed again by the loop.
                kafka_io.commit_positions_soon(consumer, owner.tracker.to_commit(revoked))

            def on_partitions_assigned(self, assigned):
                # kafka-python keeps the fetch position of a partition that stays assigned, so
                # its queued and running records are kept too; only lost partitions are dropped.
                lost = owner.tracker.keep_only(consumer.assignment())
                log.info("%s: assigned %s%s", owner.function, sorted((p.topic, p.partition) for p in assigned),
                         f"; abandoned the unfinished records of {sorted(lost)}" if lost else "")

        consumer = KafkaConsumer(bootstrap_servers=self.servers, group_id=self.group_id,
                                 client_id=self.group_id, **kafka_io.consumer_settings())
        consumer.subscribe(self.topics, listener=Rebalance())
        return consumer

    def run(self) -> None:
        consumer = self._consumer()
        self._pool = KeyedPool(self.parallelism.concurrency, self._run_job, self.name)
        log.info("%s: consuming %s as %s, %d at a time", self.function, ",".join(self.topics),
                 self.group_id, self.parallelism.concurrency)
        try:
            while not self.stopping.is_set():
                if self._failure is not None:
                    self.commit(consumer)
                    raise RuntimeError(f"{self.function}: a record could not be finished") from self._failure
                room = self.throttle(consumer)
                # Short polls while records are out, so their commits follow them closely.
                wait_ms = 100 if self.tracker.unfinished else 500
                for partition, records in consumer.poll(timeout_ms=wait_ms, max_records=room).items():
                    for record in records:
                        self.dispatch(partition, record)
                self.commit(consumer)
            self.drain(consumer)
        except Exception:
            log.exception("%s: consumer stopped", self.function)
            raise
        finally:
            self._pool.close()
            consumer.close(autocommit=False)
            if self._producer is not None:
                self._producer.close(timeout=5)


class Connector:
    def __init__(self, subscriptions: dict[str, list[str]], *, gateway: str, servers: str,
                 policy: DeliveryPolicy | None = None, parallelism: Mapping[str, Parallelism] | None = None):
        self.stopping = threading.Event()
        policy = policy or DeliveryPolicy.from_env()
        parallelism = parallelism or {}
        self.consumers = [
            FunctionConsumer(function, topics, gateway=gateway, servers=servers, policy=policy,
                             stopping=self.stopping, parallelism=parallelism.get(function))
            for function, topics in subscriptions.items()
        ]

    def run(self) -> None:
        for consumer in self.consumers:
            consumer.start()
        while not self.stopping.is_set():
            dead = [c.function for c in self.consumers if not c.is_alive()]
            if dead:
                # Exit rather than limp on: a function whose events silently stop is worse than a
                # connector that is visibly down (scripts/dev status) and restarted.
                self.stopping.set()
                raise SystemExit(f"connector consumer(s) stopped: {', '.join(dead)}")
            self.stopping.wait(1.0)
        for consumer in self.consumers:
            consumer.join(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Kafka → function connector (CloudEvents over HTTP)")
    parser.add_argument("--stack", default=None, help="stack file (default: $STACK_FILE or stack.yml)")
    parser.add_argument("--gateway", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--bootstrap-servers", default=None)
    args = parser.parse_args(argv)
    setup_logging()
    servers = kafka_io.bootstrap_servers(args.bootstrap_servers)
    if not servers:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set")
    stack = load_stack(args.stack)
    subscriptions = stack.subscriptions()
    if not subscriptions:
        log.info("no function has a topic annotation; nothing to consume")
    parallelism = {name: Parallelism.from_env(stack.get(name).annotations) for name in subscriptions}
    connector = Connector(subscriptions, gateway=args.gateway, servers=servers, parallelism=parallelism)
    signal.signal(signal.SIGTERM, lambda *_: connector.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: connector.stopping.set())
    connector.run()


if __name__ == "__main__":
    main()
