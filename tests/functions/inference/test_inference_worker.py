"""The ``inference_worker`` target, driven as the Kafka connector and Knative's KafkaSource drive it:
CloudEvents over HTTP in; tokens on the Redis channel and a result on tansu's ``inference.results`` out.
"""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from shared.events import consumer_config
from shared.events import types as event_types
from shared.events.cloudevents import CloudEvent, from_kafka_record, to_http_binary
from shared.storage.cache import RedisCache

MODEL = "smollm2-135m-instruct"


def request_payload(request_id: str, conversation_id: str, **changes: Any) -> dict:
    payload = {
        "request_id": request_id,
        "conversation_id": conversation_id,
        "user_id": "user-1",
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
        "params": {"max_tokens": 40, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None},
        "stream": True,
    }
    payload.update(changes)
    return payload


def knative_delivery(payload: Any, *, request_id: str, conversation_id: str) -> tuple[dict, bytes]:
    """KafkaSource's binary mode: ``ce-*`` headers only, the record value as body."""
    event = CloudEvent.new("/functions/chat", event_types.INFERENCE_REQUEST_SUBMITTED, payload, id=request_id, subject=conversation_id)
    headers, body = to_http_binary(event)
    return {k: v for k, v in headers.items() if not k.startswith("X-")}, body


def connector_delivery(payload: Any, *, conversation_id: str, offset: int) -> tuple[dict, bytes]:
    """The OpenFaaS connector's style: the record value with X-Topic / X-Kafka-* headers, no ce-*."""
    headers = {
        "Content-Type": "application/json",
        "X-Topic": event_types.INFERENCE_REQUESTS,
        "X-Kafka-Key": conversation_id,
        "X-Kafka-Partition": "0",
        "X-Kafka-Offset": str(offset),
    }
    return headers, json.dumps(payload).encode()


@pytest.fixture
def ids() -> tuple[str, str]:
    return uuid.uuid4().hex, f"conv-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def post(worker_server):
    with httpx.Client(base_url=worker_server.url, timeout=120) as http:
        def send(headers: dict, body: bytes) -> httpx.Response:
            return http.post("/", headers=headers, content=body)

        yield send


@pytest.fixture(scope="module")
def channel(worker_redis_url):
    cache = RedisCache(worker_redis_url, "inference")

    def entries(request_id: str) -> list[dict]:
        return [json.loads(data) for _, data in cache.channel_read(f"tokens:{request_id}", None, 0)]

    yield entries
    cache.close()


@pytest.fixture(scope="module")
def results(tansu_bootstrap):
    """Reads ``inference.results`` from the start and returns the events of one request."""

    def for_request(request_id: str, expected: int = 1, timeout: float = 15) -> list[CloudEvent]:
        consumer = KafkaConsumer(**consumer_config(tansu_bootstrap, None, client_id="test-results-reader"))
        try:
            deadline = time.monotonic() + timeout
            found: list[CloudEvent] = []
            while time.monotonic() < deadline:
                partitions = consumer.partitions_for_topic(event_types.INFERENCE_RESULTS) or set()
                if partitions:
                    assigned = [TopicPartition(event_types.INFERENCE_RESULTS, p) for p in partitions]
                    consumer.assign(assigned)
                    consumer.seek_to_beginning(*assigned)
                    records = [r for batch in consumer.poll(timeout_ms=1000, max_records=10_000).values() for r in batch]
                    while batch := consumer.poll(timeout_ms=300, max_records=10_000):
                        records += [r for part in batch.values() for r in part]
                    found = [e for e in map(from_kafka_record, records) if e.extensions.get("correlationid") == request_id]
                    if len(found) >= expected:
                        return found
                time.sleep(0.2)
            return found
        finally:
            consumer.close()

    return for_request


def assert_completed(event: CloudEvent, request_id: str, conversation_id: str) -> dict:
    assert event.id == f"result-{request_id}"
    assert event.type == event_types.INFERENCE_RESULT_COMPLETED
    assert event.subject == conversation_id and event.key == conversation_id
    data = event.data
    assert data["request_id"] == request_id and data["conversation_id"] == conversation_id
    assert data["user_id"] == "user-1" and data["model"] == MODEL and data["error"] is None
    assert data["finish_reason"] in ("stop", "length") and data["created_at"].endswith("Z")
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    return data


@pytest.mark.parametrize("style", ["knative", "openfaas"])
def test_a_request_streams_tokens_and_publishes_its_result(post, channel, results, ids, style):
    request_id, conversation_id = ids
    payload = request_payload(request_id, conversation_id)
    if style == "knative":
        headers, body = knative_delivery(payload, request_id=request_id, conversation_id=conversation_id)
    else:
        headers, body = connector_delivery(payload, conversation_id=conversation_id, offset=int(time.time() * 1000))

    response = post(headers, body)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "completed", "request_id": request_id}
    entries = channel(request_id)
    tokens, terminal = entries[:-1], entries[-1]
    assert tokens and all(entry["type"] == "token" for entry in tokens)
    assert terminal["type"] == "done"
    assert "".join(entry["text"] for entry in tokens) == terminal["content"]
    assert "Berlin" in terminal["content"]
    (event,) = results(request_id)
    data = assert_completed(event, request_id, conversation_id)
    assert data["content"] == terminal["content"]
    assert data["usage"] == terminal["usage"] and data["finish_reason"] == terminal["finish_reason"]


