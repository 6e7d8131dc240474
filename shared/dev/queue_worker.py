"""Runs the calls queued by ``/async-function/NAME`` (OpenFaaS queue-worker semantics).

Consumes ``gateway.async`` in the consumer group ``gateway-queue-worker``; for each record it
invokes the function through the gateway (so the call is counted in its metrics), then, when the
caller gave ``X-Callback-Url``, POSTs the function's response there with ``X-Call-Id``,
``X-Function-Status``, ``X-Duration-Seconds`` (and ``X-Function-Name``). The callback is retried
a few times; the offset is committed after the callback attempt, whatever its outcome (a broken
callback receiver must not replay the function call forever).

It runs as its own process (the supervisor starts it): ``python -m shared.dev.queue_worker
--gateway http://127.0.0.1:8080``.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import requests

from shared.dev import kafka_io
from shared.dev.logs import setup_logging

log = logging.getLogger("shared.dev.queue_worker")

GROUP_ID = "gateway-queue-worker"
# Headers the gateway or requests recompute; never forwarded as-is.
SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "x-callback-url"})


@dataclass
class Outcome:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


class QueueWorker:
    def __init__(self, gateway: str, servers: str, *, topic: str = kafka_io.ASYNC_TOPIC,
                 group_id: str = GROUP_ID, invoke_timeout: float = 300.0,
                 callback_attempts: int = 3, callback_backoff: float = 0.5) -> None:
        self.gateway = gateway.rstrip("/")
        self.servers = servers
        self.topic = topic
        self.group_id = group_id
        self.invoke_timeout = invoke_timeout
        self.callback_attempts = callback_attempts
        self.callback_backoff = callback_backoff
        self.stopping = threading.Event()
        self.http = requests.Session()

    def invoke(self, call: dict) -> Outcome:
        headers = {k: v for k, v in call.get("headers", {}).items() if k.lower() not in SKIP_HEADERS}
        headers["X-Call-Id"] = call["callId"]
        url = f"{self.gateway}/function/{call['function']}{call.get('path') or '/'}"
        if call.get("query"):
            url += "?" + call["query"]
        started = time.monotonic()
        try:
            response = self.http.request(call.get("method", "POST"), url, headers=headers,
                                         data=base64.b64decode(call.get("body") or ""),
                                         timeout=self.invoke_timeout)
            status, body = response.status_code, response.content
            out_headers = {k: v for k, v in response.headers.items() if k.lower() not in SKIP_HEADERS}
        except requests.RequestException as exc:
            status, body, out_headers = 502, json.dumps(
                {"error": {"code": "bad_gateway", "message": str(exc.__class__.__name__)}}).encode(), {}
        return Outcome(status, out_headers, body, time.monotonic() - started)

    def callback(self, call: dict, outcome: Outcome) -> bool:
        url = next((v for k, v in call.get("headers", {}).items() if k.lower() == "x-callback-url"), None)
        if not url:
            return True
        headers = dict(outcome.headers)
        headers.update({
            "X-Call-Id": call["callId"],
            "X-Function-Name": call["function"],
            "X-Function-Status": str(outcome.status),
            "X-Duration-Seconds": f"{outcome.seconds:.6f}",
        })
        for attempt in range(1, self.callback_attempts + 1):
            try:
                response = self.http.post(url, data=outcome.body, headers=headers, timeout=30)
                if response.status_code < 500:
                    return True
                log.warning("callback %s for %s answered %d", url, call["callId"], response.status_code)
            except requests.RequestException as exc:
                log.warning("callback %s for %s failed: %s", url, call["callId"], exc)
            if attempt < self.callback_attempts:
                self.stopping.wait(self.callback_backoff * 2 ** (attempt - 1))
        return False

    def handle(self, value: bytes) -> None:
        try:
            call = json.loads(value)
            call["callId"], call["function"]
        except (ValueError, KeyError, TypeError):
            log.error("dropping a malformed queued call: %r", value[:200])
            return
        outcome = self.invoke(call)
        delivered = self.callback(call, outcome)
        log.info("call %s → %s %d in %.3fs (callback %s)", call["callId"], call["function"],
                 outcome.status, outcome.seconds, "ok" if delivered else "failed")

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(self.topic, bootstrap_servers=self.servers, group_id=self.group_id,
                                 client_id="gateway-queue-worker", **kafka_io.consumer_settings())
        log.info("queue worker consuming %s as %s", self.topic, self.group_id)
        try:
            while not self.stopping.is_set():
                for partition, records in consumer.poll(timeout_ms=500).items():
                    for record in records:
                        kafka_io.run_while_polling(consumer, self.handle, record.value)
                        kafka_io.commit(consumer, partition, record.offset)
        finally:
            consumer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Runs calls queued by /async-function/NAME")
    parser.add_argument("--gateway", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--topic", default=os.environ.get("GATEWAY_ASYNC_TOPIC", kafka_io.ASYNC_TOPIC))
    parser.add_argument("--group", default=os.environ.get("QUEUE_WORKER_GROUP", GROUP_ID))
    args = parser.parse_args(argv)
    setup_logging()
    servers = kafka_io.bootstrap_servers(args.bootstrap_servers)
    if not servers:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is not set")
    worker = QueueWorker(args.gateway, servers, topic=args.topic, group_id=args.group,
                         invoke_timeout=float(os.environ.get("QUEUE_WORKER_TIMEOUT", "300")))
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stopping.set())
    worker.run()


if __name__ == "__main__":
    main()
