"""Chat turns over HTTP against a real Kafka broker and a stand-in inference worker:
the synchronous reply, the SSE stream, 202 + polling, the 504 and the late reply, failures,
idempotent results, the prompt sent to inference, and the user's preferences."""
from __future__ import annotations

import json
import os
import time

import pytest

from tests.functions.chat.chat_support import REPLY, Fail, Hold, Reply, knative_headers, result_payload, sse_events


ALL_BACKENDS = ["sqlite+sqlite-cache", "postgresql+redis", "mongodb(mongomock)+redis"]


def _poll(harness, headers, location, *, until=lambda m: m["status"] != "pending", timeout=10.0):
    path = location.removeprefix("/function/chat")
    deadline = time.monotonic() + timeout
    while True:
        message = harness.chat.get(path, headers=headers).get_json()
        if until(message) or time.monotonic() > deadline:
            return message
        time.sleep(0.05)


@pytest.mark.parametrize("chat_backend", ALL_BACKENDS, indirect=True)
def test_a_synchronous_turn_returns_the_complete_reply_and_stores_both_messages(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "Hello?"}, headers=alice)
    assert response.status_code == 201, response.get_json()
    reply = response.get_json()
    assert (reply["role"], reply["content"], reply["status"], reply["finish_reason"]) == ("assistant", REPLY, "complete", "stop")
    assert reply["usage"]["total_tokens"] > 0 and reply["request_id"] == reply["id"]
    assert response.headers["Location"] == f"/function/chat/conversations/{conv['id']}/messages/{reply['id']}"

    stored = harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()
    user, assistant = stored["messages"]
    assert (user["role"], user["content"], user["parent_id"]) == ("user", "Hello?", None)
    assert assistant["parent_id"] == user["id"] and assistant == reply
    assert stored["title"] == "Hello?"  # the first message names an untitled conversation
    metrics = harness.chat.get("/metrics").get_data(as_text=True)
    assert 'chatfaas_chat_turns_total{function_name="chat",mode="sync",outcome="complete"}' in metrics


def test_the_request_event_follows_the_inference_contract(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice, system_prompt="You are terse.", model="smollm2-135m-instruct")
    reply = harness.chat.post(f"/conversations/{conv['id']}/messages",
                              json={"content": "Hi", "temperature": 0.2, "max_tokens": 32}, headers=alice).get_json()
    seen = harness.worker.wait_for(1)[0]
    assert seen.key == conv["id"]
    assert seen.headers["ce_id"] == reply["id"] and seen.headers["ce_type"] == "inference.request.submitted"
    assert seen.headers["ce_source"] == "/functions/chat" and seen.headers["ce_subject"] == conv["id"]
    data = seen.data
    assert data["request_id"] == reply["id"] and data["conversation_id"] == conv["id"]
    assert data["model"] == "smollm2-135m-instruct" and data["stream"] is True
    assert data["messages"] == [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    assert data["params"] == {"max_tokens": 32, "temperature": 0.2, "top_p": 1.0, "stop": [], "seed": None}


def test_the_second_turn_carries_the_history_and_chains_parents(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    first = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "one"}, headers=alice).get_json()
    harness.worker.script = lambda request: Reply("second answer")
    harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "two"}, headers=alice)
    second_request = harness.worker.wait_for(2)[1].data
    assert second_request["messages"] == [
        {"role": "user", "content": "one"}, {"role": "assistant", "content": REPLY}, {"role": "user", "content": "two"},
    ]
    messages = harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"]
    assert [m["content"] for m in messages] == ["one", REPLY, "two", "second answer"]
    assert messages[2]["parent_id"] == first["id"] and messages[3]["parent_id"] == messages[2]["id"]