def test_without_stream_only_the_terminal_entry_is_written(post, channel, results, ids):
    request_id, conversation_id = ids
    payload = request_payload(request_id, conversation_id, stream=False)
    assert post(*knative_delivery(payload, request_id=request_id, conversation_id=conversation_id)).status_code == 200
    (entry,) = channel(request_id)
    assert entry["type"] == "done" and "Berlin" in entry["content"]
    assert results(request_id)[0].data["content"] == entry["content"]


def test_a_redelivered_request_is_not_generated_twice(post, channel, results, ids):
    request_id, conversation_id = ids
    payload = request_payload(request_id, conversation_id, params={"max_tokens": 30, "temperature": 1.0, "seed": None})
    delivery = knative_delivery(payload, request_id=request_id, conversation_id=conversation_id)
    assert post(*delivery).json()["status"] == "completed"
    first_entries = channel(request_id)

    again = post(*delivery)

    assert again.status_code == 200 and again.json() == {"status": "replayed", "request_id": request_id}
    assert channel(request_id) == first_entries  # no second token stream, no second terminal entry
    first, second = results(request_id, expected=2)
    assert first.id == second.id == f"result-{request_id}"
    # Sampled without a seed: a second generation would almost surely differ.
    assert second.data == first.data


def test_a_redelivery_during_generation_is_told_to_retry_later(worker_server, post, channel, results, ids):
    request_id, conversation_id = ids
    payload = request_payload(request_id, conversation_id, messages=[{"role": "user", "content": "Write a long story."}],
                              params={"max_tokens": 150, "temperature": 1.0, "seed": 3})
    delivery = knative_delivery(payload, request_id=request_id, conversation_id=conversation_id)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, *delivery)
        deadline = time.monotonic() + 30
        while not channel(request_id):  # the first delivery is generating
            assert time.monotonic() < deadline
            time.sleep(0.02)
        during = httpx.post(f"{worker_server.url}/", headers=delivery[0], content=delivery[1], timeout=30)
        assert first.result().json()["status"] == "completed"
    assert during.status_code == 503 and int(during.headers["Retry-After"]) >= 1
    assert during.json()["error"]["code"] == "in_progress"
    assert post(*delivery).json()["status"] == "replayed"
    assert len(results(request_id, expected=2)) == 2


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"messages": []}, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "invalid_request"),
        ({"params": {"temperature": "hot"}}, "invalid_request"),
        ({"model": "gpt-17"}, "model_not_found"),
        ({"messages": [{"role": "user", "content": "hello " * 9000}]}, "context_length_exceeded"),
        ({"params": {"max_tokens": 10_000_000}}, "invalid_value"),
    ],
)
def test_a_request_that_cannot_be_served_gets_a_failed_result_and_a_2xx(post, channel, results, ids, changes, code):
    request_id, conversation_id = ids
    payload = request_payload(request_id, conversation_id, **changes)

    response = post(*knative_delivery(payload, request_id=request_id, conversation_id=conversation_id))

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "failed"
    (entry,) = channel(request_id)
    assert entry["type"] == "error" and entry["error"]["code"] == code
    (event,) = results(request_id)
    assert event.type == event_types.INFERENCE_RESULT_FAILED and event.id == f"result-{request_id}"
    assert event.data["content"] == "" and event.data["finish_reason"] is None and event.data["usage"] is None
    assert event.data["error"]["code"] == code and event.data["conversation_id"] == conversation_id


def test_a_body_that_is_not_json_still_gets_a_failed_result(post, channel, results, ids):
    request_id, conversation_id = ids
    headers, _ = knative_delivery({}, request_id=request_id, conversation_id=conversation_id)

    response = post(headers, b"{this is not json")

    assert response.status_code == 200, response.text
    (event,) = results(request_id)
    assert event.type == event_types.INFERENCE_RESULT_FAILED and event.data["conversation_id"] == conversation_id
    assert channel(request_id)[-1]["type"] == "error"


def test_a_request_that_is_no_event_at_all_is_a_400(post):
    response = post({"Content-Type": "application/json"}, b'{"hello": "world"}')
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event"


def test_events_of_other_types_are_acknowledged_and_ignored(post, results, ids):
    request_id, conversation_id = ids
    event = CloudEvent.new("/elsewhere", "users.profile.updated", {"request_id": request_id}, id=request_id)
    response = post(*to_http_binary(event))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert results(request_id, timeout=2) == []


def test_queue_lag_is_measured_from_the_event_time(worker_server, post, ids):
    request_id, conversation_id = ids
    payload = request_payload(request_id, conversation_id, params={"max_tokens": 2})
    headers, body = knative_delivery(payload, request_id=request_id, conversation_id=conversation_id)
    headers["ce-time"] = "2020-01-01T00:00:00Z"  # an event that waited years in the queue
    assert post(headers, body).status_code == 200
    metrics = httpx.get(f"{worker_server.url}/metrics").text
    assert 'chatfaas_inference_queue_lag_seconds_bucket{function_name="inference-worker",le="+Inf"}' in metrics
    count = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith('chatfaas_inference_queue_lag_seconds_bucket{function_name="inference-worker",le="300.0"}')))
    total = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith('chatfaas_inference_queue_lag_seconds_count{function_name="inference-worker"}')))
    assert total > count  # this one landed beyond the last finite bucket


def test_the_worker_asks_for_a_retry_while_the_model_is_loading(unready_worker, ids):
    request_id, conversation_id = ids
    headers, body = knative_delivery(request_payload(request_id, conversation_id), request_id=request_id, conversation_id=conversation_id)
    response = httpx.post(f"{unready_worker.url}/", headers=headers, content=body, timeout=30)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
