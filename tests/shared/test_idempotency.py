"""The idempotency decorator over every cache backend (memory, SQLite file, Redis)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shared.errors import ConflictError, UnavailableError
from shared.events import CloudEvent
from shared.idempotency import IdempotencyStore, idempotent, payload_hash
from shared.storage.cache import MemoryCache, RedisCache, SQLiteCache

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def cache(request, tmp_path):
    if request.param == "memory":
        yield MemoryCache("idem")
        return
    made = (
        SQLiteCache(tmp_path / "cache.sqlite3", "idem")
        if request.param == "sqlite"
        else RedisCache(request.getfixturevalue("redis_url"), "idem")
    )
    yield made
    made.close()


def event(event_id="e1", data=None, type="inference.result.completed"):
    return CloudEvent(id=event_id, source="/test", type=type, data={"n": 1} if data is None else data)


class Handler:
    """A handler that counts its runs and can be told to fail or to block."""

    def __init__(self):
        self.runs = 0
        self.fail = False
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, evt):
        self.runs += 1
        self.started.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("handler failed")
        return {"stored": evt.data, "run": self.runs}


def make(cache, **store_options):
    handler = Handler()
    wrapped = idempotent(lambda: IdempotencyStore(cache, **store_options), name="test.handler")(handler)
    return handler, wrapped


def test_a_repeated_event_runs_once_and_returns_the_first_result(cache):
    handler, handle = make(cache)
    first = handle(event())
    assert handle(event()) == first == {"stored": {"n": 1}, "run": 1}
    assert handler.runs == 1


def test_different_events_each_run(cache):
    handler, handle = make(cache)
    handle(event("e1"))
    handle(event("e2"))
    assert handler.runs == 2


def test_a_failed_run_is_forgotten_so_a_retry_runs_again(cache):
    handler, handle = make(cache)
    handler.fail = True
    with pytest.raises(RuntimeError):
        handle(event())
    handler.fail = False
    assert handle(event()) == {"stored": {"n": 1}, "run": 2}
    assert handler.runs == 2


def test_the_same_key_with_a_different_payload_is_a_conflict(cache):
    handler, handle = make(cache)
    handle(event(data={"n": 1}))
    with pytest.raises(ConflictError) as info:
        handle(event(data={"n": 2}))
    assert info.value.code == "idempotency_key_reused" and info.value.status == 409
    assert handler.runs == 1


def test_payload_key_order_does_not_matter(cache):
    handler, handle = make(cache)
    handle(event(data={"a": 1, "b": 2}))
    handle(event(data={"b": 2, "a": 1}))
    assert handler.runs == 1
    assert payload_hash({"a": 1, "b": 2}) == payload_hash({"b": 2, "a": 1})


def test_a_duplicate_while_the_first_runs_is_refused_as_in_progress(cache):
    handler, handle = make(cache)
    handler.release.clear()
    first = threading.Thread(target=handle, args=(event(),))
    first.start()
    assert handler.started.wait(5)
    try:
        with pytest.raises(ConflictError) as info:
            handle(event())
        assert info.value.code == "in_progress" and "Retry-After" in info.value.headers
    finally:
        handler.release.set()
        first.join(10)
    assert handler.runs == 1


def test_a_duplicate_may_wait_for_the_first_result(cache):
    handler, handle = make(cache, wait_for_in_progress=5)
    handler.release.clear()
    first = threading.Thread(target=handle, args=(event(),))
    first.start()
    assert handler.started.wait(5)
    threading.Timer(0.3, handler.release.set).start()
    assert handle(event()) == {"stored": {"n": 1}, "run": 1}
    first.join(10)
    assert handler.runs == 1


def test_a_crashed_workers_claim_expires_and_a_redelivery_runs(cache):
    handler, handle = make(cache, in_progress_ttl=0.3)
    store = IdempotencyStore(cache, in_progress_ttl=0.3)
    # What a worker that died mid-run leaves behind: an in-progress claim, never completed.
    assert cache.set_if_absent("idempotency:test.handler:e1", '{"status":"in_progress","hash":"x","token":"t"}', ttl=0.3)
    assert store.get("test.handler:e1").status == "in_progress"
    time.sleep(0.45)
    assert handle(event(data={"n": 1}))["run"] == 1


def test_completed_records_expire_after_their_lifetime(cache):
    handler, handle = make(cache, expires_after=0.3)
    handle(event())
    time.sleep(0.45)
    handle(event())
    assert handler.runs == 2


def test_two_handlers_of_one_event_keep_separate_records(cache):
    calls = []
    store = lambda: IdempotencyStore(cache)  # noqa: E731

    @idempotent(store)
    def store_message(evt):
        calls.append("store")
        return "stored"

    @idempotent(store)
    def notify(evt):
        calls.append("notify")
        return "notified"

    assert (store_message(event()), notify(event()), store_message(event())) == ("stored", "notified", "stored")
    assert calls == ["store", "notify"]


def test_a_custom_key_and_a_method_handler(cache):
    class Service:
        def __init__(self):
            self.runs = 0

        @idempotent(lambda: cache, key=lambda self, request_id, text: request_id)
        def save(self, request_id, text):
            self.runs += 1
            return {"id": request_id, "text": text}

    service = Service()
    assert service.save("r1", "a") == service.save("r1", "a") == {"id": "r1", "text": "a"}
    assert service.runs == 1
    with pytest.raises(ConflictError):
        service.save("r1", "b")


def test_a_call_without_a_key_is_refused_unless_allowed(cache):
    handler = Handler()
    strict = idempotent(lambda: cache, key=lambda evt: None)(handler)
    lenient = idempotent(lambda: cache, key=lambda evt: None, required=False)(handler)
    with pytest.raises(ValueError):
        strict(event())
    lenient(event())
    lenient(event())
    assert handler.runs == 2


def test_concurrent_deliveries_run_the_handler_once(cache):
    handler, handle = make(cache, wait_for_in_progress=10)
    results = []

    def deliver():
        results.append(handle(event()))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert handler.runs == 1
    assert results == [{"stored": {"n": 1}, "run": 1}] * 6


def test_the_store_is_built_once_lazily():
    built = []

    def factory():
        built.append(1)
        return MemoryCache()

    decorated = idempotent(factory)(lambda evt: "ok")
    assert built == []
    decorated(event("a"))
    decorated(event("b"))
    assert built == [1]


def test_an_unreachable_cache_is_unavailable_not_a_second_run():
    handler, handle = make(RedisCache("redis://127.0.0.1:1/0", connect_timeout=0.5))
    with pytest.raises(UnavailableError):
        handle(event())
    assert handler.runs == 0


CHILD = """
import sys
from shared.events import CloudEvent
from shared.idempotency import IdempotencyStore, idempotent
from shared.storage.cache import SQLiteCache
cache = SQLiteCache(sys.argv[1], "idem")

@idempotent(lambda: IdempotencyStore(cache, wait_for_in_progress=20), name="xp")
def handle(evt):
    with open(sys.argv[2], "a") as runs:
        runs.write("run\\n")
    return {"pid": __import__("os").getpid()}

print(handle(CloudEvent("same", "/t", "a.b.c", data={"k": 1}))["pid"])
"""


def test_processes_sharing_the_sqlite_cache_run_an_event_once(tmp_path):
    runs = tmp_path / "runs.txt"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path / "cache.sqlite3"), str(runs)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert runs.read_text() == "run\n"
    assert len(set(outputs)) == 1  # everyone got the first run's result
