"""Fixtures of the chat tests; the harness itself lives in ``chat_support``."""
from __future__ import annotations

import os
from typing import Iterator

import functions_framework
import pytest

from tests.functions.chat.chat_support import (
    CHAT_SOURCE,
    REQUESTS_TOPIC,
    RESULTS_TOPIC,
    ChatHarness,
    Gateway,
    StandInWorker,
    empty_chat_tables,
)
from tests.functions.identity_support import load_app, reset_process_state, serve_wsgi, start_auth


@pytest.fixture(scope="session")
def kafka_topics(tansu_bootstrap: str) -> str:
    from shared.events import ensure_topics

    ensure_topics(tansu_bootstrap, [REQUESTS_TOPIC, RESULTS_TOPIC])
    return tansu_bootstrap


@pytest.fixture(params=["sqlite+sqlite-cache"])
def chat_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where conversations and token channels live; tests that matter on every backend widen it.

    ``mongodb(mongomock)+redis`` selects the MongoDB store through ``MONGODB_URL`` with pymongo's
    client patched by mongomock (no MongoDB server exists on these machines)."""
    if request.param == "postgresql+redis":
        os.environ["DATABASE_URL"] = request.getfixturevalue("postgres_url")
        os.environ["REDIS_URL"] = request.getfixturevalue("redis_url")
        empty_chat_tables(os.environ["DATABASE_URL"])
    if request.param == "mongodb(mongomock)+redis":
        import mongomock

        os.environ["MONGODB_URL"] = "mongodb://mongo.test:27017"
        os.environ["REDIS_URL"] = request.getfixturevalue("redis_url")
        with mongomock.patch(servers=(("mongo.test", 27017),)):
            yield request.param
        return
    yield request.param


@pytest.fixture
def chat_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings of the chat function; a test overrides some with ``indirect`` parametrization."""
    defaults = {"CHAT_CHANNEL_READ_SECONDS": "0.2", "CHAT_REPLY_TIMEOUT_SECONDS": "20"}
    return {**defaults, **getattr(request, "param", {})}


@pytest.fixture
def harness(chat_backend: str, chat_env: dict[str, str], kafka_topics: str) -> Iterator[ChatHarness]:
    from functions.chat import runtime

    os.environ.update({"KAFKA_BOOTSTRAP_SERVERS": kafka_topics, **chat_env})
    reset_process_state()
    runtime.reset()
    auth = start_auth()
    users_app, _ = load_app("users", "users")
    gateway = Gateway({"auth": auth.flask_app, "users": users_app})
    server = serve_wsgi(gateway)
    os.environ["GATEWAY_URL"] = server.url
    chat_app = functions_framework.create_app("chat", CHAT_SOURCE)
    results_app = functions_framework.create_app("chat_results", CHAT_SOURCE)
    worker = StandInWorker(kafka_topics, results_app)
    worker.start()
    try:
        yield ChatHarness(chat_app.test_client(), results_app, worker, gateway, auth)
    finally:
        worker.stop()
        server.stop()
        runtime.reset()
        auth.close()
        reset_process_state()


