"""One contract for every cache backend: in-process memory, a shared SQLite file, real Redis."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shared.errors import UnavailableError
from shared.storage.cache import (
    InvalidEntryId,
    MemoryCache,
    MemoryStore,
    RedisCache,
    SQLiteCache,
    cache_from_env,
    reset_memory_caches,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request, tmp_path):
    """(name, make) where make(namespace) builds a cache of the backend over shared storage."""
    opened = []
    if request.param == "memory":
        store = MemoryStore()

        def make(namespace="t"):
            return MemoryCache(namespace, store=store)
    elif request.param == "sqlite":
        path = tmp_path / "cache.sqlite3"

        def make(namespace="t"):
            opened.append(SQLiteCache(path, namespace))
            return opened[-1]
    else:
        url = request.getfixturevalue("redis_url")

        def make(namespace="t"):
            opened.append(RedisCache(url, namespace))
            return opened[-1]

    yield request.param, make
    for cache in opened:
        cache.close()


@pytest.fixture
def cache(backend):
    return backend[1]()


# --------------------------------------------------------------------------- keys

def test_set_then_get_returns_bytes(cache):
    cache.set("k", "héllo")
    cache.set("b", b"\x00\xff")
    assert cache.get("k") == "héllo".encode()
    assert cache.get("b") == b"\x00\xff"
    assert cache.get("missing") is None


def test_set_overwrites_and_delete_reports_whether_the_key_existed(cache):
    cache.set("k", "1")
    cache.set("k", "2")
    assert cache.get("k") == b"2"
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.get("k") is None


def test_json_round_trip(cache):
    cache.set_json("doc", {"a": [1, 2], "b": None, "c": "é"})
    assert cache.get_json("doc") == {"a": [1, 2], "b": None, "c": "é"}
    assert cache.get_json("missing") is None


def test_a_key_expires_after_its_ttl(cache):
    cache.set("short", "v", ttl=0.3)
    cache.set("long", "v", ttl=30)
    cache.set("forever", "v")
    assert cache.get("short") == b"v"
    assert 0 < cache.ttl("short") <= 0.3
    assert 29 < cache.ttl("long") <= 30
    assert cache.ttl("forever") is None
    time.sleep(0.5)
    assert cache.get("short") is None
    assert cache.ttl("short") is None
    assert cache.get("long") == b"v"


def test_set_if_absent_stores_only_the_first_value(cache):
    assert cache.set_if_absent("lock", "a", ttl=30) is True
    assert cache.set_if_absent("lock", "b", ttl=30) is False
    assert cache.get("lock") == b"a"


def test_set_if_absent_succeeds_again_once_the_key_expired(cache):
    assert cache.set_if_absent("lock", "a", ttl=0.2) is True
    time.sleep(0.35)
    assert cache.set_if_absent("lock", "b", ttl=5) is True
    assert cache.get("lock") == b"b"


def test_set_if_absent_has_exactly_one_winner_among_threads(backend):
    _, make = backend
    caches = [make() for _ in range(8)]
    wins = []
    barrier = threading.Barrier(len(caches))

    def race(c, i):
        barrier.wait()
        if c.set_if_absent("only-one", str(i), ttl=30):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(c, i)) for i, c in enumerate(caches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1
    assert caches[0].get("only-one") == str(wins[0]).encode()


def test_a_non_positive_ttl_is_refused(cache):
    with pytest.raises(ValueError):
        cache.set("k", "v", ttl=0)


# --------------------------------------------------------------------------- counters

def test_incr_counts_from_zero_and_by_amount(cache):
    assert cache.incr("n") == 1
    assert cache.incr("n", 5) == 6
    assert cache.incr("n", -2) == 4
    assert cache.get("n") == b"4"


def test_incr_sets_the_ttl_only_when_it_creates_the_key(cache):
    cache.incr("window", ttl=0.4)
    time.sleep(0.2)
    cache.incr("window", ttl=10)  # must not push the window's end
    assert cache.ttl("window") <= 0.25
    time.sleep(0.3)
    assert cache.get("window") is None
    assert cache.incr("window", ttl=10) == 1


def test_incr_on_a_text_value_is_an_error(cache):
    cache.set("word", "abc")
    with pytest.raises(ValueError):
        cache.incr("word")


def test_incr_is_atomic_under_threads(backend):
    _, make = backend
    caches = [make() for _ in range(4)]

    def bump(c):
        for _ in range(50):
            c.incr("hits", ttl=60)

    threads = [threading.Thread(target=bump, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert caches[0].get("hits") == b"200"


# --------------------------------------------------------------------------- namespaces

def test_namespaces_do_not_see_each_other(backend):
    _, make = backend
    auth, users = make("auth"), make("users")
    auth.set("k", "a")
    users.set("k", "u")
    auth.channel_append("ch", "a", ttl=30)
    assert auth.get("k") == b"a" and users.get("k") == b"u"
    assert users.channel_read("ch", None, 0) == []
    users.delete("k")
    assert auth.get("k") == b"a"


def test_two_instances_over_the_same_storage_share_data(backend):
    _, make = backend
    writer, reader = make("same"), make("same")
    writer.set("k", "v", ttl=30)
    assert reader.get("k") == b"v"


# --------------------------------------------------------------------------- channels

def test_channel_replays_from_the_beginning(cache):
    ids = [cache.channel_append("tokens", f"t{i}", ttl=30) for i in range(5)]
    entries = cache.channel_read("tokens", None, 0)
    assert [data for _, data in entries] == [b"t0", b"t1", b"t2", b"t3", b"t4"]
    assert [entry_id for entry_id, _ in entries] == ids
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_channel_read_after_an_id_returns_only_later_entries(cache):
    ids = [cache.channel_append("tokens", f"t{i}", ttl=30) for i in range(4)]
    assert [d for _, d in cache.channel_read("tokens", ids[1], 0)] == [b"t2", b"t3"]
    assert cache.channel_read("tokens", ids[-1], 0) == []


def test_channel_read_on_an_unknown_channel_waits_then_returns_nothing(cache):
    started = time.monotonic()
    assert cache.channel_read("nobody", None, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0


def test_a_blocked_reader_wakes_up_when_an_entry_arrives(backend):
    _, make = backend
    reader, writer = make(), make()
    last = writer.channel_append("live", "first", ttl=30)
    got = {}

    def read():
        started = time.monotonic()
        got["entries"] = reader.channel_read("live", last, 5.0)
        got["waited"] = time.monotonic() - started

    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(0.3)
    writer.channel_append("live", "second", ttl=30)
    thread.join(10)
    assert [d for _, d in got["entries"]] == [b"second"]
    assert 0.2 <= got["waited"] < 2.0


@pytest.mark.parametrize("bad", ["not-an-id", "-5", "1-2-3"])
def test_a_forged_entry_id_is_a_bad_request(cache, bad):
    cache.channel_append("tokens", "t", ttl=30)
    with pytest.raises(InvalidEntryId) as info:
        cache.channel_read("tokens", bad, 0)
    assert info.value.status == 400 and isinstance(info.value, ValueError)


def test_a_channel_expires_ttl_after_its_last_append(cache):
    cache.channel_append("brief", "a", ttl=0.3)
    time.sleep(0.2)
    cache.channel_append("brief", "b", ttl=0.3)  # renews the channel
    time.sleep(0.2)
    assert [d for _, d in cache.channel_read("brief", None, 0)] == [b"a", b"b"]
    time.sleep(0.3)
    assert cache.channel_read("brief", None, 0) == []


def test_channel_iter_follows_a_stream_until_it_goes_quiet(backend):
    _, make = backend
    reader, writer = make(), make()

    def produce():
        for i in range(3):
            writer.channel_append("s", f"x{i}", ttl=30)
            time.sleep(0.05)

    thread = threading.Thread(target=produce)
    thread.start()
    data = [d for _, d in reader.channel_iter("s", idle_timeout=0.5)]
    thread.join(5)
    assert data == [b"x0", b"x1", b"x2"]


# --------------------------------------------------------------------------- across processes

CHILD = """
import sys, time
from shared.storage.cache import SQLiteCache, RedisCache
kind, target = sys.argv[1], sys.argv[2]
cache = SQLiteCache(target, 'xp') if kind == 'sqlite' else RedisCache(target, 'xp')
cache.set('from-child', 'hello', ttl=30)
for i in range(3):
    cache.channel_append('stream', f'c{i}', ttl=30)
    time.sleep(0.05)
