"""The users function: profiles and preferences (target ``users``), and the Kafka-triggered
``users_events`` target that creates profiles from ``auth.user.registered`` events."""
from __future__ import annotations

from datetime import datetime, timezone

import functions_framework

from shared.http import App, Request

from functions.users.runtime import LazyService
from functions.users.schemas import ListQuery, Preferences, Profile, ProfilePage, ProfilePatch
from functions.users.store import ProfileRecord

service = LazyService()
app = App("users")
app.readiness_check(lambda: (service() is not None, {}))
events_app = App("users-events")
events_app.readiness_check(lambda: (service() is not None, {}))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _profile(record: ProfileRecord) -> Profile:
    return Profile(
        id=record.id,
        email=record.email,
        display_name=record.display_name,
        roles=list(record.roles),
        created_at=_iso(record.created_at),
        updated_at=_iso(record.updated_at),
        preferences=Preferences.model_validate(record.preferences),
    )


@app.route("/me", auth="user")
def get_me(request: Request) -> Profile:
    return _profile(service().me(request.principal))


@app.route("/me", methods=["PATCH"], auth="user", body=ProfilePatch)
def patch_me(request: Request) -> Profile:
    return _profile(service().update_me(request.principal, request.body))


@app.route("/me/preferences", auth="user")
def get_preferences(request: Request) -> Preferences:
    return service().preferences(request.principal)


# POST is accepted as PUT: OpenFaaS queues /async-function/ calls as POSTs only.
@app.route("/me/preferences", methods=["PUT", "POST"], auth="user", body=Preferences)
def put_preferences(request: Request) -> Preferences:
    return service().replace_preferences(request.principal, request.body)


@app.route("/users", auth="admin", query=ListQuery)
def list_users(request: Request) -> ProfilePage:
    query: ListQuery = request.query_model
    records, next_cursor = service().list(query.limit, query.cursor)
    return ProfilePage(items=[_profile(record) for record in records], next_cursor=next_cursor)


@app.route("/users/<user_id>", auth="user")
def get_user(request: Request) -> Profile:
    return _profile(service().get(request.principal, request.params["user_id"]))


@events_app.route("/", methods=["POST"])
def user_event(request: Request) -> dict:
    """A CloudEvent from Knative (``ce-*`` headers or structured) or the OpenFaaS connector.
    Redeliveries are harmless: the profile insert is a no-op when it exists."""
    from shared.events import parse_http_event
    from shared.events.types import AUTH_USER_REGISTERED

    event = parse_http_event(request.headers, request.data())
    if event.type != AUTH_USER_REGISTERED:
        return {"status": "ignored", "id": event.id, "type": event.type}
    created = service().on_user_registered(event.data)
    return {"status": "created" if created else "exists", "id": event.id}


@functions_framework.http
def users(flask_request):  # FUNCTION_TARGET=users
    return app.handle(flask_request)


@functions_framework.http
def users_events(flask_request):  # FUNCTION_TARGET=users_events
    return events_app.handle(flask_request)
