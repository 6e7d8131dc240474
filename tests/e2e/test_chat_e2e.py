"""Issue 4's chat turn end to end, every part real and its own process: gateway, auth, users,
chat, chat-results, inference-worker (the real model), the Kafka connector, tansu, PostgreSQL and
Redis. The answer to "What is the capital of France?" must mention Paris."""
from __future__ import annotations

import json
import time

import pytest
import requests

from shared.dev import supervisor
from tests.e2e.conftest import Platform, bearer, json_error, register_and_login, start_platform

QUESTION = "What is the capital of France?"
CHAT_FUNCTIONS = ("auth", "users", "users-events", "chat", "chat-results", "inference-worker")


@pytest.fixture(scope="module")
def chat_platform(tmp_path_factory, tansu_bootstrap, postgres_url, redis_db_number, inference_artefacts):
    import redis

    redis_url = f"redis://127.0.0.1:6379/{redis_db_number}"
    redis.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp("chat-platform")
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "CONNECTOR_BACKOFF_MAX": "1",
           "CHAT_REPLY_TIMEOUT_SECONDS": "90"}
    platform = start_platform(root, kafka=tansu_bootstrap, only=CHAT_FUNCTIONS, env=env)
    platform.options = supervisor.Options(layout=platform.layout, env={  # type: ignore[attr-defined]
        "KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap, "DATA_DIR": str(root / "data"), **env}, ready_timeout=120)
    try:
        yield platform
    finally:
        supervisor.down(platform.layout)


@pytest.fixture(scope="module")
def alice(chat_platform: Platform) -> dict:
    gw = chat_platform.gateway
    pair = register_and_login(gw, f"alice.{time.time_ns()}@example.com")
    prefs = {"language": "en", "temperature": 0.0, "max_tokens": 48,
             "system_prompt": "You are a helpful assistant. Answer in one short sentence."}
    assert requests.put(f"{gw}/function/users/me/preferences", json=prefs, headers=bearer(pair["access_token"]),
                        timeout=10).status_code == 200
    return bearer(pair["access_token"])


def new_conversation(gw: str, headers: dict, **body) -> dict:
    created = requests.post(f"{gw}/function/chat/conversations", json=body, headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    return created.json()


def conversation(gw: str, headers: dict, cid: str) -> dict:
    response = requests.get(f"{gw}/function/chat/conversations/{cid}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def poll_message(gw: str, headers: dict, location: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = requests.get(f"{gw}{location}", headers=headers, timeout=10).json()
        if message["status"] != "pending" or time.monotonic() > deadline:
            return message
        time.sleep(0.2)


def sse_data(response: requests.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def test_a_synchronous_turn_answers_paris_and_stores_it_once(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice, title="Geography")
    reply = requests.post(f"{gw}/function/chat/conversations/{conv['id']}/messages", json={"content": QUESTION},
                          headers=alice, timeout=120)
    assert reply.status_code == 201, reply.text
    message = reply.json()
    assert message["role"] == "assistant" and message["status"] == "complete"
    assert "Paris" in message["content"]
    assert message["usage"]["completion_tokens"] > 0

    stored = conversation(gw, alice, conv["id"])["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == message["content"] and stored[1]["parent_id"] == stored[0]["id"]


def test_a_streamed_turn_sends_tokens_as_sse_and_stores_the_same_text(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice)
    with requests.post(f"{gw}/function/chat/conversations/{conv['id']}/messages",
                       json={"content": QUESTION, "stream": True}, headers=alice, stream=True, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_data(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert len(chunks) > 3, "tokens arrive as several chunks, not one"
    assert "Paris" in text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assistant = conversation(gw, alice, conv["id"])["messages"][-1]
    assert assistant["status"] == "complete" and assistant["content"] == text


def test_respond_async_returns_202_and_the_message_completes(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice)
    accepted = requests.post(f"{gw}/function/chat/conversations/{conv['id']}/messages", json={"content": QUESTION},
                             headers={**alice, "Prefer": "respond-async"}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "pending"
    message = poll_message(gw, alice, accepted.headers["Location"])
    assert message["status"] == "complete" and "Paris" in message["content"]


def test_the_one_call_chat_endpoint(chat_platform, alice):
    gw = chat_platform.gateway
    response = requests.post(f"{gw}/function/chat/chat", json={"message": QUESTION}, headers=alice, timeout=120)
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert "Paris" in body["message"]["content"]
    assert conversation(gw, alice, body["conversation_id"])["messages"][-1]["id"] == body["message"]["id"]


def test_a_client_that_goes_away_mid_stream_still_gets_the_full_reply_stored_once(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice)
    with requests.post(f"{gw}/function/chat/conversations/{conv['id']}/messages",
                       json={"content": QUESTION, "stream": True}, headers=alice, stream=True, timeout=120) as response:
        lines = response.iter_lines(decode_unicode=True)
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "chat.completion.chunk"
    # The connection is closed here, mid-stream.
    deadline = time.monotonic() + 90
    while True:
        messages = conversation(gw, alice, conv["id"])["messages"]
        if messages[-1]["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert [m["role"] for m in messages] == ["user", "assistant"], "stored once"
    assert messages[-1]["status"] == "complete" and "Paris" in messages[-1]["content"]


def test_other_users_conversations_are_404_bad_ids_400_and_revoked_tokens_401(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice)
    mallory_pair = register_and_login(gw, f"mallory.{time.time_ns()}@example.com")
    mallory = bearer(mallory_pair["access_token"])
    base = f"{gw}/function/chat/conversations/{conv['id']}"
    for method, url, body in [("GET", base, None), ("PATCH", base, {"title": "mine"}), ("DELETE", base, None),
                              ("POST", f"{base}/messages", {"content": "hi"})]:
        response = requests.request(method, url, json=body, headers=mallory, timeout=10)
        assert response.status_code == 404, (method, response.text)
        json_error(response)
    bad = requests.get(f"{gw}/function/chat/conversations/not-an-id", headers=alice, timeout=10)
    assert bad.status_code == 400
    injected = requests.get(f"{gw}/function/chat/conversations/%7B%22%24gt%22%3A%22%22%7D", headers=alice, timeout=10)
    assert injected.status_code == 400

    assert requests.post(f"{gw}/function/auth/revoke", data={"token": mallory_pair["access_token"]},
                         timeout=10).status_code == 200
    assert requests.get(f"{gw}/function/chat/conversations", headers=mallory, timeout=10).status_code == 401


def test_with_the_worker_stopped_an_async_turn_stays_pending_then_completes(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice)
    supervisor.stop(chat_platform.layout, "inference-worker")
    try:
        accepted = requests.post(f"{gw}/function/chat/conversations/{conv['id']}/messages", json={"content": QUESTION},
                                 headers={**alice, "Prefer": "respond-async"}, timeout=10)
        assert accepted.status_code == 202
        time.sleep(4)
        assert requests.get(f"{gw}{accepted.headers['Location']}", headers=alice, timeout=10).json()["status"] == "pending"
    finally:
        supervisor.start(chat_platform.options, "inference-worker")
    message = poll_message(gw, alice, accepted.headers["Location"])
    assert message["status"] == "complete" and "Paris" in message["content"]


def test_a_failed_generation_marks_the_message_failed_with_a_reason(chat_platform, alice):
    gw = chat_platform.gateway
    conv = new_conversation(gw, alice)
    accepted = requests.post(f"{gw}/function/chat/conversations/{conv['id']}/messages",
                             json={"content": QUESTION, "model": "no-such-model"},
                             headers={**alice, "Prefer": "respond-async"}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    message = poll_message(gw, alice, accepted.headers["Location"])
    assert message["status"] == "failed"
    assert message["error"], "a failed message carries its reason"