print(cache.get('from-parent').decode())
"""


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_another_process_sees_keys_and_channel_entries(kind, tmp_path, request):
    target = str(tmp_path / "cache.sqlite3") if kind == "sqlite" else request.getfixturevalue("redis_url")
    cache = SQLiteCache(target, "xp") if kind == "sqlite" else RedisCache(target, "xp")
    cache.set("from-parent", "hi child", ttl=30)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, target], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    entries, after = [], None
    deadline = time.monotonic() + 20
    while len(entries) < 3 and time.monotonic() < deadline:
        batch = cache.channel_read("stream", after, 1.0)
        entries += batch
        after = batch[-1][0] if batch else after
    out, _ = child.communicate(timeout=20)
    assert child.returncode == 0
    assert out.strip() == "hi child"
    assert [d for _, d in entries] == [b"c0", b"c1", b"c2"]
    assert cache.get("from-child") == b"hello"
    cache.close()


# --------------------------------------------------------------------------- factory and failures

def test_cache_from_env_picks_the_backend(monkeypatch, tmp_path, redis_url):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    default = cache_from_env("auth")
    assert isinstance(default, SQLiteCache) and default.path == str(tmp_path / "cache.sqlite3")
    default.close()
    monkeypatch.setenv("CACHE_BACKEND", "memory")
    mem = cache_from_env("auth")
    assert isinstance(mem, MemoryCache)
    mem.set("k", "shared in this process")
    assert cache_from_env("auth").get("k") == b"shared in this process"
    assert cache_from_env("users").get("k") is None
    reset_memory_caches()
    assert cache_from_env("auth").get("k") is None
    monkeypatch.setenv("REDIS_URL", redis_url)
    red = cache_from_env("auth")
    assert isinstance(red, RedisCache) and red.namespace == "auth"
    red.set("k", "v")
    import redis

    assert redis.Redis.from_url(redis_url).get("auth:k") == b"v"
    red.close()


def test_an_unreachable_redis_raises_unavailable():
    cache = RedisCache("redis://127.0.0.1:1/0", "t", connect_timeout=0.5)
    with pytest.raises(UnavailableError) as info:
        cache.get("k")
    assert info.value.status == 503
    with pytest.raises(UnavailableError):
        cache.channel_read("c", None, 0.1)


def test_memory_cache_drops_expired_keys_nobody_reads_again():
    now = [1000.0]
    cache = MemoryCache("t", clock=lambda: now[0])
    for i in range(100):
        cache.set(f"once-{i}", "v", ttl=1)
    cache.channel_append("old", "x", ttl=1)
    now[0] += MemoryCache.SWEEP_EVERY + 1
    cache.set("fresh", "v")
    assert list(cache.store.items) == ["t:fresh"] and cache.store.channels == {}


def test_sqlite_cache_sweeps_expired_rows_from_the_file(tmp_path):
    import sqlite3

    cache = SQLiteCache(tmp_path / "c.sqlite3", "t")
    cache.set("gone", "v", ttl=0.1)
    cache.channel_append("old", "x", ttl=0.1)
    time.sleep(0.2)
    cache._next_sweep = 0  # the next write sweeps
    cache.set("kept", "v")
    rows = sqlite3.connect(tmp_path / "c.sqlite3").execute(
        "SELECT (SELECT COUNT(*) FROM cache_items), (SELECT COUNT(*) FROM cache_channel_entries)"
    ).fetchone()
    assert rows == (1, 0)
    cache.close()
