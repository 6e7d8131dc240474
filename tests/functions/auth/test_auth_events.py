"""auth.user.registered on users.events: published on registration, never blocking it."""
from __future__ import annotations

import json
import os
import time

import pytest

from shared.events import publisher_from_env, types
from shared.events.kafka import ensure_topics, read_topic
from tests.conftest import free_port
from tests.functions.identity_support import reset_process_state, start_auth


@pytest.fixture
def embedded():
    os.environ["CACHE_BACKEND"] = "memory"
    reset_process_state()
    yield
    reset_process_state()


def test_registration_publishes_the_event_to_kafka(embedded, tansu_bootstrap):
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = tansu_bootstrap
    ensure_topics(tansu_bootstrap, [types.USERS_EVENTS])
    harness = start_auth()
    try:
        user = harness.register("kafka@example.com", display_name="Kaf")
    finally:
        harness.close()
    records = [r for r in read_topic(tansu_bootstrap, types.USERS_EVENTS, 50, timeout=15) if r.key == user["id"].encode()]
    assert len(records) == 1
    headers = {name: value.decode() for name, value in records[0].headers}
    assert headers["ce_type"] == types.AUTH_USER_REGISTERED
    assert headers["ce_id"] == f"{types.AUTH_USER_REGISTERED}:{user['id']}"
    data = json.loads(records[0].value)
    assert data == {"user_id": user["id"], "email": "kafka@example.com", "display_name": "Kaf", "roles": ["user"], "created_at": user["created_at"]}


def test_registration_succeeds_quickly_when_kafka_is_down(embedded):
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    harness = start_auth()
    try:
        started = time.monotonic()
        user = harness.register("nokafka@example.com")
        assert time.monotonic() - started < 5
        assert harness.login("nokafka@example.com")["access_token"]
        assert user["email"] == "nokafka@example.com"
    finally:
        harness.close()


def test_without_kafka_the_event_goes_to_the_in_process_publisher(embedded):
    harness = start_auth()
    try:
        user = harness.register("memory@example.com")
    finally:
        harness.close()
    events = [e for e in publisher_from_env().on(types.USERS_EVENTS) if e.subject == user["id"]]
    assert [e.type for e in events] == [types.AUTH_USER_REGISTERED]
    assert events[0].key == user["id"] and events[0].data["email"] == "memory@example.com"
