"""A whole dev stack (supervisor → gateway, queue worker, connector, fixture functions) for the
dev tests, on the session's tansu broker, with topic names of its own."""
from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from shared.dev import supervisor

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``check`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def healthy(base: str) -> bool:
    """The gateway at ``base`` answers /healthz."""
    import requests

    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


@dataclass
class DevStack:
    gateway: str
    kafka: str
    prefix: str
    data_dir: Path
    layout: supervisor.Layout
    state: dict

    def topic(self, function: str) -> str:
        return f"{self.prefix}.{function}"

    def url(self, function: str) -> str:
        return next(f"http://127.0.0.1:{p.port}" for p in self.state["processes"] if p.name == function)


@pytest.fixture(scope="session")
def dev_stack(tansu_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    root = tmp_path_factory.mktemp("devstack")
    layout = supervisor.Layout(root)
    prefix = f"devtest-{secrets.token_hex(3)}"
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": tansu_bootstrap,
        "DEV_TEST_TOPICS": prefix,
        "GATEWAY_ASYNC_TOPIC": f"{prefix}.async",
        "QUEUE_WORKER_GROUP": f"{prefix}-queue-worker",
        "DATA_DIR": str(root / "data"),
        "KAFKA_MAX_POLL_INTERVAL_MS": "3000",
        "CONNECTOR_MAX_ATTEMPTS": "3",
        "CONNECTOR_BACKOFF_BASE": "0.05",
        "CONNECTOR_BACKOFF_MAX": "0.2",
        "LOG_LEVEL": "INFO",
    }
    options = supervisor.Options(stack_file=FIXTURES / "stack.yml", gateway_port=port, ready_timeout=60,
                                 layout=layout, env=env)
    state = supervisor.up(options)
    try:
        yield DevStack(f"http://127.0.0.1:{port}", tansu_bootstrap, prefix, root / "data", layout, state)
    finally:
        supervisor.down(layout)
