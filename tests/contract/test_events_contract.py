"""Events: publishing to a real Kafka-protocol broker (tansu), and parsing every HTTP delivery style."""
from __future__ import annotations

import base64
import json
import time

import pytest

from shared.errors import BadRequestError, UnavailableError
from shared.events import (
    CloudEvent,
    KafkaPublisher,
    MemoryPublisher,
    ensure_topics,
    from_kafka_record,
    parse_http_event,
    publisher_from_env,
    to_http_binary,
    to_structured,
    types,
)
from shared.events.kafka import consumer_config, read_topic


@pytest.fixture
def topic(tansu_bootstrap, unique_name):
    name = unique_name("events")
    assert ensure_topics(tansu_bootstrap, [name], partitions=3) == [name]
    return name


# --------------------------------------------------------------------------- publishing

def test_kafka_publisher_writes_a_binary_mode_cloudevent(tansu_bootstrap, topic):
    publisher = KafkaPublisher(tansu_bootstrap, "/functions/chat")
    try:
        event_id = publisher.publish(
            topic,
            types.INFERENCE_REQUEST_SUBMITTED,
            {"request_id": "r1", "prompt": "héllo"},
            key="conv-1",
            subject="conv-1",
            extensions={"correlationid": "r1"},
        )
    finally:
        publisher.close()
    [record] = read_topic(tansu_bootstrap, topic, 1)
    headers = {k: v.decode() for k, v in record.headers}
    assert record.key == b"conv-1"
    assert json.loads(record.value) == {"request_id": "r1", "prompt": "héllo"}
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == event_id
    assert headers["ce_source"] == "/functions/chat"
    assert headers["ce_type"] == "inference.request.submitted"
    assert headers["ce_subject"] == "conv-1"
    assert headers["ce_correlationid"] == "r1"
    assert headers["content-type"] == "application/json"
    assert abs(CloudEvent("x", "s", "t", time=headers["ce_time"]).time_epoch - time.time()) < 30


def test_a_given_id_is_kept_and_one_key_stays_on_one_partition(tansu_bootstrap, topic):
    publisher = KafkaPublisher(tansu_bootstrap)
    try:
        ids = [publisher.publish(topic, "t.e.created", {"n": i}, key="same", id=f"id-{i}") for i in range(5)]
        publisher.publish(topic, "t.e.created", {"n": 99}, key="other")
    finally:
        publisher.close()
    assert ids == [f"id-{i}" for i in range(5)]
    records = [r for r in read_topic(tansu_bootstrap, topic, 6) if r.key == b"same"]
    assert len({r.partition for r in records}) == 1
    assert [json.loads(r.value)["n"] for r in sorted(records, key=lambda r: r.offset)] == [0, 1, 2, 3, 4]


