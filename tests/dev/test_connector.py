"""The Kafka connector, through the real stack: CloudEvents over HTTP, commit after 2xx, retries
with backoff, dead letters."""
from __future__ import annotations

import base64
import json
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shared.dev.connector import DeliveryPolicy, parse_retry_after
from tests.dev.conftest import wait_until
from tests.dev.fixtures import journal


@pytest.fixture(scope="module")
def producer(dev_stack):
    client = KafkaProducer(bootstrap_servers=dev_stack.kafka, acks="all")
    yield client
    client.close()


def send(producer, topic: str, value: dict, key: str, ce_id: str, **ce) -> None:
    headers = [("ce_id", ce_id.encode()), ("ce_specversion", b"1.0"),
               ("ce_source", b"/chatfaas/tests"), ("ce_type", b"test.thing.happened")]
    headers += [(f"ce_{name}", value_.encode()) for name, value_ in ce.items()]
    producer.send(topic, json.dumps(value).encode(), key=key.encode(), headers=headers).get(timeout=10)


def read_topic(servers: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    """Every record of ``topic`` (from the beginning), once at least ``expect`` have arrived."""
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, consumer_timeout_ms=500)
    try:
        def fetch():
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not partitions:
                return None
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            records = list(consumer)
            return records if len(records) >= expect else None

        return wait_until(fetch, timeout=timeout, interval=0.5, what=f"{expect} record(s) on {topic}")
    finally:
        consumer.close()


def events_for(dev_stack, name: str, ce_ids: set[str]) -> list[dict]:
    return [e for e in journal.read(dev_stack.data_dir, name) if e["headers"].get("ce-id") in ce_ids]


def test_records_reach_the_function_as_binary_cloudevents_in_partition_order(dev_stack, producer, unique_name):
    topic = dev_stack.topic("echo")
    ids = [unique_name("evt") for _ in range(5)]
    key = unique_name("conversation")
    for index, ce_id in enumerate(ids):
        send(producer, topic, {"n": index}, key, ce_id, subject=f"item-{index}", time="2026-01-02T03:04:05Z")

    delivered = wait_until(lambda: (e := events_for(dev_stack, "echo", set(ids))) and len(e) == 5 and e,
                           what="5 events delivered to echo")

    assert [json.loads(base64.b64decode(e["body"]))["n"] for e in delivered] == [0, 1, 2, 3, 4]
    first = delivered[0]["headers"]
    assert first["ce-id"] == ids[0]
    assert first["ce-specversion"] == "1.0"
    assert first["ce-source"] == "/chatfaas/tests"
    assert first["ce-type"] == "test.thing.happened"
    assert first["ce-subject"] == "item-0"
    assert first["ce-time"] == "2026-01-02T03:04:05Z"
    assert first["content-type"] == "application/json"
    assert first["x-topic"] == topic
    assert first["x-kafka-key"] == key
    offsets = [int(e["headers"]["x-kafka-offset"]) for e in delivered]
    assert offsets == sorted(offsets)
    assert len({e["headers"]["x-kafka-partition"] for e in delivered}) == 1


def test_offsets_are_committed_once_delivered(dev_stack, producer, unique_name):
    topic = dev_stack.topic("echo")
    ce_id = unique_name("evt")
    send(producer, topic, {"commit": True}, unique_name("k"), ce_id)
    event = wait_until(lambda: events_for(dev_stack, "echo", {ce_id}), what="event delivered")[0]["headers"]
    partition = TopicPartition(topic, int(event["x-kafka-partition"]))

    # committed() only fetches the group's offsets; it does not join the group.
    group = KafkaConsumer(bootstrap_servers=dev_stack.kafka, group_id="connector-echo", enable_auto_commit=False)
    try:
        wait_until(lambda: (group.committed(partition) or -1) > int(event["x-kafka-offset"]),
                   what="offset committed past the delivered record")
    finally:
        group.close()


def test_a_record_without_cloudevent_headers_gets_kafkasource_style_attributes(dev_stack, producer, unique_name):
    topic = dev_stack.topic("echo")
    marker = unique_name("plain")
    producer.send(topic, json.dumps({"marker": marker}).encode()).get(timeout=10)

    def delivered():
        for entry in journal.read(dev_stack.data_dir, "echo"):
            if marker.encode() in base64.b64decode(entry["body"]):
                return entry["headers"]
        return None

    headers = wait_until(delivered, what="plain record delivered")
    assert headers["ce-id"] == f"{topic}-{headers['x-kafka-partition']}-{headers['x-kafka-offset']}"
    assert headers["ce-type"] == "dev.knative.kafka.event"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-source"].endswith(f"#{topic}")
    assert "ce-time" in headers and "x-kafka-key" not in headers