@pytest.mark.parametrize("chat_env", [{"CHAT_CONTEXT_TOKENS": "300"}], indirect=True)
def test_old_turns_are_trimmed_to_fit_the_window(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice, system_prompt="Stay on topic.")
    harness.worker.script = lambda request: Reply("r" * 100)  # ~29 tokens per answer
    for i in range(4):
        assert harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": f"q{i} " + "x" * 100},
                                 headers=alice).status_code == 201
    last = harness.worker.wait_for(4)[3].data["messages"]
    assert last[0] == {"role": "system", "content": "Stay on topic."}
    assert last[-1]["content"].startswith("q3")
    # users' default max_tokens (512) reserves half the 300-token window: 150 left, one old turn fits
    kept = [m["content"][:2] for m in last if m["role"] == "user"]
    assert kept == ["q2", "q3"]  # the oldest went first, the newest stayed
    assert sum(len(m["content"]) / 4 + 4 for m in last) <= 150
    too_long = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "y" * 2000}, headers=alice)
    assert too_long.status_code == 422 and too_long.get_json()["error"]["code"] == "context_length_exceeded"
    assert len(harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"]) == 8


@pytest.mark.parametrize("chat_backend", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("ask", ["body", "accept"])
def test_a_streamed_turn_sends_openai_chunks_then_done(harness, ask):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Reply(chunks=["Bon", "jour", " à", " vous"], delay=0.02)
    body = {"content": "Salut", **({"stream": True} if ask == "body" else {})}
    headers = {**alice, **({"Accept": "text/event-stream"} if ask == "accept" else {})}
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json=body, headers=headers)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    message_id = response.headers["X-Message-Id"]
    events = sse_events(response.get_data())
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for name, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == f"chatcmpl-{message_id}" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Bonjour à vous"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == ["Bon", "jour", " à", " vous"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] > 0
    stored = harness.chat.get(f"/conversations/{conv['id']}/messages/{message_id}", headers=alice).get_json()
    assert (stored["status"], stored["content"]) == ("complete", "Bonjour à vous")


def test_a_stream_that_fails_ends_with_an_error_event(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Fail("model_not_found", "model 'x' is not served here")
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "hi", "stream": True}, headers=alice)
    events = sse_events(response.get_data())
    assert events[-1] == (None, "[DONE]")
    name, data = events[-2]
    assert name == "error" and json.loads(data)["error"]["code"] == "model_not_found"


def test_a_client_that_leaves_a_stream_loses_nothing(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Reply(chunks=["a"] * 20, delay=0.05)
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "hi", "stream": True},
                                 headers=alice, buffered=False)
    first = next(response.response)
    assert b"chat.completion.chunk" in first
    response.close()  # the client goes away after the first chunk
    message_id = response.headers["X-Message-Id"]
    stored = _poll(harness, alice, f"/conversations/{conv['id']}/messages/{message_id}")
    assert (stored["status"], stored["content"]) == ("complete", "a" * 20)


def test_respond_async_answers_202_and_the_message_can_be_polled(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Hold()
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "later"},
                                 headers={**alice, "Prefer": "respond-async"})
    assert response.status_code == 202 and response.headers["Preference-Applied"] == "respond-async"
    pending = response.get_json()
    location = response.headers["Location"]
    assert location == f"/function/chat/conversations/{conv['id']}/messages/{pending['id']}"
    assert pending["status"] == "pending" and pending["content"] == ""
    request = harness.worker.wait_for(1)[0].data
    assert request["stream"] is False  # nobody reads the tokens of an async turn
    assert harness.chat.get(location.removeprefix("/function/chat"), headers=alice).get_json()["status"] == "pending"
    harness.worker.finish(request, Reply("done later"))
    done = _poll(harness, alice, location)
    assert (done["status"], done["content"], done["finish_reason"]) == ("complete", "done later", "stop")


@pytest.mark.parametrize("chat_env", [{"CHAT_REPLY_TIMEOUT_SECONDS": "1"}], indirect=True)
def test_a_slow_reply_times_out_with_504_and_still_lands(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Hold()
    started = time.monotonic()
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "slow"}, headers=alice)
    assert 0.9 < time.monotonic() - started < 5
    assert response.status_code == 504
    error = response.get_json()["error"]
    assert error["code"] == "reply_timeout"
    location = error["details"]["location"]
    assert response.headers["Location"] == location
    assert location.endswith(f"/messages/{error['details']['message_id']}")
    request = harness.worker.wait_for(1)[0].data
    harness.worker.finish(request, Reply("finally"))
    landed = _poll(harness, alice, location)
    assert (landed["status"], landed["content"]) == ("complete", "finally")


def test_a_failed_generation_is_a_502_and_a_failed_message_with_its_reason(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Fail("context_length_exceeded", "the prompt is too long")
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "hi"}, headers=alice)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "context_length_exceeded" and error["details"]["reason"] == "context_length_exceeded"
    stored = harness.chat.get(error["details"]["location"].removeprefix("/function/chat"), headers=alice).get_json()
    assert stored["status"] == "failed"
    assert stored["error"] == {"code": "context_length_exceeded", "message": "the prompt is too long"}
    # a failed turn is not sent again as history
    harness.worker.script = lambda request: Reply()
    harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "again"}, headers=alice)
    assert harness.worker.wait_for(2)[1].data["messages"] == [{"role": "user", "content": "again"}]


