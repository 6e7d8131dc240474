"""The whole platform as separate processes (supervisor → functions, gateway, queue worker,
connector) on the session's tansu broker, the machine's PostgreSQL and a Redis DB of ours."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

from shared.dev import supervisor
from shared.stack import REPO_ROOT
from tests.callbacks import CallbackReceiver


@dataclass
class Platform:
    gateway: str
    layout: supervisor.Layout
    state: dict

    def function_url(self, name: str) -> str:
        return next(f"http://127.0.0.1:{p.port}" for p in self.state["processes"] if p.name == name)

    def process(self, name: str) -> supervisor.Proc:
        return next(p for p in self.state["processes"] if p.name == name)

    def log(self, name: str) -> str:
        return Path(self.process(name).log).read_text(errors="replace")


def start_platform(tmp_root: Path, *, kafka: str, env: dict[str, str], only: tuple[str, ...] = ()) -> Platform:
    layout = supervisor.Layout(tmp_root)
    port = supervisor.free_port()
    # Its own async topic and consumer groups: other stacks of the session share the broker.
    instance = f"e2e-{port}"
    options = supervisor.Options(
        stack_file=REPO_ROOT / "stack.yml",
        gateway_port=port,
        ready_timeout=180,
        only=only,
        layout=layout,
        env={"KAFKA_BOOTSTRAP_SERVERS": kafka, "DATA_DIR": str(tmp_root / "data"),
             "KAFKA_MAX_POLL_INTERVAL_MS": "3000", "GATEWAY_ASYNC_TOPIC": f"{instance}.async",
             "QUEUE_WORKER_GROUP": f"{instance}-queue-worker", "CONNECTOR_GROUP_PREFIX": f"{instance}-connector",
             **env},
    )
    state = supervisor.up(options)
    return Platform(f"http://127.0.0.1:{port}", layout, state)


@pytest.fixture(scope="module")
def identity_platform(tmp_path_factory, tansu_bootstrap, postgres_url, redis_db_number) -> Iterator[Platform]:
    """auth, users and users-events on PostgreSQL and Redis, behind the dev gateway."""
    import redis

    redis_url = f"redis://127.0.0.1:6379/{redis_db_number}"
    redis.Redis.from_url(redis_url).flushdb()
    root = tmp_path_factory.mktemp("identity-platform")
    platform = start_platform(root, kafka=tansu_bootstrap, only=("auth", "users", "users-events"),
                              env={"DATABASE_URL": postgres_url, "REDIS_URL": redis_url,
                                   "AUTH_ADMIN_EMAILS": "root@example.com"})
    try:
        yield platform
    finally:
        supervisor.down(platform.layout)


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


def register_and_login(gateway: str, email: str, password: str = "correct horse battery 9") -> dict:
    """Register through the gateway and return the token response."""
    created = requests.post(f"{gateway}/function/auth/register", json={"email": email, "password": password}, timeout=10)
    assert created.status_code == 201, created.text
    token = requests.post(f"{gateway}/function/auth/token",
                          data={"grant_type": "password", "username": email, "password": password}, timeout=10)
    assert token.status_code == 200, token.text
    return token.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def json_error(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert "error" in body, body
    return body["error"]


__all__ = ["Platform", "CallbackReceiver", "register_and_login", "bearer", "json_error", "start_platform", "json"]


@pytest.fixture(scope="session")
def inference_artefacts() -> Path:
    """The default model's artefacts (exported on first use by scripts/export_model)."""
    from tests.inference.conftest import ensure_default_artefacts

    return ensure_default_artefacts()
