"""The Kafka connector: the event source for OpenFaaS CE (Knative uses ``KafkaSource`` instead).

Subscriptions come from stack.yml's ``topic`` annotations (comma-separated). Each function gets
its own consumer group (``connector-<function>``) and thread; records are delivered one at a
time, so the order inside a partition is kept.

Each record is POSTed to ``<gateway>/function/<name>`` as a CloudEvent in HTTP binary mode: the
record's ``ce_*`` Kafka headers become ``ce-*`` HTTP headers (a record without them gets the
attributes KafkaSource would give it), plus ``X-Topic``, ``X-Kafka-Key``, ``X-Kafka-Partition``,
``X-Kafka-Offset``; the body is the record value.

Outcomes: 2xx → commit. 429, 5xx, timeouts and connection errors → retry with exponential
backoff (honouring ``Retry-After``); after ``CONNECTOR_MAX_ATTEMPTS`` tries (a function that cannot
be reached at all is waited for, without counting) the record goes to
``<topic>.dlq`` with ``x-dlq-*`` headers, then the offset is committed. Any other 4xx is a bad
event: dead-lettered at once, so it never blocks its partition.

Run: ``python -m shared.dev.connector --stack stack.yml --gateway http://127.0.0.1:8080``
(env ``KAFKA_BOOTSTRAP_SERVERS``, ``GATEWAY_URL``, ``CONNECTOR_MAX_ATTEMPTS``,
``CONNECTOR_BACKOFF_BASE``, ``CONNECTOR_BACKOFF_MAX``, ``CONNECTOR_TIMEOUT``).
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
from typing import Callable, Sequence

import requests

from shared.dev import kafka_io
from shared.dev.logs import setup_logging
from shared.stack import load_stack

log = logging.getLogger("shared.dev.connector")

MAX_RETRY_AFTER = 300.0


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
    """Delivers the records of one function's topics, in order, to that function."""

    def __init__(self, function: str, topics: Sequence[str], *, gateway: str, servers: str,
                 policy: DeliveryPolicy, stopping: threading.Event, producer_factory: Callable | None = None):
        super().__init__(name=f"connector-{function}", daemon=True)
        self.function = function
        self.topics = list(topics)
        self.url = f"{gateway.rstrip('/')}/function/{function}"
        self.servers = servers
        self.policy = policy
        self.stopping = stopping
        self.group_id = f"connector-{function}"
        self.http = requests.Session()
        self._producer = None
        self._producer_factory = producer_factory or (lambda: kafka_io.producer(servers))

    # -- one try / all tries -------------------------------------------------------------
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
        """Deliver or dead-letter one record; True when its offset may be committed."""
        verdict = self.deliver(record)
        if verdict is None:
            return False
        if not verdict.delivered:
            self.dead_letter(record, verdict)
        return True

    # -- the consumer loop ---------------------------------------------------------------
    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(*self.topics, bootstrap_servers=self.servers, group_id=self.group_id,
                                 client_id=self.group_id, **kafka_io.consumer_settings())
        log.info("%s: consuming %s as %s", self.function, ",".join(self.topics), self.group_id)
        try:
            while not self.stopping.is_set():
                for partition, records in consumer.poll(timeout_ms=500).items():
                    for record in records:
                        if self.stopping.is_set():
                            return
                        if not kafka_io.run_while_polling(consumer, self.process, record):
                            return
                        kafka_io.commit(consumer, partition, record.offset)
        except Exception:
            log.exception("%s: consumer stopped", self.function)
            raise
        finally:
            consumer.close()
            if self._producer is not None:
                self._producer.close(timeout=5)


class Connector:
    def __init__(self, subscriptions: dict[str, list[str]], *, gateway: str, servers: str,
                 policy: DeliveryPolicy | None = None):
        self.stopping = threading.Event()
        self.consumers = [
            FunctionConsumer(function, topics, gateway=gateway, servers=servers,
                             policy=policy or DeliveryPolicy.from_env(), stopping=self.stopping)
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
    subscriptions = load_stack(args.stack).subscriptions()
    if not subscriptions:
        log.info("no function has a topic annotation; nothing to consume")
    connector = Connector(subscriptions, gateway=args.gateway, servers=servers)
    signal.signal(signal.SIGTERM, lambda *_: connector.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: connector.stopping.set())
    connector.run()


if __name__ == "__main__":
    main()