def test_a_failed_result_event_fails_an_async_turn(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Fail("generation_failed", "the generation failed")
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "x"},
                                 headers={**alice, "Prefer": "respond-async"})
    failed = _poll(harness, alice, response.headers["Location"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "generation_failed"


def test_the_same_result_twice_stores_one_assistant_message(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Hold()
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "x"},
                                 headers={**alice, "Prefer": "respond-async"})
    request = harness.worker.wait_for(1)[0].data
    payload = result_payload(request, content="the answer", finish_reason="length")
    first = harness.worker.deliver(payload, failed=False)
    second = harness.worker.deliver(payload, failed=False)
    late_failure = harness.worker.deliver(result_payload(request, error={"code": "x", "message": "y"}), failed=True)
    assert [r.status_code for r in (first, second, late_failure)] == [200, 200, 200]
    assert [r.get_json()["status"] for r in (first, second, late_failure)] == ["stored", "duplicate", "duplicate"]
    messages = harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "x", "complete"), ("assistant", "the answer", "complete")]
    assert messages[1]["finish_reason"] == "length" and messages[1]["id"] == response.get_json()["id"]


def test_a_result_for_an_unknown_request_creates_nothing(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    fake = {"request_id": "f" * 32, "conversation_id": conv["id"], "user_id": "someone", "model": "m",
            "messages": [{"role": "user", "content": "x"}]}
    response = harness.worker.deliver(result_payload(fake, content="ghost", finish_reason="stop"), failed=False)
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    assert harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"] == []


@pytest.mark.parametrize("request_id", ["' OR '1'='1", "req-from-another-producer", "F" * 32])
def test_a_result_with_a_foreign_request_id_is_ignored(harness, request_id):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    fake = {"request_id": request_id, "conversation_id": conv["id"], "user_id": "x", "model": "m",
            "messages": [{"role": "user", "content": "x"}]}
    response = harness.worker.deliver(result_payload(fake, content="ghost", finish_reason="stop"), failed=False)
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    assert harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"] == []


def test_a_turn_is_refused_with_503_when_the_broker_is_down(harness):
    from functions.chat import runtime
    from tests.conftest import free_port

    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    runtime.reset()
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "hi"}, headers=alice)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "unavailable"
    user, assistant = harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"]
    assert assistant["status"] == "failed" and assistant["error"]["code"] == "unavailable"


def test_a_result_for_a_deleted_conversation_does_not_bring_it_back(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Hold()
    harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "x"},
                      headers={**alice, "Prefer": "respond-async"})
    request = harness.worker.wait_for(1)[0].data
    assert harness.chat.delete(f"/conversations/{conv['id']}", headers=alice).status_code == 204
    response = harness.worker.deliver(result_payload(request, content="late", finish_reason="stop"), failed=False)
    assert response.get_json()["status"] == "ignored"
    assert harness.chat.get(f"/conversations/{conv['id']}", headers=alice).status_code == 404


@pytest.mark.parametrize("case", ["not-json", "no-request-id", "data-is-a-list", "not-a-cloudevent", "mismatched",
                                  "operator-as-request-id"])
def test_a_broken_result_is_a_client_error_for_the_dead_letter_queue(harness, case):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Hold()
    harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "x"},
                      headers={**alice, "Prefer": "respond-async"})
    request = harness.worker.wait_for(1)[0].data
    good = result_payload(request, content="fine", finish_reason="stop")
    headers = knative_headers(good, failed=False)
    body = {
        "not-json": b"{broken",
        "no-request-id": json.dumps({k: v for k, v in good.items() if k != "request_id"}).encode(),
        "data-is-a-list": b"[1, 2]",
        "not-a-cloudevent": json.dumps(good).encode(),
        "mismatched": json.dumps({**good, "conversation_id": "e" * 32}).encode(),
        "operator-as-request-id": json.dumps({**good, "request_id": {"$ne": None}}).encode(),
    }[case]
    if case == "not-a-cloudevent":
        headers = {"Content-Type": "application/json"}
    response = harness.results_app.test_client().post("/", data=body, headers=headers)
    assert 400 <= response.status_code < 500, response.get_json()
    assert response.get_json()["error"]["code"]
    messages = harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"]
    assert messages[1]["status"] == "pending"


def test_a_result_record_from_kafka_is_stored_with_the_connectors_headers(harness, kafka_topics):
    """The OpenFaaS-connector delivery: a real record on inference.results, turned into HTTP
    headers by the dev connector's own function, posted to chat_results."""
    from kafka import KafkaConsumer, TopicPartition

    from shared.dev.connector import event_headers
    from shared.events import publisher_from_env

    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.worker.script = lambda request: Hold()
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "x"},
                                 headers={**alice, "Prefer": "respond-async"})
    request = harness.worker.wait_for(1)[0].data
    payload = result_payload(request, content="via kafka", finish_reason="stop")

    consumer = KafkaConsumer(bootstrap_servers=kafka_topics, group_id=None, enable_auto_commit=False)
    partitions = [TopicPartition("inference.results", p) for p in sorted(consumer.partitions_for_topic("inference.results"))]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)
    publisher = publisher_from_env()
    publisher.publish("inference.results", "inference.result.completed", payload, key=conv["id"],
                      id=f"result-{payload['request_id']}", subject=conv["id"],
                      extensions={"correlationid": payload["request_id"]})
    record = None
    deadline = time.monotonic() + 10
    while record is None and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            record = next((r for r in records if json.loads(r.value)["request_id"] == payload["request_id"]), record)
    consumer.close()
    getattr(publisher, "close", lambda: None)()
    assert record is not None
    headers = event_headers(record)
    assert headers["X-Topic"] == "inference.results" and headers["X-Kafka-Key"] == conv["id"]
    delivered = harness.results_app.test_client().post("/", data=record.value, headers=headers)
    assert delivered.status_code == 200 and delivered.get_json()["status"] == "stored"
    stored = harness.chat.get(response.headers["Location"].removeprefix("/function/chat"), headers=alice).get_json()
    assert (stored["status"], stored["content"]) == ("complete", "via kafka")


