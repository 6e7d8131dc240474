"""Cache: keys with TTLs, atomic counters, and replayable append-only channels.

Three backends behind one interface:

- ``MemoryCache``: one process (tests, single-process dev).
- ``SQLiteCache(path)``: a file shared by the processes of the embedded dev stack; TTLs are
  checked on every read and expired rows are swept now and then; ``channel_read`` polls.
- ``RedisCache(url)``: production. Channels are Redis Streams (XADD / XREAD BLOCK) with EXPIRE.

Every key and channel lives under a namespace (``<namespace>:<key>``), so components sharing one
Redis or one SQLite file never collide. Values are bytes (``str`` is stored as UTF-8).

Channels carry token streams: ``channel_append`` returns an opaque, increasing entry id;
``channel_read(channel, after, timeout)`` returns the entries after ``after`` (``None``: from
the beginning), waiting up to ``timeout`` seconds when there are none yet, so a client that
reconnects with its last id misses nothing. Each append renews the channel's TTL.

Backend errors become ``UnavailableError``. ``incr`` on a value that is not an integer raises
``ValueError`` (a programming error, not a client's). An ``after`` id the backend never issued
(e.g. a forged ``Last-Event-ID``) raises ``InvalidEntryId``, a 400 that is also a ``ValueError``.
"""
from __future__ import annotations

import bisect
import json
import os
import random
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Mapping

from shared.config import data_dir
from shared.errors import BadRequestError, UnavailableError

__all__ = ["Cache", "MemoryCache", "MemoryStore", "InvalidEntryId", "reset_memory_caches", "SQLiteCache", "RedisCache", "cache_from_env"]

Entry = tuple[str, bytes]


class InvalidEntryId(BadRequestError, ValueError):
    """A channel entry id that this backend never issued (often a client's Last-Event-ID): a 400."""

    code = "invalid_cursor"


