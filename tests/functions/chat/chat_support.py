"""The chat harness (see ``conftest.py`` for the fixtures): the real chat and chat_results targets, real auth and users functions
behind a small in-process gateway (``/function/<name>/…`` over real HTTP), a real Kafka broker
(tansu) and a stand-in for the inference worker.

The stand-in consumes ``inference.requests`` like the real worker, then does what the test
scripted: stream tokens on ``tokens:<request_id>`` (the shared ``inference`` cache namespace),
append the terminal entry, and deliver the ``inference.results`` CloudEvent to the real
``chat_results`` target (Knative binary headers; the OpenFaaS connector's style is covered by
the tests that produce real Kafka records). The full chain with the real model is the
lead's end-to-end test.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from tests.functions.identity_support import REPO_ROOT, bearer

CHAT_SOURCE = str(REPO_ROOT / "functions" / "chat" / "main.py")
REQUESTS_TOPIC, RESULTS_TOPIC = "inference.requests", "inference.results"
REPLY = "Hello from the stand-in worker."


# --------------------------------------------------------------------------- the gateway

class Gateway:
    """``/function/<name>/rest`` → that function's WSGI app, as the OpenFaaS gateway routes it."""

    _ROUTE = re.compile(r"^/function/([a-z0-9-]+)(/.*)?$")

    def __init__(self, apps: dict[str, Any]) -> None:
        self.apps = apps
        self.down: set[str] = set()
        self.calls: dict[str, int] = {}

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        match = self._ROUTE.match(environ.get("PATH_INFO", ""))
        name = match.group(1) if match else None
        if name is None or name not in self.apps or name in self.down:
            start_response("502 Bad Gateway", [("Content-Type", "application/json")])
            return [b'{"error":{"code":"bad_gateway","message":"function unavailable"}}']
        self.calls[name] = self.calls.get(name, 0) + 1
        environ = {**environ, "PATH_INFO": match.group(2) or "/",
                   "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + f"/function/{name}"}
        return self.apps[name](environ, start_response)


# --------------------------------------------------------------------------- the stand-in worker

@dataclass
class Reply:
    text: str = REPLY
    chunks: list[str] | None = None
    finish_reason: str = "stop"
    delay: float = 0.0  # between tokens


@dataclass
class Fail:
    code: str = "context_length_exceeded"
    message: str = "the prompt is longer than the model's window"


@dataclass
class Hold:
    """Take the request and do nothing (yet): the test finishes it with ``worker.finish``."""


@dataclass
class SeenRequest:
    data: dict
    headers: dict[str, str]
    key: str | None
    partition: int
    offset: int


def result_payload(request: dict, *, content: str = "", finish_reason: str | None = None,
                   error: dict | None = None) -> dict:
    prompt = sum(len(m["content"]) // 4 + 1 for m in request["messages"])
    completion = len(content) // 4 + 1
    return {
        "request_id": request["request_id"], "conversation_id": request["conversation_id"],
        "user_id": request["user_id"], "model": request["model"], "content": content,
        "finish_reason": finish_reason,
        "usage": None if error else {"prompt_tokens": prompt, "completion_tokens": completion,
                                     "total_tokens": prompt + completion},
        "error": error, "created_at": datetime.now(timezone.utc).isoformat(),
    }


def knative_headers(payload: dict, *, failed: bool) -> dict[str, str]:
    return {
        "ce-specversion": "1.0", "ce-id": f"result-{payload['request_id']}", "ce-source": "/functions/inference-worker",
        "ce-type": "inference.result.failed" if failed else "inference.result.completed",
        "ce-subject": payload["conversation_id"], "ce-correlationid": payload["request_id"],
        "Content-Type": "application/json",
    }


class StandInWorker(threading.Thread):
    def __init__(self, bootstrap: str, results_app: Any) -> None:
        super().__init__(daemon=True, name="stand-in-worker")
        from kafka import KafkaConsumer, TopicPartition

        self.results_app = results_app
        self.users: set[str] = set()
        self.seen: list[SeenRequest] = []
        self.deliveries: list[tuple[dict, Any]] = []
        self.script: Callable[[dict], Any] = lambda request: Reply()
        self._cond = threading.Condition()
        self._halt = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                       consumer_timeout_ms=200)
        partitions = self._consumer.partitions_for_topic(REQUESTS_TOPIC) or {0}
        assigned = [TopicPartition(REQUESTS_TOPIC, p) for p in sorted(partitions)]
        self._consumer.assign(assigned)
        self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve "end" now, before the test produces anything
            self._consumer.position(tp)
        self._tokens = None

    # -- the thread -----------------------------------------------------------------------
    def run(self) -> None:
        from shared.storage.cache import cache_from_env

        self._tokens = cache_from_env("inference")
        while not self._halt.is_set():
            for records in self._consumer.poll(timeout_ms=100).values():
                for record in records:
                    self._take(record)

    def _take(self, record: Any) -> None:
        data = json.loads(record.value)
        if data.get("user_id") not in self.users:
            return  # another test's (or another module's) request on the shared topic
        seen = SeenRequest(data, {k: v.decode() for k, v in record.headers or ()},
                           record.key.decode() if record.key else None, record.partition, record.offset)
        with self._cond:
            self.seen.append(seen)
            self._cond.notify_all()
        self.perform(data, self.script(data))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self._consumer.close()
        if self._tokens is not None:
            self._tokens.close()

    # -- what a worker does -----------------------------------------------------------------
    def perform(self, request: dict, action: Any) -> None:
        if isinstance(action, Hold):
            return
        if isinstance(action, Fail):
            error = {"code": action.code, "message": action.message}
            self.append(request, {"type": "error", "error": error})
            self.deliver(result_payload(request, error=error), failed=True)
            return
        chunks = action.chunks or [word + " " for word in action.text.split(" ")[:-1]] + [action.text.split(" ")[-1]]
        text = "".join(chunks)
        if request.get("stream"):
            for chunk in chunks:
                self.append(request, {"type": "token", "text": chunk})
                if action.delay:
                    time.sleep(action.delay)
        payload = result_payload(request, content=text, finish_reason=action.finish_reason)
        self.append(request, {"type": "done", "finish_reason": action.finish_reason, "usage": payload["usage"],
                              "content": text})
        self.deliver(payload, failed=False)

    def finish(self, request: dict, action: Any) -> None:
        """Complete a held request from the test's thread."""
        self.perform(request, action)

    def append(self, request: dict, entry: dict) -> None:
        from shared.storage.cache import cache_from_env

        tokens = self._tokens if threading.current_thread() is self else cache_from_env("inference")
        tokens.channel_append(f"tokens:{request['request_id']}", json.dumps(entry), ttl=600)

    def deliver(self, payload: dict, *, failed: bool, headers: dict | None = None) -> Any:
        response = self.results_app.test_client().post(
            "/", data=json.dumps(payload), headers=headers or knative_headers(payload, failed=failed)
        )
        self.deliveries.append((payload, response))
        return response

    def wait_for(self, count: int = 1, timeout: float = 15.0) -> list[SeenRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.seen) >= count, timeout):
                raise AssertionError(f"the worker saw {len(self.seen)} requests, expected {count}")
            return list(self.seen)


# --------------------------------------------------------------------------- the harness

@dataclass
class ChatHarness:
    chat: Any          # test client of the chat target
    results_app: Any   # flask app of the chat_results target
    worker: StandInWorker
    gateway: Gateway
    auth: Any
    tokens: dict[str, str] = field(default_factory=dict)

    def login(self, name: str) -> dict[str, str]:
        """Register ``name`` with the real auth function; the bearer headers of its token."""
        email = f"{name}-{os.urandom(3).hex()}@example.com"
        user, token = self.auth.user(email)
        self.worker.users.add(user["id"])
        return bearer(token["access_token"])

    def new_conversation(self, headers: dict, **body: Any) -> dict:
        response = self.chat.post("/conversations", json=body, headers=headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()


def empty_chat_tables(url: str) -> None:
    """The session's PostgreSQL database is shared: start each test with empty chat tables."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("chat_messages", "chat_conversations"):
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
                conn.execute(f"DELETE FROM {table}")


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event; comments (keep-alives) are skipped."""
    events = []
    for block in body.decode().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events
