"""The users_events target: auth.user.registered creates the profile, idempotently."""
from __future__ import annotations

import json

import pytest

from shared.events import CloudEvent, publisher_from_env, to_http_binary, to_structured, types
from tests.functions.identity_support import bearer


def registered_event(user: dict, display_name: str | None = "From Signup") -> CloudEvent:
    event = CloudEvent.new(
        "/functions/auth",
        types.AUTH_USER_REGISTERED,
        {"user_id": user["id"], "email": user["email"], "display_name": display_name, "roles": user["roles"], "created_at": user["created_at"]},
        id=f"{types.AUTH_USER_REGISTERED}:{user['id']}",
        key=user["id"],
    )
    event.topic, event.partition, event.offset = types.USERS_EVENTS, 0, 7
    return event


def deliver(users, event: CloudEvent, mode: str):
    if mode == "structured":
        return users.events.post("/", data=json.dumps(to_structured(event)), content_type="application/cloudevents+json")
    headers, body = to_http_binary(event)
    if mode == "knative-binary":  # KafkaSource: ce-* headers only
        headers = {k: v for k, v in headers.items() if not k.startswith("X-")}
    return users.events.post("/", data=body, headers=headers)


@pytest.mark.parametrize("mode", ["knative-binary", "structured", "connector"])
def test_registered_event_creates_the_profile_once(users, mode):
    user = users.auth.register("zoe@example.com")
    event = registered_event(user)
    first = deliver(users, event, mode)
    assert first.status_code == 200 and first.get_json()["status"] == "created"
    again = deliver(users, event, mode)  # at-least-once delivery: a redelivery changes nothing
    assert again.status_code == 200 and again.get_json()["status"] == "exists"
    rows = users.module.service().store.db.fetch_all("SELECT id, display_name FROM users_profiles")
    assert rows == [{"id": user["id"], "display_name": "From Signup"}]
    profile = users.client.get("/me", headers=bearer(users.auth.login("zoe@example.com")["access_token"])).get_json()
    assert profile["display_name"] == "From Signup" and profile["created_at"] == user["created_at"]


def test_the_event_published_by_auth_is_accepted_by_users(users):
    user = users.auth.register("yan@example.com", display_name="Yan")
    published = [e for e in publisher_from_env().on(types.USERS_EVENTS) if e.subject == user["id"]]
    assert len(published) == 1
    event = published[0]
    event.partition, event.offset = 0, 1
    assert deliver(users, event, "connector").get_json()["status"] == "created"
    admin_view = users.module.service().store.get(user["id"])
    assert admin_view.display_name == "Yan" and admin_view.email == "yan@example.com"


def test_an_event_after_lazy_creation_fills_in_the_display_name_once(users):
    user, tokens = users.auth.user("xia@example.com")
    users.client.get("/me", headers=bearer(tokens["access_token"]))
    assert deliver(users, registered_event(user, "Xia"), "connector").get_json()["status"] == "exists"
    assert users.client.get("/me", headers=bearer(tokens["access_token"])).get_json()["display_name"] == "Xia"
    users.client.patch("/me", json={"display_name": "Mine"}, headers=bearer(tokens["access_token"]))
    deliver(users, registered_event(user, "Xia"), "connector")
    assert users.client.get("/me", headers=bearer(tokens["access_token"])).get_json()["display_name"] == "Mine"


def test_other_event_types_are_acknowledged_and_ignored(users):
    event = CloudEvent.new("/functions/models", types.MODELS_MODEL_CREATED, {"name": "m"})
    response = deliver(users, event, "knative-binary")
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"


@pytest.mark.parametrize(
    "headers, body",
    [
        ({"Content-Type": "application/json"}, b"{}"),  # no CloudEvent at all
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/x", "ce-type": types.AUTH_USER_REGISTERED, "Content-Type": "application/json"}, b"{}"),
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/x", "ce-type": types.AUTH_USER_REGISTERED, "Content-Type": "application/json"}, b"{not json"),
        ({"Content-Type": "application/cloudevents+json"}, b"[1, 2]"),
    ],
)
def test_malformed_events_are_400_not_500(users, headers, body):
    response = users.events.post("/", data=body, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"]