def _to_bytes(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    raise TypeError(f"cache values are bytes or str, not {type(value).__name__}")


def _check_ttl(ttl: float | None) -> float | None:
    if ttl is not None and ttl <= 0:
        raise ValueError("ttl must be positive (or None for no expiry)")
    return ttl


class Cache(ABC):
    """A namespaced key-value cache with TTLs, counters and replayable channels."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace

    def _key(self, key: str) -> str:
        return f"{self.namespace}:{key}" if self.namespace else key

    # -- primitives each backend implements (keys already namespaced)
    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _set(self, key: str, value: bytes, ttl: float | None, only_if_absent: bool) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> bool: ...

    @abstractmethod
    def _incr(self, key: str, amount: int, ttl: float | None) -> int: ...

    @abstractmethod
    def _ttl(self, key: str) -> float | None: ...

    @abstractmethod
    def _channel_append(self, channel: str, data: bytes, ttl: float) -> str: ...

    @abstractmethod
    def _channel_read(self, channel: str, after: str | None, timeout: float) -> list[Entry]: ...

    def close(self) -> None:
        """Release connections; the cache must not be used afterwards."""

    # -- the public interface
    def get(self, key: str) -> bytes | None:
        return self._get(self._key(key))

    def set(self, key: str, value: bytes | str, ttl: float | None = None) -> None:
        self._set(self._key(key), _to_bytes(value), _check_ttl(ttl), False)

    def set_if_absent(self, key: str, value: bytes | str, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` holds nothing (or expired); True when it was stored."""
        return self._set(self._key(key), _to_bytes(value), _check_ttl(ttl), True)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""
        return self._delete(self._key(key))

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` atomically and return the new value; ``ttl`` is set when the key is created."""
        return self._incr(self._key(key), int(amount), _check_ttl(ttl))

    def ttl(self, key: str) -> float | None:
        """Seconds left before ``key`` expires; None when it is missing or never expires."""
        return self._ttl(self._key(key))

    def get_json(self, key: str) -> Any:
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def set_json(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.set(key, json.dumps(value, separators=(",", ":"), default=str), ttl)

    def channel_append(self, channel: str, data: bytes | str, ttl: float) -> str:
        """Append an entry; return its id. The channel expires ``ttl`` seconds after the last append."""
        return self._channel_append(self._key(channel), _to_bytes(data), _check_ttl(ttl) or 0)

    def channel_read(self, channel: str, after: str | None = None, timeout: float = 0.0) -> list[Entry]:
        """Entries after ``after`` (None: from the start), waiting up to ``timeout`` s for the first one."""
        return self._channel_read(self._key(channel), after, max(0.0, timeout))

    def channel_iter(self, channel: str, after: str | None = None, *, idle_timeout: float = 30.0) -> Iterator[Entry]:
        """Yield entries as they come; stop once nothing arrives for ``idle_timeout`` seconds."""
        while True:
            entries = self.channel_read(channel, after, idle_timeout)
            if not entries:
                return
            for entry in entries:
                yield entry
            after = entries[-1][0]

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- memory

def _format_seq(seq: int) -> str:
    # Zero-padded so ids also sort as strings.
    return f"{seq:016d}"


def _parse_seq(entry_id: str | None) -> int:
    if entry_id is None or entry_id == "":
        return 0
    try:
        seq = int(entry_id)
    except ValueError:
        raise InvalidEntryId(f"not a stream position: {entry_id!r}") from None
    if seq < 0:
        raise InvalidEntryId(f"not a stream position: {entry_id!r}")
    return seq


class MemoryStore:
    """The data behind memory caches; share one between caches to share their contents."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[bytes, float | None]] = {}
        self.channels: dict[str, tuple[list[Entry], float]] = {}
        self.seq = 0
        self.next_sweep = 0.0
        self.cond = threading.Condition()

    def clear(self) -> None:
        with self.cond:
            self.items.clear()
            self.channels.clear()


class MemoryCache(Cache):
    """An in-process cache (a dict under a lock); channels wake readers with a condition."""

    SWEEP_EVERY = 30.0

    def __init__(self, namespace: str = "", *, store: MemoryStore | None = None, clock=time.monotonic) -> None:
        super().__init__(namespace)
        self._clock = clock
        self.store = store or MemoryStore()
        self._items, self._channels, self._cond = self.store.items, self.store.channels, self.store.cond

    def __repr__(self) -> str:
        return f"MemoryCache(namespace={self.namespace!r})"

    def _live(self, key: str) -> tuple[bytes, float | None] | None:
        item = self._items.get(key)
        if item is not None and item[1] is not None and item[1] <= self._clock():
            del self._items[key]
            return None
        return item

    def _expires(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    def _get(self, key: str) -> bytes | None:
        with self._cond:
            item = self._live(key)
            return None if item is None else item[0]

    def _maybe_sweep(self) -> None:
        """Drop expired keys and channels now and then: keys nobody reads again must not pile up."""
        now = self._clock()
        if now < self.store.next_sweep:
            return
        self.store.next_sweep = now + self.SWEEP_EVERY
        for key in [k for k, (_, exp) in self._items.items() if exp is not None and exp <= now]:
            del self._items[key]
        for channel in [c for c, (_, exp) in self._channels.items() if exp <= now]:
            del self._channels[channel]

    def _set(self, key: str, value: bytes, ttl: float | None, only_if_absent: bool) -> bool:
        with self._cond:
            self._maybe_sweep()
            if only_if_absent and self._live(key) is not None:
                return False
            self._items[key] = (value, self._expires(ttl))
            return True

    def _delete(self, key: str) -> bool:
        with self._cond:
            existed = self._live(key) is not None
            self._items.pop(key, None)
            return existed

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        with self._cond:
            self._maybe_sweep()
            item = self._live(key)
            if item is None:
                value, expires = amount, self._expires(ttl)
            else:
                value, expires = _int_value(item[0]) + amount, item[1]
            self._items[key] = (str(value).encode(), expires)
            return value

    def _ttl(self, key: str) -> float | None:
        with self._cond:
            item = self._live(key)
            if item is None or item[1] is None:
                return None
            return max(0.0, item[1] - self._clock())

    def _live_channel(self, channel: str) -> list[Entry]:
        found = self._channels.get(channel)
        if found is None:
            return []
        if found[1] <= self._clock():
            del self._channels[channel]
            return []
        return found[0]

    def _channel_append(self, channel: str, data: bytes, ttl: float) -> str:
        with self._cond:
            self._maybe_sweep()
            entries = self._live_channel(channel) if channel in self._channels else []
            self.store.seq += 1
            entry = (_format_seq(self.store.seq), data)
            entries.append(entry)
            self._channels[channel] = (entries, self._clock() + ttl)
            self._cond.notify_all()
            return entry[0]

    def _channel_read(self, channel: str, after: str | None, timeout: float) -> list[Entry]:
        after_seq = _parse_seq(after)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                live = self._live_channel(channel)
                # Ids are increasing zero-padded numbers, so they sort as strings: bisect.
                entries = live[bisect.bisect_right(live, _format_seq(after_seq), key=lambda e: e[0]):]
                remaining = deadline - time.monotonic()
                if entries or remaining <= 0:
                    return entries
                self._cond.wait(remaining)


def _int_value(raw: bytes) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("the cached value is not an integer") from None


# --------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_items (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS cache_items_expiry ON cache_items (expires_at);
CREATE TABLE IF NOT EXISTS cache_channels (
    channel TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cache_channel_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_channel_entries_by_channel ON cache_channel_entries (channel, seq);
"""


class SQLiteCache(Cache):
    """A cache in a SQLite file that several processes share (the embedded dev stack's Redis).

    Expiry uses wall-clock time (``time.time``), the only clock processes share. Reads ignore
    expired rows; a write sweeps them about once every ``SWEEP_EVERY`` seconds.
    """

    SWEEP_EVERY = 30.0
    POLL_MIN, POLL_MAX = 0.005, 0.02

    def __init__(self, path: str | os.PathLike, namespace: str = "", *, busy_timeout: float = 10.0) -> None:
        super().__init__(namespace)
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._next_sweep = 0.0
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._guard():
            conn = self._conn()
            conn.executescript(_SQLITE_SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteCache({self.path!r}, namespace={self.namespace!r})"

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._local, self._connections, self._pid = threading.local(), [], os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    class _guard:
        """Turn sqlite3 errors into UnavailableError (a locked or unreadable file)."""

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type, exc, tb) -> bool:
            if exc is not None and isinstance(exc, sqlite3.OperationalError):
                raise UnavailableError("the cache is busy; try again", retry_after=1) from exc
            return False

    def _write(self, work) -> Any:
        """Run ``work(conn, now)`` in one write transaction (BEGIN IMMEDIATE serialises writers)."""
        with self._guard():
            conn = self._conn()
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn, now)
                if now >= self._next_sweep:
                    self._sweep(conn, now)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        self._next_sweep = now + self.SWEEP_EVERY * (0.5 + random.random())
        conn.execute("DELETE FROM cache_items WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        conn.execute(
            "DELETE FROM cache_channel_entries WHERE channel IN "
            "(SELECT channel FROM cache_channels WHERE expires_at <= ?)",
            (now,),
        )
        conn.execute("DELETE FROM cache_channels WHERE expires_at <= ?", (now,))

    @staticmethod
    def _live_row(conn: sqlite3.Connection, key: str, now: float) -> tuple[bytes, float | None] | None:
        row = conn.execute(
            "SELECT value, expires_at FROM cache_items WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (key, now),
        ).fetchone()
        return None if row is None else (bytes(row[0]) if not isinstance(row[0], bytes) else row[0], row[1])

    def _get(self, key: str) -> bytes | None:
        with self._guard():
            row = self._live_row(self._conn(), key, time.time())
            return None if row is None else row[0]

    def _set(self, key: str, value: bytes, ttl: float | None, only_if_absent: bool) -> bool:
        def work(conn: sqlite3.Connection, now: float) -> bool:
            if only_if_absent and self._live_row(conn, key, now) is not None:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO cache_items (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, None if ttl is None else now + ttl),
            )
            return True

        return self._write(work)

    def _delete(self, key: str) -> bool:
        def work(conn: sqlite3.Connection, now: float) -> bool:
            existed = self._live_row(conn, key, now) is not None
            conn.execute("DELETE FROM cache_items WHERE key = ?", (key,))
            return existed

        return self._write(work)

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        def work(conn: sqlite3.Connection, now: float) -> int:
            row = self._live_row(conn, key, now)
            if row is None:
                value, expires = amount, None if ttl is None else now + ttl
            else:
                value, expires = _int_value(row[0]) + amount, row[1]
            conn.execute(
                "INSERT OR REPLACE INTO cache_items (key, value, expires_at) VALUES (?, ?, ?)",
                (key, str(value).encode(), expires),
            )
            return value

        return self._write(work)

    def _ttl(self, key: str) -> float | None:
        with self._guard():
            now = time.time()
            row = self._live_row(self._conn(), key, now)
            if row is None or row[1] is None:
                return None
            return max(0.0, row[1] - now)

    def _channel_append(self, channel: str, data: bytes, ttl: float) -> str:
        def work(conn: sqlite3.Connection, now: float) -> str:
            expired = conn.execute(
                "SELECT 1 FROM cache_channels WHERE channel = ? AND expires_at <= ?", (channel, now)
            ).fetchone()
            if expired:  # an expired channel starts afresh, as a Redis key would
                conn.execute("DELETE FROM cache_channel_entries WHERE channel = ?", (channel,))
            conn.execute(
                "INSERT OR REPLACE INTO cache_channels (channel, expires_at) VALUES (?, ?)", (channel, now + ttl)
            )
            cursor = conn.execute(
                "INSERT INTO cache_channel_entries (channel, data) VALUES (?, ?)", (channel, data)
            )
            return _format_seq(cursor.lastrowid)

        return self._write(work)

    def _read_entries(self, channel: str, after_seq: int) -> list[Entry]:
        with self._guard():
            rows = self._conn().execute(
                "SELECT e.seq, e.data FROM cache_channel_entries e "
                "JOIN cache_channels c ON c.channel = e.channel "
                "WHERE e.channel = ? AND e.seq > ? AND c.expires_at > ? ORDER BY e.seq",
                (channel, after_seq, time.time()),
            ).fetchall()
        return [(_format_seq(seq), bytes(data)) for seq, data in rows]

    def _channel_read(self, channel: str, after: str | None, timeout: float) -> list[Entry]:
        after_seq = _parse_seq(after)
        deadline = time.monotonic() + timeout
        pause = self.POLL_MIN
        while True:
            entries = self._read_entries(channel, after_seq)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            # Short first sleeps keep token streams smooth; longer ones spare idle readers' CPU.
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, self.POLL_MAX)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


# --------------------------------------------------------------------------- Redis

# INCRBY then set the TTL only on a key without one (i.e. the one just created), atomically.
_INCR_SCRIPT = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


class RedisCache(Cache):
    """Redis (redis-py). Channels are Streams: XADD + EXPIRE, XREAD BLOCK for waiting readers."""

    CHANNEL_MAXLEN = 100_000  # a runaway writer must not fill Redis

    def __init__(
        self,
        url: str,
        namespace: str = "",
        *,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        client: Any = None,
    ) -> None:
        super().__init__(namespace)
        import redis

        self.url = url
        self.socket_timeout = socket_timeout
        self._client = client or redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )
        self._incr_script = self._client.register_script(_INCR_SCRIPT)

    def __repr__(self) -> str:
        import re

        return f"RedisCache({re.sub(r'//[^@]*@', '//***@', self.url)!r}, namespace={self.namespace!r})"

    def _call(self, fn, *args, **kwargs) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError) as exc:
            raise UnavailableError("the cache is unavailable; try again", retry_after=1) from exc
        except redis.ResponseError as exc:
            if "not an integer" in str(exc):
                raise ValueError("the cached value is not an integer") from exc
            if "Invalid stream ID" in str(exc):
                raise InvalidEntryId("not a stream position") from exc
            raise

    def _get(self, key: str) -> bytes | None:
        return self._call(self._client.get, key)

    def _set(self, key: str, value: bytes, ttl: float | None, only_if_absent: bool) -> bool:
        px = None if ttl is None else max(1, int(ttl * 1000))
        return bool(self._call(self._client.set, key, value, px=px, nx=only_if_absent))

    def _delete(self, key: str) -> bool:
        return bool(self._call(self._client.delete, key))

    def _incr(self, key: str, amount: int, ttl: float | None) -> int:
        px = 0 if ttl is None else max(1, int(ttl * 1000))
        return int(self._call(self._incr_script, keys=[key], args=[amount, px]))

    def _ttl(self, key: str) -> float | None:
        ms = self._call(self._client.pttl, key)
        return None if ms is None or ms < 0 else ms / 1000.0

    def _channel_append(self, channel: str, data: bytes, ttl: float) -> str:
        def append() -> str:
            pipe = self._client.pipeline(transaction=True)
            pipe.xadd(channel, {b"d": data}, maxlen=self.CHANNEL_MAXLEN, approximate=True)
            pipe.pexpire(channel, max(1, int(ttl * 1000)))
            entry_id, _ = pipe.execute()
            return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

        return self._call(append)

    def _channel_read(self, channel: str, after: str | None, timeout: float) -> list[Entry]:
        start = after or "0-0"
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            # Block in slices shorter than the socket timeout, or redis-py gives up first.
            block_ms = int(min(remaining, self.socket_timeout / 2) * 1000)
            if block_ms > 0:
                reply = self._call(self._client.xread, {channel: start}, block=block_ms)
            else:
                reply = self._call(self._client.xread, {channel: start})
            if reply:
                _, items = reply[0]
                return [
                    (entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields[b"d"])
                    for entry_id, fields in items
                ]
            if deadline - time.monotonic() <= 0:
                return []

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- factory

_memory_store = MemoryStore()


def reset_memory_caches() -> None:
    """Empty the process-wide store behind ``cache_from_env``'s memory caches (for tests)."""
    _memory_store.clear()


def cache_from_env(namespace: str, environ: Mapping[str, str] | None = None) -> Cache:
    """``REDIS_URL`` -> Redis; else ``CACHE_BACKEND=memory|sqlite`` (default sqlite at
    ``$CACHE_PATH`` or ``<data_dir>/cache.sqlite3``). Memory caches are one per namespace per process."""
    env = os.environ if environ is None else environ
    url = env.get("REDIS_URL")
    if url:
        return RedisCache(url, namespace)
    backend = (env.get("CACHE_BACKEND") or "sqlite").lower()
    if backend == "memory":
        return MemoryCache(namespace, store=_memory_store)
    if backend == "sqlite":
        return SQLiteCache(env.get("CACHE_PATH") or data_dir(env) / "cache.sqlite3", namespace)
    raise ValueError(f"unsupported CACHE_BACKEND: {backend!r} (memory or sqlite)")
