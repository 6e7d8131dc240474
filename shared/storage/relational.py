"""Relational store: one small interface over SQLite (embedded dev stack) and PostgreSQL.

SQL is written once with named parameters (``:name``) and portable types (TEXT, INTEGER, BIGINT,
DOUBLE PRECISION for epoch seconds). ``RETURNING`` works on both (SQLite >= 3.35).

- ``SQLiteDatabase(path)``: stdlib sqlite3, WAL journal, a busy timeout, foreign keys on, one
  connection per thread (sqlite3 connections must not be shared between threads mid-statement).
- ``PostgresDatabase(url)``: psycopg 3 with a ``psycopg_pool.ConnectionPool`` opened lazily (so
  importing or building the adapter never touches the network, and a forked worker opens its own).

Calls outside ``transaction()`` autocommit. Inside ``with db.transaction():`` every call of the
same thread shares one connection and one transaction; nesting makes a savepoint.

Migrations: ``migrate(component, folder)`` applies ``NNN_name.sql`` files once, in order, and
records them in ``schema_migrations(component, version, applied_at)``. A file
``NNN_name.<dialect>.sql`` replaces ``NNN_name.sql`` for that dialect. All pending files run in
one transaction under a lock (``pg_advisory_xact_lock`` / SQLite ``BEGIN IMMEDIATE``), so two
processes starting at once apply each file exactly once.

Driver errors become ours: unique and foreign-key violations -> ``ConflictError``; refused
connections, pool timeouts and a locked SQLite file -> ``UnavailableError``.
"""
from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from shared.config import data_dir
from shared.errors import ConflictError, UnavailableError

__all__ = [
    "Database",
    "SQLiteDatabase",
    "PostgresDatabase",
    "Migration",
    "database_from_env",
    "discover_migrations",
    "to_pyformat",
]

Params = Mapping[str, Any] | None

MIGRATIONS_TABLE_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " component TEXT NOT NULL,"
    " version TEXT NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (component, version))"
)


# --------------------------------------------------------------------------- migrations files

@dataclass(frozen=True)
class Migration:
    """One migration file chosen for a dialect. ``version`` is the file stem without dialect."""

    number: int
    version: str
    path: Path


_MIGRATION_NAME = re.compile(r"^(?P<num>\d+)_(?P<name>[^.]+?)(?:\.(?P<dialect>sqlite|postgresql))?\.sql$")