def test_a_consumer_group_reads_what_was_published(tansu_bootstrap, topic, unique_name):
    from kafka import KafkaConsumer

    publisher = KafkaPublisher(tansu_bootstrap, "/functions/auth")
    try:
        event_id = publisher.publish(topic, types.AUTH_USER_REGISTERED, {"user_id": "u1"}, key="u1")
    finally:
        publisher.close()
    consumer = KafkaConsumer(topic, **consumer_config(tansu_bootstrap, unique_name("group")))
    try:
        records = []
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            records = [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
        consumer.commit()
    finally:
        consumer.close()
    event = from_kafka_record(records[0])
    assert (event.id, event.type, event.source) == (event_id, "auth.user.registered", "/functions/auth")
    assert event.data == {"user_id": "u1"} and event.key == "u1" and event.topic == topic
    assert event.offset == records[0].offset


def test_ensure_topics_creates_only_missing_topics(tansu_bootstrap, unique_name):
    a, b = unique_name("a"), unique_name("b")
    assert ensure_topics(tansu_bootstrap, [a]) == [a]
    assert ensure_topics(tansu_bootstrap, [a, b, types.dlq(b)]) == [b, f"{b}.dlq"]
    assert ensure_topics(tansu_bootstrap, [a, b]) == []


def test_publishing_to_an_unreachable_broker_raises_unavailable():
    publisher = KafkaPublisher("127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        publisher.publish("t", "a.b.c", {})
    assert info.value.status == 503 and "Retry-After" in info.value.headers
    assert time.monotonic() - started < 15


def test_publisher_from_env_uses_kafka_when_configured(monkeypatch, tansu_bootstrap):
    assert isinstance(publisher_from_env(), MemoryPublisher)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", tansu_bootstrap)
    monkeypatch.setenv("FUNCTION_NAME", "users")
    publisher = publisher_from_env()
    assert isinstance(publisher, KafkaPublisher) and publisher.source == "/functions/users"
    assert publisher_from_env() is publisher  # one producer per process
    assert publisher.publish(types.USERS_EVENTS, types.AUTH_USER_REGISTERED, {"user_id": "u1"})
    publisher.close()


def test_memory_publisher_keeps_events_per_topic():
    publisher = MemoryPublisher("/test")
    event_id = publisher.publish("a", "x.y.created", {"k": 1}, key="k", extensions={"traceid": "t1"})
    publisher.publish("b", "x.y.created", {})
    [event] = publisher.on("a")
    assert (event.id, event.key, event.data, event.extensions) == (event_id, "k", {"k": 1}, {"traceid": "t1"})


def test_an_invalid_extension_name_is_refused():
    with pytest.raises(ValueError):
        MemoryPublisher().publish("a", "x.y.created", {}, extensions={"Bad-Name": "v"})


def test_topic_constants_cover_the_design_and_their_dead_letter_topics():
    for topic in ("inference.requests", "inference.results", "training.jobs", "training.events",
                  "models.events", "users.events", "gateway.async"):
        assert topic in types.ALL_TOPICS and f"{topic}.dlq" in types.ALL_TOPICS


# --------------------------------------------------------------------------- parsing HTTP deliveries

DATA = {"request_id": "r1", "text": "hi"}


def knative_binary():
    return (
        {
            "ce-specversion": "1.0",
            "ce-id": "evt-1",
            "ce-source": "/functions/chat",
            "ce-type": "inference.request.submitted",
            "ce-subject": "conv-1",
            "ce-time": "2026-01-02T03:04:05Z",
            "ce-correlationid": "r1",
            "Content-Type": "application/json",
        },
        json.dumps(DATA).encode(),
    )


def structured():
    doc = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/functions/chat",
        "type": "inference.request.submitted",
        "subject": "conv-1",
        "time": "2026-01-02T03:04:05Z",
        "correlationid": "r1",
        "datacontenttype": "application/json",
        "data": DATA,
    }
    return {"Content-Type": "application/cloudevents+json; charset=utf-8"}, json.dumps(doc)


def connector_with_ce_headers():
    headers, body = knative_binary()
    headers.update({"X-Topic": "inference.requests", "X-Kafka-Key": "conv-1",
                    "X-Kafka-Partition": "2", "X-Kafka-Offset": "41"})
    return headers, body


@pytest.mark.parametrize("delivery", [knative_binary, structured, connector_with_ce_headers])
def test_every_delivery_style_gives_the_same_event(delivery):
    headers, body = delivery()
    event = parse_http_event(headers, body)
    assert (event.id, event.source, event.type, event.subject) == (
        "evt-1", "/functions/chat", "inference.request.submitted", "conv-1")
    assert event.time == "2026-01-02T03:04:05Z"
    assert event.time_epoch == pytest.approx(1767323045.0)
    assert event.data == DATA
    assert event.extensions == {"correlationid": "r1"}


def test_plain_openfaas_connector_delivery_derives_a_stable_id():
    headers = {"X-Topic": "inference.results", "X-Kafka-Key": "conv-9",
               "X-Kafka-Partition": "1", "X-Kafka-Offset": "7", "Content-Type": "application/json"}
    event = parse_http_event(headers, b'{"ok": true}')
    assert event.id == "inference.results-1-7"
    assert (event.topic, event.partition, event.offset, event.key) == ("inference.results", 1, 7, "conv-9")
    assert event.data == {"ok": True}
    assert event.source == "kafka://inference.results" and event.type == "dev.knative.kafka.event"
    assert parse_http_event(headers, b'{"ok": true}').id == event.id


def test_connector_delivery_prefers_the_ce_id_header():
    headers = {"X-Topic": "t", "X-Kafka-Partition": "0", "X-Kafka-Offset": "3", "ce-id": "given",
               "ce-type": "a.b.created"}
    event = parse_http_event(headers, b"{}")
    assert (event.id, event.type) == ("given", "a.b.created")


def test_connector_delivery_of_a_structured_record_reads_the_event_inside():
    _, body = structured()
    event = parse_http_event({"X-Topic": "t", "X-Kafka-Partition": "0", "X-Kafka-Offset": "3"}, body)
    assert event.id == "evt-1" and event.data == DATA and (event.topic, event.offset) == ("t", 3)


def test_header_names_are_case_insensitive_and_values_percent_decoded():
    headers, body = knative_binary()
    headers = {k.upper(): v for k, v in headers.items()}
    headers["CE-SUBJECT"] = "caf%C3%A9"
    assert parse_http_event(headers, body).subject == "café"


def test_structured_data_base64_is_bytes():
    doc = {"specversion": "1.0", "id": "1", "source": "/s", "type": "a.b.c",
           "data_base64": base64.b64encode(b"\x00\x01").decode()}
    event = parse_http_event({"content-type": "application/cloudevents+json"}, json.dumps(doc))
    assert event.data == b"\x00\x01"


def test_an_empty_binary_body_is_no_data():
    headers, _ = knative_binary()
    assert parse_http_event(headers, b"").data is None


BAD_DELIVERIES = {
    "no event at all": ({"Content-Type": "application/json"}, b"{}"),
    "binary without id": ({"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "a.b.c"}, b"{}"),
    "binary without type": ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s"}, b"{}"),
    "wrong specversion": ({"ce-specversion": "0.3", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"{}"),
    "binary with broken json": (
        {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", "content-type": "application/json"},
        b"{not json",
    ),
    "structured not json": ({"content-type": "application/cloudevents+json"}, b"<xml/>"),
    "structured not an object": ({"content-type": "application/cloudevents+json"}, b"[1, 2]"),
    "structured without source": (
        {"content-type": "application/cloudevents+json"},
        json.dumps({"specversion": "1.0", "id": "1", "type": "t"}),
    ),
    "structured with a non-string id": (
        {"content-type": "application/cloudevents+json"},
        json.dumps({"specversion": "1.0", "id": 5, "source": "/s", "type": "t"}),
    ),
    "structured bad base64": (
        {"content-type": "application/cloudevents+json"},
        json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "***"}),
    ),
    "batch": ({"content-type": "application/cloudevents-batch+json"}, b"[]"),
    "connector without id": ({"X-Topic": "t"}, b"{}"),
    "connector bad offset": ({"X-Topic": "t", "X-Kafka-Partition": "0", "X-Kafka-Offset": "x"}, b"{}"),
    "connector empty topic": ({"X-Topic": " ", "X-Kafka-Partition": "0", "X-Kafka-Offset": "1"}, b"{}"),
    "connector invalid utf-8 json": ({"X-Topic": "t", "X-Kafka-Partition": "0", "X-Kafka-Offset": "1"}, b"\xff\xfe"),
}


@pytest.mark.parametrize("name", sorted(BAD_DELIVERIES))
def test_bad_deliveries_are_bad_requests(name):
    headers, body = BAD_DELIVERIES[name]
    with pytest.raises(BadRequestError) as info:
        parse_http_event(headers, body)
    assert info.value.status == 400
    assert info.value.to_body()["error"]["code"] == "invalid_event"


# --------------------------------------------------------------------------- round trips

def test_an_event_survives_http_binary_and_structured_round_trips():
    event = CloudEvent.new("/s", "a.b.created", {"x": "é"}, subject="sub", extensions={"traceid": "t"}, key="k")
    event.topic, event.partition, event.offset = "topic", 0, 5
    headers, body = to_http_binary(event)
    back = parse_http_event(headers, body)
    assert (back.id, back.type, back.data, back.subject, back.key, back.offset) == (
        event.id, event.type, event.data, "sub", "k", 5)
    again = parse_http_event({"content-type": "application/cloudevents+json"}, json.dumps(to_structured(event)))
    assert (again.id, again.data, again.extensions) == (event.id, {"x": "é"}, {"traceid": "t"})


def test_a_record_without_cloudevent_headers_gets_knative_style_attributes():
    class Record:
        topic, partition, offset, key, headers, value = "t", 2, 9, None, [], b'{"a": 1}'

    event = from_kafka_record(Record())
    assert (event.id, event.type, event.data) == ("t-2-9", "dev.knative.kafka.event", {"a": 1})
