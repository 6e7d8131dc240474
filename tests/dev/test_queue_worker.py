"""/async-function through the real stack: 202 at once, the call runs from Kafka, the result is
POSTed to X-Callback-Url (OpenFaaS queue-worker semantics)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Iterator

import pytest
import requests

from shared.dev.supervisor import REPO_ROOT
from tests.callbacks import CallbackReceiver
from tests.dev.conftest import FIXTURES, free_port, healthy, wait_until


@pytest.fixture
def callback() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    yield receiver
    receiver.close()


def test_async_call_is_accepted_at_once_and_its_result_posted_to_the_callback(dev_stack, callback):
    response = requests.post(f"{dev_stack.gateway}/async-function/echo/jobs?kind=report", data=b"payload",
                             headers={"X-Callback-Url": callback.url, "X-Custom": "kept"})

    assert response.status_code == 202
    call_id = response.headers["X-Call-Id"]
    result = callback.next()
    assert result["headers"]["X-Call-Id"] == call_id
    assert result["headers"]["X-Function-Status"] == "200"
    assert float(result["headers"]["X-Duration-Seconds"]) > 0
    seen = json.loads(result["body"])
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/jobs", "kind=report")
    assert base64.b64decode(seen["body"]) == b"payload"
    assert seen["headers"]["x-custom"] == "kept"
    assert seen["headers"]["x-call-id"] == call_id


def test_the_function_status_is_reported_even_when_it_fails(dev_stack, callback):
    response = requests.post(f"{dev_stack.gateway}/async-function/picky", json={"bad": True},
                             headers={"X-Callback-Url": callback.url})

    result = callback.next()
    assert result["headers"]["X-Call-Id"] == response.headers["X-Call-Id"]
    assert result["headers"]["X-Function-Status"] == "400"
    assert json.loads(result["body"])["error"]["code"] == "bad_request"


def test_a_failing_callback_is_retried(dev_stack):
    receiver = CallbackReceiver(fail_first=1)
    try:
        requests.post(f"{dev_stack.gateway}/async-function/echo", data=b"x",
                      headers={"X-Callback-Url": receiver.url})
        first, second = receiver.next(), receiver.next()
        assert first["headers"]["X-Call-Id"] == second["headers"]["X-Call-Id"]
    finally:
        receiver.close()


def test_async_call_to_an_unknown_function_is_a_404(dev_stack):
    response = requests.post(f"{dev_stack.gateway}/async-function/nope", data=b"x")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "function_not_found"


def _spawn(args: list[str], env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(15)


def test_a_queued_call_survives_the_gateway_going_away(dev_stack, callback, tmp_path, unique_name):
    """Queued with no worker running, the gateway stopped, then a worker started: the call runs."""
    topic = unique_name("async")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), KAFKA_BOOTSTRAP_SERVERS=dev_stack.kafka,
               GATEWAY_ASYNC_TOPIC=topic, FUNCTION_URL_ECHO=dev_stack.url("echo"),
               KAFKA_MAX_POLL_INTERVAL_MS="3000")
    port = free_port()
    gateway = _spawn(["shared.dev.gateway", "--port", str(port), "--stack", str(FIXTURES / "stack.yml")],
                     env, tmp_path / "gateway.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(base), timeout=20, what="gateway up")
        response = requests.post(f"{base}/async-function/echo", data=b"durable",
                                 headers={"X-Callback-Url": callback.url})
        assert response.status_code == 202
    finally:
        _stop(gateway)

    worker = _spawn(["shared.dev.queue_worker", "--gateway", dev_stack.gateway, "--group", unique_name("qw")],
                    env, tmp_path / "worker.log")
    try:
        result = callback.next(timeout=40)
        assert result["headers"]["X-Call-Id"] == response.headers["X-Call-Id"]
        assert base64.b64decode(json.loads(result["body"])["body"]) == b"durable"
    finally:
        _stop(worker)