def discover_migrations(folder: Path, dialect: str) -> list[Migration]:
    """The migrations of ``folder`` for ``dialect``, in order; a dialect file wins over the generic one."""
    chosen: dict[str, Migration] = {}
    for path in sorted(Path(folder).glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match or match["dialect"] not in (None, dialect):
            continue
        version = f"{match['num']}_{match['name']}"
        if version in chosen and match["dialect"] is None:
            continue  # the dialect-specific file was already chosen
        chosen[version] = Migration(int(match["num"]), version, path)
    return sorted(chosen.values(), key=lambda m: (m.number, m.version))


def split_sqlite_script(script: str) -> list[str]:
    """Split a script into statements (``executescript`` would COMMIT our open transaction)."""
    statements, buffer = [], ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                statements.append(buffer.strip())
            buffer = ""
    return statements


# --------------------------------------------------------------------------- the interface

class Database(ABC):
    """A relational database. SQL uses ``:name`` parameters on every dialect."""

    dialect: str

    def __init__(self) -> None:
        self._local = threading.local()

    # -- primitives each backend implements
    @abstractmethod
    def _connect(self) -> Any:
        """Open a context manager yielding a connection for one autocommitted call."""

    @abstractmethod
    def _begin(self, conn: Any) -> Any:
        """A context manager making a transaction (or a savepoint when nested) on ``conn``."""

    @abstractmethod
    def _run(self, conn: Any, sql: str, params: Params) -> Any:
        """Run one statement; return a cursor."""

    @abstractmethod
    def _lock_migrations(self, conn: Any) -> None:
        """Serialise migrations across processes for the rest of the current transaction."""

    @abstractmethod
    def _run_script(self, conn: Any, script: str) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- shared behaviour
    @contextmanager
    def _connection(self) -> Iterator[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # inside transaction(): reuse its connection
            yield conn
            return
        with self._connect() as conn:
            yield conn

    def execute(self, sql: str, params: Params = None) -> int:
        """Run a statement; return the number of rows it changed (-1 when unknown)."""
        with self._connection() as conn:
            return self._run(conn, sql, params).rowcount

    def fetch_one(self, sql: str, params: Params = None) -> dict | None:
        with self._connection() as conn:
            row = self._run(conn, sql, params).fetchone()
            return None if row is None else dict(row)

    def fetch_all(self, sql: str, params: Params = None) -> list[dict]:
        with self._connection() as conn:
            return [dict(row) for row in self._run(conn, sql, params).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator["Database"]:
        """Calls made inside share one connection and commit together (or roll back on error)."""
        outer = getattr(self._local, "conn", None)
        if outer is not None:
            with self._begin(outer):
                yield self
            return
        with self._connect() as conn:
            self._local.conn = conn
            try:
                with self._begin(conn):
                    yield self
            finally:
                self._local.conn = None

    def migrate(self, component: str, migrations_dir: Path) -> list[str]:
        """Apply the pending migrations of ``component``; return the versions applied now."""
        migrations = discover_migrations(Path(migrations_dir), self.dialect)
        applied_now: list[str] = []
        with self.transaction():
            conn = self._local.conn
            self._lock_migrations(conn)
            self._run_script(conn, MIGRATIONS_TABLE_DDL)
            done = {
                row["version"]
                for row in self.fetch_all(
                    "SELECT version FROM schema_migrations WHERE component = :c", {"c": component}
                )
            }
            for migration in migrations:
                if migration.version in done:
                    continue
                self._run_script(conn, migration.path.read_text())
                self.execute(
                    "INSERT INTO schema_migrations (component, version, applied_at) VALUES (:c, :v, :t)",
                    {"c": component, "v": migration.version, "t": time.time()},
                )
                applied_now.append(migration.version)
        return applied_now

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- SQLite

def _sqlite_error(exc: sqlite3.Error) -> Exception:
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and ("UNIQUE" in message or "PRIMARY KEY" in message):
        return ConflictError("the record already exists", code="conflict")
    if isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in message:
        return ConflictError("a referenced record does not exist or is still referenced", code="conflict")
    if isinstance(exc, sqlite3.OperationalError) and (
        "locked" in message or "unable to open" in message or "busy" in message
    ):
        return UnavailableError("the database is busy; try again", retry_after=1)
    return exc


class SQLiteDatabase(Database):
    """A SQLite file (or ``:memory:``, one per thread) with WAL, a busy timeout and foreign keys."""

    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 10.0) -> None:
        super().__init__()
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SQLiteDatabase({self.path!r})"

    def _thread_connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # a forked child must not reuse the parent's handles
            self._local, self._connections, self._pid = threading.local(), [], os.getpid()
        conn = getattr(self._local, "sqlite", None)
        if conn is None:
            try:
                # isolation_level=None: the driver never opens transactions behind our back.
                conn = sqlite3.connect(
                    self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
                )
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise _sqlite_error(exc) from exc
            self._local.sqlite = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        yield self._thread_connection()

    @contextmanager
    def _begin(self, conn: sqlite3.Connection) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades
        # fails with SQLITE_BUSY at once instead of waiting out the busy timeout.
        begin, commit, rollback = (
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
            if depth == 0
            else (f"SAVEPOINT sp{depth}", f"RELEASE sp{depth}", f"ROLLBACK TO sp{depth}")
        )
        self._exec(conn, begin)
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._local.depth = depth
            conn.execute(rollback)
            if depth:
                conn.execute(commit)  # a savepoint stays on the stack after ROLLBACK TO
            raise
        self._local.depth = depth
        self._exec(conn, commit)

    @staticmethod
    def _exec(conn: sqlite3.Connection, sql: str, params: Params = None) -> sqlite3.Cursor:
        try:
            return conn.execute(sql, dict(params) if params is not None else ())
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from exc

    def _run(self, conn: sqlite3.Connection, sql: str, params: Params) -> sqlite3.Cursor:
        return self._exec(conn, sql, params)

    def _lock_migrations(self, conn: sqlite3.Connection) -> None:
        pass  # BEGIN IMMEDIATE already holds the database's write lock

    def _run_script(self, conn: sqlite3.Connection, script: str) -> None:
        for statement in split_sqlite_script(script):
            self._exec(conn, statement)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


# --------------------------------------------------------------------------- PostgreSQL

_TOKENS = re.compile(
    r"""
      (?P<literal>'(?:[^']|'')*')            # string literal
    | (?P<ident>"(?:[^"]|"")*")              # quoted identifier
    | (?P<dollar>\$(?P<tag>\w*)\$.*?\$(?P=tag)\$)  # dollar-quoted body
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<cast>::)
    | :(?P<param>[A-Za-z_]\w*)
    | (?P<percent>%)
    """,
    re.VERBOSE | re.DOTALL,
)


def to_pyformat(sql: str) -> str:
    """Translate ``:name`` parameters to psycopg's ``%(name)s``; casts, literals, comments stay."""

    def replace(match: re.Match) -> str:
        if match["param"]:
            return f"%({match['param']})s"
        # psycopg reads every '%' of a parametrised query, even inside literals: double them all.
        return match[0].replace("%", "%%")

    return _TOKENS.sub(replace, sql)


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3 and a lazily opened connection pool; rows are dicts."""

    dialect = "postgresql"
    MIGRATION_LOCK_KEY = 0x63686174666161  # "chatfaa": one advisory lock for every component

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        pool_timeout: float = 5.0,
        connect_timeout: int = 5,
    ) -> None:
        super().__init__()
        self.url = url
        self.min_size, self.max_size = min_size, max_size
        self.pool_timeout = pool_timeout
        self.connect_timeout = connect_timeout
        self._pool: Any = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()
        self._sql_cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"PostgresDatabase({_redact_url(self.url)!r})"

    def _get_pool(self) -> Any:
        if self._pool is not None and self._pool_pid == os.getpid():
            return self._pool
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                from psycopg.rows import dict_row
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(
                    self.url,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.pool_timeout,
                    kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": self.connect_timeout},
                    # A pooled connection may have been cut while the function was idle.
                    check=ConnectionPool.check_connection,
                    open=False,
                    name=f"db-{id(self):x}",
                )
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
        return self._pool

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        import psycopg

        try:
            with self._get_pool().connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise _postgres_error(exc) from exc

    @contextmanager
    def _begin(self, conn: Any) -> Iterator[None]:
        import psycopg

        try:
            with conn.transaction():
                yield
        except psycopg.Error as exc:
            raise _postgres_error(exc) from exc

    def _translate(self, sql: str) -> str:
        translated = self._sql_cache.get(sql)
        if translated is None:
            translated = to_pyformat(sql)
            if len(self._sql_cache) < 2048:
                self._sql_cache[sql] = translated
        return translated

    def _run(self, conn: Any, sql: str, params: Params) -> Any:
        import psycopg

        try:
            return conn.execute(self._translate(sql), dict(params or {}))
        except psycopg.Error as exc:
            raise _postgres_error(exc) from exc

    def _lock_migrations(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.MIGRATION_LOCK_KEY,))

    def _run_script(self, conn: Any, script: str) -> None:
        import psycopg

        try:
            conn.execute(script)  # no parameters: psycopg sends it as one multi-statement query
        except psycopg.Error as exc:
            raise _postgres_error(exc) from exc

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


def _postgres_error(exc: Exception) -> Exception:
    import psycopg
    from psycopg import errors
    from psycopg_pool import PoolTimeout, PoolClosed

    if isinstance(exc, errors.UniqueViolation):
        return ConflictError("the record already exists", code="conflict")
    if isinstance(exc, errors.ForeignKeyViolation):
        return ConflictError("a referenced record does not exist or is still referenced", code="conflict")
    if isinstance(exc, (PoolTimeout, PoolClosed, psycopg.OperationalError)):
        return UnavailableError("the database is unavailable; try again", retry_after=2)
    return exc


def _redact_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


# --------------------------------------------------------------------------- factory

def database_from_env(component: str, environ: Mapping[str, str] | None = None) -> Database:
    """``DATABASE_URL`` (postgresql://...) when set, else the SQLite file ``<data_dir>/<component>.sqlite3``.

    ``DATABASE_POOL_MAX_SIZE`` (10) and ``DATABASE_POOL_TIMEOUT`` (5 s: how long a call waits for a
    connection, so also how long before a 503 when the server is down) tune the pool.
    """
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL", "")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(
            url,
            max_size=int(env.get("DATABASE_POOL_MAX_SIZE") or 10),
            pool_timeout=float(env.get("DATABASE_POOL_TIMEOUT") or 5),
        )
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(url[len("sqlite:///"):])
    if url:
        raise ValueError(f"unsupported DATABASE_URL scheme: {_redact_url(url)}")
    return SQLiteDatabase(data_dir(env) / f"{component}.sqlite3")
