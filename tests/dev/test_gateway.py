"""The dev gateway, through a real stack: OpenFaaS routes, streaming, errors, metrics."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.dev.supervisor import REPO_ROOT
from tests.dev.conftest import FIXTURES, free_port, healthy, wait_until


def test_request_reaches_the_function_with_method_path_query_headers_and_body(dev_stack):
    response = requests.put(f"{dev_stack.gateway}/function/echo/items/a%2Fb?q=1&q=2&x=%20y",
                            data=b"\x00binary body", headers={"X-Custom": "kept", "Authorization": "Bearer t"})

    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "PUT"
    assert seen["raw_uri"] == "/items/a%2Fb?q=1&q=2&x=%20y"  # not re-encoded or decoded on the way
    assert seen["query"] == "q=1&q=2&x=%20y"
    assert base64.b64decode(seen["body"]) == b"\x00binary body"
    assert seen["headers"]["x-custom"] == "kept"
    assert seen["headers"]["authorization"] == "Bearer t"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == dev_stack.gateway.removeprefix("http://")
    assert seen["headers"]["x-call-id"] == response.headers["X-Call-Id"]
    assert seen["headers"]["x-request-id"] == response.headers["X-Call-Id"]
    assert response.headers["X-Echo"] == "yes"


def test_bare_function_route_calls_the_function_root(dev_stack):
    seen = requests.post(f"{dev_stack.gateway}/function/echo", json={"a": 1}).json()

    assert seen["path"] == "/"
    assert json.loads(base64.b64decode(seen["body"])) == {"a": 1}


def test_a_caller_supplied_call_id_is_kept(dev_stack):
    response = requests.get(f"{dev_stack.gateway}/function/echo", headers={"X-Call-Id": "call-42"})

    assert response.headers["X-Call-Id"] == "call-42"
    assert response.json()["headers"]["x-call-id"] == "call-42"


def test_function_errors_pass_through_unchanged(dev_stack):
    response = requests.post(f"{dev_stack.gateway}/function/picky", json={"bad": True})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_sse_events_arrive_while_the_function_is_still_producing(dev_stack):
    with requests.get(f"{dev_stack.gateway}/function/sse/stream", stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in response.headers
        arrivals = []
        buffer = b""
        for chunk in response.iter_content(chunk_size=None):
            arrivals.append(time.time())
            buffer += chunk
            if b"[DONE]" in buffer:
                break
    events = [json.loads(line[6:]) for line in buffer.decode().splitlines()
              if line.startswith("data: {")]
    assert [e["index"] for e in events] == [0, 1, 2, 3]
    # The first event was in the client's hands before the function had produced the last one.
    assert arrivals[0] < events[-1]["produced_at"]
    assert len(arrivals) >= 3


def test_unknown_function_is_a_404_json_error(dev_stack):
    response = requests.get(f"{dev_stack.gateway}/function/nope/x")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "function_not_found"


def test_system_functions_lists_every_stack_function_like_faas_cli_expects(dev_stack):
    functions = {f["name"]: f for f in requests.get(f"{dev_stack.gateway}/system/functions").json()}

    assert set(functions) == {"echo", "sse", "flaky", "picky"}
    echo = functions["echo"]
    assert echo["image"] == "chatfaas-test/echo:dev"
    assert echo["replicas"] == 1 and echo["availableReplicas"] == 1
    assert echo["labels"] == {"com.openfaas.scale.min": "1"}
    assert echo["annotations"]["topic"] == dev_stack.topic("echo")
    assert "functions-framework --target echo" == echo["envProcess"]
    assert requests.get(f"{dev_stack.gateway}/system/function/echo").json()["name"] == "echo"
    assert requests.get(f"{dev_stack.gateway}/healthz").status_code == 200


def _counter(metrics: str, function: str, code: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if (sample.name == "gateway_function_invocation_total"
                    and sample.labels == {"function_name": function, "code": code}):
                return sample.value
    return 0.0


def test_metrics_count_invocations_by_function_and_status(dev_stack):
    before = requests.get(f"{dev_stack.gateway}/metrics").text
    requests.get(f"{dev_stack.gateway}/function/echo")
    requests.get(f"{dev_stack.gateway}/function/echo")
    requests.post(f"{dev_stack.gateway}/function/picky", json={"bad": True})
    after = requests.get(f"{dev_stack.gateway}/metrics").text

    assert _counter(after, "echo", "200") - _counter(before, "echo", "200") == 2
    assert _counter(after, "picky", "400") - _counter(before, "picky", "400") == 1
    assert 'gateway_functions_seconds_count{function_name="echo"}' in after


def _gateway(tmp_path, env_extra: dict, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **env_extra)
    with open(tmp_path / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "shared.dev.gateway", "--port", str(port),
                                 "--stack", str(FIXTURES / "stack.yml"), *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(base), timeout=20, what="gateway up")
    except BaseException:
        proc.terminate()
        raise
    return proc, base


def test_a_function_that_is_down_is_a_json_502_and_one_not_started_a_503(tmp_path):
    proc, base = _gateway(tmp_path, {"FUNCTION_URL_ECHO": f"http://127.0.0.1:{free_port()}"})
    try:
        down = requests.get(f"{base}/function/echo")
        assert down.status_code == 502
        assert down.json()["error"]["code"] == "bad_gateway"

        not_started = requests.get(f"{base}/function/sse")
        assert not_started.status_code == 503
        assert not_started.json()["error"]["code"] == "function_unavailable"
        assert not_started.headers["Retry-After"] == "1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_function_silent_for_longer_than_the_read_timeout_is_a_json_504(dev_stack, tmp_path):
    proc, base = _gateway(tmp_path, {"FUNCTION_URL_ECHO": dev_stack.url("echo")}, "--read-timeout", "0.5")
    try:
        quick = requests.get(f"{base}/function/echo?sleep=0")
        slow = requests.get(f"{base}/function/echo?sleep=2")

        assert quick.status_code == 200
        assert slow.status_code == 504
        assert slow.json()["error"]["code"] == "gateway_timeout"
    finally:
        proc.terminate()
        proc.wait(10)