def test_a_function_that_fails_twice_gets_the_event_on_the_third_try(dev_stack, producer, unique_name):
    topic = dev_stack.topic("flaky")
    ce_id = unique_name("evt")
    send(producer, topic, {"x": 1}, unique_name("k"), ce_id)

    wait_until(lambda: events_for(dev_stack, "flaky", {ce_id}), what="flaky event delivered")
    time.sleep(1.0)  # no further (duplicate) delivery after the success
    assert len(events_for(dev_stack, "flaky-attempts", {ce_id})) == 3
    assert len(events_for(dev_stack, "flaky", {ce_id})) == 1


def test_a_function_that_stays_down_gets_the_event_dead_lettered_after_max_attempts(dev_stack, producer):
    topic = dev_stack.topic("flaky")
    send(producer, topic, {"doomed": True}, "k-down", "always-down")

    [dead] = read_topic(dev_stack.kafka, topic + ".dlq", expect=1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["x-dlq-status"] == "503"
    assert headers["x-dlq-attempts"] == "3"  # CONNECTOR_MAX_ATTEMPTS in the test stack
    assert headers["x-dlq-reason"].startswith("http_503")
    assert headers["x-dlq-function"] == "flaky"
    assert headers["x-dlq-original-topic"] == topic
    assert headers["ce_id"] == "always-down"
    assert json.loads(dead.value) == {"doomed": True}
    assert len(events_for(dev_stack, "flaky-attempts", {"always-down"})) == 3


def test_a_bad_event_is_dead_lettered_at_once_and_does_not_block_its_partition(dev_stack, producer, unique_name):
    topic = dev_stack.topic("picky")
    key = unique_name("same-partition")
    bad_id, good_id = unique_name("bad"), unique_name("good")
    send(producer, topic, {"bad": True}, key, bad_id)
    send(producer, topic, {"bad": False}, key, good_id)

    wait_until(lambda: events_for(dev_stack, "picky", {good_id}), what="the event after the bad one delivered")
    [dead] = read_topic(dev_stack.kafka, topic + ".dlq", expect=1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["ce_id"] == bad_id
    assert headers["x-dlq-status"] == "400"
    assert headers["x-dlq-attempts"] == "1"
    assert "this event is malformed" in headers["x-dlq-reason"]


@pytest.mark.parametrize(("attempt", "retry_after", "expected"), [
    (1, None, 0.5), (2, None, 1.0), (4, None, 4.0), (10, None, 30.0),  # exponential, capped
    (1, 7.0, 7.0),      # the function asked for longer: honoured
    (3, 0.0, 2.0),      # Retry-After shorter than the backoff: the backoff wins
    (1, 9999.0, 300.0),  # an absurd Retry-After is bounded
])
def test_backoff_is_exponential_capped_and_honours_retry_after(attempt, retry_after, expected):
    assert DeliveryPolicy(backoff_base=0.5, backoff_max=30).delay(attempt, retry_after) == expected


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=1767225600.0) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_4xx_asking_to_retry_later_is_retried_not_dead_lettered():
    from shared.dev.connector import Attempt

    assert Attempt(409, "http_409: in_progress", retry_after=2.0).retryable
    assert Attempt(429, "http_429").retryable
    assert Attempt(503, "http_503").retryable
    assert Attempt(None, "timeout").retryable
    assert not Attempt(409, "http_409: conflict").retryable
    assert not Attempt(400, "http_400: bad event").retryable


def test_a_function_that_cannot_be_reached_is_waited_for_and_never_dead_lettered(monkeypatch):
    import threading

    from shared.dev.connector import Attempt, FunctionConsumer

    policy = DeliveryPolicy(max_attempts=2, backoff_base=0.001, backoff_max=0.002, timeout=1)
    consumer = FunctionConsumer("worker", ["t"], gateway="http://127.0.0.1:9", servers="127.0.0.1:9",
                                policy=policy, stopping=threading.Event())
    outcomes = iter([Attempt(None, "connection_error: ConnectionError")] * 5
                    + [Attempt(502, "http_502: unreachable")] * 5 + [Attempt(200, "http_200")])
    monkeypatch.setattr(consumer, "attempt", lambda record: next(outcomes))

    record = type("Record", (), {"topic": "t", "partition": 0, "offset": 7})()
    verdict = consumer.deliver(record)

    assert verdict.delivered and verdict.attempts == 11

    failing = iter([Attempt(500, "http_500")] * 3)
    monkeypatch.setattr(consumer, "attempt", lambda record: next(failing))
    verdict = consumer.deliver(record)
    assert not verdict.delivered and verdict.attempts == 2
