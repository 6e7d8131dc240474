"""The connector delivers a function's records concurrently, one at a time per key, and commits
only what is finished: a real tansu broker, a real consumer group, and an in-process function
that records when each call started and ended (so the tests assert on overlap, not wall time)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shared.dev import kafka_io
from shared.dev.connector import DeliveryPolicy, FunctionConsumer, Parallelism
from tests.dev.conftest import wait_until


@dataclass
class Call:
    key: str | None
    n: int
    partition: int
    offset: int
    start: float
    end: float


@dataclass
class FakeFunction:
    """What an HTTP function saw: each body is ``{"n": .., "sleep": .., "gate": ..}``; a call with
    a gate waits until the test opens it."""

    port: int = 0
    calls: list[Call] = field(default_factory=list)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    running: int = 0
    most_running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gate(self, name: str) -> threading.Event:
        return self.gates.setdefault(name, threading.Event())

    def by_key(self, key: str | None) -> list[Call]:
        return [c for c in self.calls if c.key == key]


def _handler(function: FakeFunction):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"{}")
            start = time.monotonic()
            with function.lock:
                function.running += 1
                function.most_running = max(function.most_running, function.running)
            if body.get("gate"):
                function.gate(body["gate"]).wait(30)
            time.sleep(body.get("sleep", 0))
            end = time.monotonic()
            with function.lock:
                function.running -= 1
                function.calls.append(Call(self.headers.get("X-Kafka-Key"), body.get("n", -1),
                                           int(self.headers["X-Kafka-Partition"]),
                                           int(self.headers["X-Kafka-Offset"]), start, end))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


class FunctionServer(ThreadingHTTPServer):
    daemon_threads = True
    # http.server's default listen backlog (5) drops a burst of connections beyond it; the
    # client's SYN is retried 1 s later, which would look like the connector holding them back.
    request_queue_size = 64


@pytest.fixture
def function() -> Iterator[FakeFunction]:
    fake = FakeFunction()
    server = FunctionServer(("127.0.0.1", 0), _handler(fake))
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    for gate in list(fake.gates.values()):
        gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def topic(tansu_bootstrap, unique_name, monkeypatch) -> str:
    monkeypatch.setenv("KAFKA_MAX_POLL_INTERVAL_MS", "3000")  # a quick group join on tansu
    name = unique_name("connector-par")
    assert kafka_io.ensure_topics(tansu_bootstrap, [name]) == [name]
    return name


@pytest.fixture
def producer(tansu_bootstrap) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=tansu_bootstrap, acks="all")
    yield client
    client.close()


@pytest.fixture
def start_consumer(tansu_bootstrap, function, unique_name):
    """Start a FunctionConsumer for ``topic`` against the fake function; stopped at the end."""
    started: list[tuple[FunctionConsumer, threading.Event]] = []
    name = unique_name("fn")

    def start(topic: str, **parallelism) -> FunctionConsumer:
        stopping = threading.Event()
        consumer = FunctionConsumer(
            name, [topic], gateway=f"http://127.0.0.1:{function.port}", servers=tansu_bootstrap,
            policy=DeliveryPolicy(max_attempts=3, backoff_base=0.05, backoff_max=0.2, timeout=30),
            stopping=stopping, parallelism=Parallelism(**parallelism))
        consumer.start()
        started.append((consumer, stopping))
        return consumer

    yield start
    for gate in list(function.gates.values()):
        gate.set()
    for consumer, stopping in started:
        stopping.set()
        consumer.join(timeout=15)


def send(producer, topic: str, n: int, key: str | None = None, partition: int | None = None, **body) -> int:
    """Produce one record; returns its offset."""
    value = json.dumps({"n": n, **body}).encode()
    meta = producer.send(topic, value, key=key.encode() if key else None, partition=partition).get(timeout=10)
    return meta.offset


def committed(servers: str, group: str, topic: str, partition: int) -> int | None:
    # committed() only fetches the group's offsets; it does not join the group.
    reader = KafkaConsumer(bootstrap_servers=servers, group_id=group, enable_auto_commit=False)
    try:
        return reader.committed(TopicPartition(topic, partition))
    finally:
        reader.close()


def overlap(a: Call, b: Call) -> bool:
    return a.start < b.end and b.start < a.end


def test_platform_topics_get_several_partitions(tansu_bootstrap, topic, producer):
    assert len(producer.partitions_for(topic)) == 8  # KAFKA_TOPIC_PARTITIONS' default


def test_records_with_different_keys_are_delivered_concurrently(function, topic, producer, start_consumer):
    for n in range(8):
        send(producer, topic, n, key=f"conversation-{n}", sleep=1.0)
    start_consumer(topic, concurrency=8)

    wait_until(lambda: len(function.calls) == 8, timeout=30, what="8 records delivered")

    # All eight calls were running at the same moment: the function saw a batch, not a queue.
    origin = min(c.start for c in function.calls)
    timeline = [(c.partition, round(c.start - origin, 2), round(c.end - origin, 2)) for c in function.calls]
    assert max(c.start for c in function.calls) < min(c.end for c in function.calls), timeline
    assert function.most_running == 8, timeline


def test_records_of_a_key_arrive_in_order_one_at_a_time_while_other_keys_run_alongside(
        function, topic, producer, start_consumer):
    for n in range(5):  # two conversations interleaved in ONE partition
        send(producer, topic, n, key="alice", partition=0, sleep=0.2)
        send(producer, topic, n, key="bob", partition=0, sleep=0.2)
    start_consumer(topic, concurrency=8)

    wait_until(lambda: len(function.calls) == 10, timeout=30, what="10 records delivered")

    for key in ("alice", "bob"):
        calls = sorted(function.by_key(key), key=lambda c: c.start)
        assert [c.n for c in calls] == [0, 1, 2, 3, 4]
        assert all(earlier.end <= later.start for earlier, later in zip(calls, calls[1:]))
    assert any(overlap(a, b) for a in function.by_key("alice") for b in function.by_key("bob"))
    assert function.most_running == 2


def test_records_without_a_key_keep_their_partition_order(function, topic, producer, start_consumer):
    for n in range(4):
        send(producer, topic, n, partition=0, sleep=0.15)
        send(producer, topic, 10 + n, partition=1, sleep=0.15)
    start_consumer(topic, concurrency=8)

    wait_until(lambda: len(function.calls) == 8, timeout=30, what="8 records delivered")

    partitions = {}
    for p in (0, 1):
        calls = sorted((c for c in function.calls if c.partition == p), key=lambda c: c.start)
        assert [c.offset for c in calls] == sorted(c.offset for c in calls)
        assert all(earlier.end <= later.start for earlier, later in zip(calls, calls[1:]))
        partitions[p] = calls
    assert any(overlap(a, b) for a in partitions[0] for b in partitions[1])


def test_a_concurrency_of_one_delivers_one_record_at_a_time(function, topic, producer, start_consumer):
    for n in range(4):
        send(producer, topic, n, key=f"k{n}", sleep=0.1)
    start_consumer(topic, concurrency=1)

    wait_until(lambda: len(function.calls) == 4, timeout=30, what="4 records delivered")

    calls = sorted(function.calls, key=lambda c: c.start)
    assert all(earlier.end <= later.start for earlier, later in zip(calls, calls[1:]))


def test_a_slow_record_holds_the_commit_back_while_later_ones_finish(
        tansu_bootstrap, function, topic, producer, start_consumer):
    first = send(producer, topic, 0, key="warm-up", partition=0)
    consumer = start_consumer(topic, concurrency=8)
    wait_until(lambda: committed(tansu_bootstrap, consumer.group_id, topic, 0) == first + 1,
               what="the first record committed")

    slow = send(producer, topic, 1, key="slow", partition=0, gate="slow")
    last = max(send(producer, topic, n, key=f"fast-{n}", partition=0) for n in range(2, 6))
    wait_until(lambda: {c.n for c in function.calls} >= {2, 3, 4, 5}, what="the later records delivered")
    time.sleep(1.0)  # many commit rounds of the consumer loop

    assert committed(tansu_bootstrap, consumer.group_id, topic, 0) == slow  # not past the slow one

    function.gate("slow").set()
    wait_until(lambda: committed(tansu_bootstrap, consumer.group_id, topic, 0) == last + 1,
               what="the commit past every record once the slow one finished")
    assert sorted(c.n for c in function.calls) == [0, 1, 2, 3, 4, 5]  # each delivered once


def test_back_pressure_pauses_fetching_but_keeps_the_group_membership(
        tansu_bootstrap, function, topic, producer, start_consumer):
    offsets = [send(producer, topic, n, key=f"user-{n}", partition=0, gate="open") for n in range(12)]
    consumer = start_consumer(topic, concurrency=2, max_pending=4)

    wait_until(lambda: function.running == 2, what="two deliveries running")
    time.sleep(4.0)  # longer than max_poll_interval_ms (3 s): only polling keeps the member alive

    assert consumer.paused
    assert consumer.tracker.unfinished == 4  # fetched but unfinished: never more than max_pending
    assert function.most_running == 2

    function.gate("open").set()
    wait_until(lambda: committed(tansu_bootstrap, consumer.group_id, topic, 0) == offsets[-1] + 1,
               timeout=30, what="every record committed")
    assert sorted(c.n for c in function.calls) == list(range(12))  # no re-delivery: no rebalance
    assert not consumer.paused


def test_stopping_abandons_an_unfinished_record_which_is_delivered_again(
        tansu_bootstrap, function, topic, producer, start_consumer):
    stuck = send(producer, topic, 0, key="stuck", partition=0, gate="stuck")
    send(producer, topic, 1, key="quick", partition=0)
    consumer = start_consumer(topic, concurrency=4, stop_grace=0.5)
    wait_until(lambda: function.by_key("quick") and function.running == 1, what="one done, one running")

    consumer.stopping.set()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert committed(tansu_bootstrap, consumer.group_id, topic, 0) == stuck

    function.gate("stuck").set()  # the abandoned call ends (its result does not count)
    again = start_consumer(topic, concurrency=4)
    assert again.group_id == consumer.group_id
    wait_until(lambda: len(function.by_key("stuck")) == 2, what="the stuck record delivered again")
    wait_until(lambda: committed(tansu_bootstrap, again.group_id, topic, 0) == stuck + 2,
               what="both records committed")


def test_the_commit_position_is_the_first_unfinished_offset():
    progress = kafka_io.PartitionProgress()
    assert progress.position() is None
    for offset in (10, 11, 13, 14):  # a gap at 12 (compaction, a transaction marker)
        progress.add(offset)
    progress.finish(11)
    progress.finish(14)
    assert progress.position() == 10 and progress.unfinished == 2
    progress.finish(10)
    assert progress.position() == 13
    progress.finish(13)
    assert progress.position() == 15 and progress.unfinished == 0
    assert not progress.add(14)  # fetched again after a position reset: already handled
    assert progress.add(15) and progress.position() == 15


def test_concurrency_comes_from_the_function_annotation_else_the_environment():
    env = {"CONNECTOR_CONCURRENCY": "3"}
    assert Parallelism.from_env({}, env) == Parallelism(concurrency=3, max_pending=12)
    annotated = Parallelism.from_env({"com.chatfaas.connector.concurrency": "16"}, env)
    assert (annotated.concurrency, annotated.max_pending) == (16, 64)
    assert Parallelism.from_env({}, {}).concurrency == 8
    assert Parallelism.from_env({}, {"CONNECTOR_MAX_PENDING": "20"}).max_pending == 20
    with pytest.raises(ValueError, match="at least 1"):
        Parallelism.from_env({"com.chatfaas.connector.concurrency": "0"}, {})




def test_a_rebalance_hands_unfinished_records_to_the_new_owner_and_loses_none(
        tansu_bootstrap, function, topic, producer, start_consumer):
    # Partitions 0 and 7: the range assignor gives the two members 0-3 and 4-7, so the first
    # member keeps one of them and loses the other while two calls of each are held.
    last = {}
    for n in range(8):
        partition = 0 if n % 2 == 0 else 7
        last[partition] = send(producer, topic, n, key=f"user-{n}", partition=partition,
                               gate="held" if n < 4 else "")
    first = start_consumer(topic, concurrency=8)
    wait_until(lambda: function.running == 4 and len(function.calls) == 4, what="4 held, 4 delivered")
    lost: list = []
    keep_only = first.tracker.keep_only
    first.tracker.keep_only = lambda assigned: lost.extend(keep_only(assigned)) or lost

    start_consumer(topic, concurrency=8)  # joins the same group: the partitions are shared out again
    wait_until(lambda: lost, timeout=30, what="the first member losing a partition")
    assert [tp.partition for tp in lost] in ([0], [7])
    # The finished prefix was committed on revocation: nothing, as the held records come first.
    assert {committed(tansu_bootstrap, first.group_id, topic, p) for p in (0, 7)} <= {None, 0}

    function.gate("held").set()
    for partition in (0, 7):
        wait_until(lambda: committed(tansu_bootstrap, first.group_id, topic, partition) == last[partition] + 1,
                   timeout=30, what=f"partition {partition} committed to its end")
    delivered = [c.n for c in function.calls]
    assert set(delivered) == set(range(8))
    moved = [n for n in range(4) if (0 if n % 2 == 0 else 7) == lost[0].partition]
    assert all(delivered.count(n) == 2 for n in moved)  # abandoned, then delivered by the new owner
    assert all(delivered.count(n) == 1 for n in set(range(4)) - set(moved))  # kept: finished in place


def test_what_finished_is_committed_when_a_rebalance_takes_the_partitions(
        tansu_bootstrap, function, topic, producer, start_consumer, monkeypatch):
    # The loop's own commits are switched off: only the rebalance listener's commit is left.
    monkeypatch.setattr(kafka_io, "commit_positions", lambda consumer, positions: False)
    last = {p: max(send(producer, topic, n, key=f"user-{p}-{n}", partition=p) for n in range(3)) for p in (0, 7)}
    first = start_consumer(topic, concurrency=8)
    wait_until(lambda: len(function.calls) == 6, what="6 records delivered")
    assert {committed(tansu_bootstrap, first.group_id, topic, p) for p in (0, 7)} == {None}

    start_consumer(topic, concurrency=8)  # the rebalance revokes every partition of the first member
    for partition in (0, 7):
        wait_until(lambda: committed(tansu_bootstrap, first.group_id, topic, partition) == last[partition] + 1,
                   timeout=30, what=f"partition {partition} committed on revocation")
    time.sleep(1.0)
    assert len(function.calls) == 6  # the new owner did not deliver them again