# -- POST /chat --------------------------------------------------------------------------

def test_the_one_call_chat_creates_a_conversation_then_continues_it(harness):
    alice = harness.login("alice")
    first = harness.chat.post("/chat", json={"message": "Bonjour"}, headers=alice)
    assert first.status_code == 201
    body = first.get_json()
    cid = body["conversation_id"]
    assert body["message"]["content"] == REPLY and body["message"]["conversation_id"] == cid
    assert body["location"] == first.headers["Location"]
    again = harness.chat.post("/chat", json={"message": "Encore", "conversation_id": cid}, headers=alice).get_json()
    assert again["conversation_id"] == cid
    conversations = harness.chat.get("/conversations", headers=alice).get_json()["data"]
    assert [c["id"] for c in conversations] == [cid] and conversations[0]["title"] == "Bonjour"
    assert len(harness.chat.get(f"/conversations/{cid}", headers=alice).get_json()["messages"]) == 4


def test_the_one_call_chat_streams_and_goes_async_too(harness):
    alice = harness.login("alice")
    streamed = harness.chat.post("/chat", json={"message": "hi", "stream": True}, headers=alice)
    assert streamed.mimetype == "text/event-stream" and streamed.headers["X-Conversation-Id"]
    assert sse_events(streamed.get_data())[-1] == (None, "[DONE]")
    harness.worker.script = lambda request: Hold()
    queued = harness.chat.post("/chat", json={"message": "hi"}, headers={**alice, "Prefer": "respond-async"})
    assert queued.status_code == 202 and queued.get_json()["message"]["status"] == "pending"


# -- preferences ---------------------------------------------------------------------------

def test_the_users_preferences_shape_the_request_and_are_cached(harness):
    alice = harness.login("alice")
    prefs = {"default_model": "smollm2-135m-instruct-ft", "temperature": 1.3, "max_tokens": 77,
             "system_prompt": "Answer like a pirate.", "language": "en"}
    put = harness.gateway.apps["users"].test_client().put("/me/preferences", json=prefs, headers=alice)
    assert put.status_code == 200, put.get_json()
    conv = harness.new_conversation(alice)
    calls_before = harness.gateway.calls.get("users", 0)
    for content in ("a", "b"):
        harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": content}, headers=alice)
    first, second = (seen.data for seen in harness.worker.wait_for(2))
    assert first["model"] == "smollm2-135m-instruct-ft"
    assert first["params"]["temperature"] == 1.3 and first["params"]["max_tokens"] == 77
    assert first["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert harness.gateway.calls.get("users", 0) - calls_before == 1  # the second turn used the cache
    # the conversation's own system prompt and the turn's settings win over the preferences
    harness.chat.patch(f"/conversations/{conv['id']}", json={"system_prompt": "Be formal."}, headers=alice)
    harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "c", "temperature": 0.1,
                                                                     "model": "other-model"}, headers=alice)
    third = harness.worker.wait_for(3)[2].data
    assert third["messages"][0]["content"] == "Be formal."
    assert (third["params"]["temperature"], third["model"]) == (0.1, "other-model")


def test_a_turn_goes_ahead_with_defaults_when_users_is_down(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    harness.gateway.down.add("users")
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "hi"}, headers=alice)
    assert response.status_code == 201
    request = harness.worker.wait_for(1)[0].data
    assert request["model"] == "smollm2-135m-instruct" and request["params"]["temperature"] == 0.7
    assert request["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body", [{"content": ""}, {"content": "x", "temperature": 3}, {"content": "x", "max_tokens": 0},
                                  {"content": "x", "extra": True}, {"text": "x"}])
def test_an_invalid_turn_is_refused_and_queues_nothing(harness, body):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    response = harness.chat.post(f"/conversations/{conv['id']}/messages", json=body, headers=alice)
    assert response.status_code == 422
    assert harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"] == []
