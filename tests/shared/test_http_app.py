"""The HTTP adapter: routing, JSON errors, body limits, readiness and metrics."""
from __future__ import annotations

import pydantic
import pytest
from flask import Flask, request as flask_request

from shared.errors import ConflictError, RateLimitedError
from shared.http import App, Response, StreamingResponse, sse_event


class Greeting(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(min_length=1, max_length=20)


def build_client(app: App):
    flask_app = Flask(__name__)

    @flask_app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @flask_app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def entry(path):
        return app.handle(flask_request)

    return flask_app.test_client()


@pytest.fixture
def app() -> App:
    app = App("demo", max_body_bytes=256)
    state = {"ready": False}

    @app.route("/items/<item_id>", ["GET", "DELETE"])
    def item(request):
        if request.method == "DELETE":
            return None
        return {"id": request.params["item_id"]}

    @app.route("/greet", ["POST"], body=Greeting)
    def greet(request):
        return {"hello": request.body.name}, 201, {"Location": "/greet/1"}

    @app.route("/form", ["POST"], body=Greeting, body_format="form")
    def form(request):
        return {"hello": request.body.name}

    @app.route("/conflict", ["POST"])
    def conflict(request):
        raise ConflictError("already there")

    @app.route("/limited")
    def limited(request):
        raise RateLimitedError("slow down", retry_after=7)

    @app.route("/boom")
    def boom(request):
        raise RuntimeError("secret internal detail")

    @app.route("/text")
    def text(request):
        return Response("plain", content_type="text/plain")

    @app.route("/events")
    def events(request):
        return StreamingResponse(sse_event({"n": n}) for n in range(3))

    @app.route("/private", auth="user")
    def private(request):
        return {"sub": request.principal.sub}

    app.readiness_check(lambda: (state["ready"], {"model": "m"}))
    app.state = state  # type: ignore[attr-defined]
    return app


@pytest.fixture
def client(app):
    return build_client(app)


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"])
    return body["error"]


def test_path_parameters_reach_the_handler(client):
    response = client.get("/items/abc")
    assert response.status_code == 200
    assert response.get_json() == {"id": "abc"}
    assert response.headers["X-Request-Id"]


def test_request_id_is_propagated(client):
    assert client.get("/items/x", headers={"X-Request-Id": "rid-1"}).headers["X-Request-Id"] == "rid-1"


def test_none_becomes_204(client):
    response = client.delete("/items/abc")
    assert response.status_code == 204
    assert response.data == b""


def test_unknown_route_is_a_json_404(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_wrong_method_is_a_json_405_with_allow(client):
    response = client.put("/items/abc")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_valid_body_is_validated_and_status_and_headers_kept(client):
    response = client.post("/greet", json={"name": "ada"})
    assert response.status_code == 201
    assert response.get_json() == {"hello": "ada"}
    assert response.headers["Location"] == "/greet/1"


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"data": "", "content_type": "application/json"}, 400, "invalid_json"),
        ({"data": "name=ada", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"json": {}}, 422, "validation_error"),
        ({"json": {"name": "x" * 21}}, 422, "validation_error"),
        ({"json": {"name": "ada", "extra": 1}}, 422, "validation_error"),
        ({"json": ["name"]}, 422, "validation_error"),
        ({"data": "{" + " " * 400 + "}", "content_type": "application/json"}, 413, "payload_too_large"),
    ],
)
def test_bad_bodies_get_clear_json_errors(client, kwargs, status, code):
    response = client.post("/greet", **kwargs)
    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_validation_errors_name_the_field_but_not_the_input(client):
    response = client.post("/greet", json={"name": "x" * 21})
    details = error_of(response)["details"]
    assert details[0]["field"] == "name"
    assert "xxxxxxxxxxxxxxxxxxxxx" not in response.get_data(as_text=True)


def test_form_bodies(client):
    assert client.post("/form", data={"name": "ada"}).get_json() == {"hello": "ada"}
    assert client.post("/form", json={"name": "ada"}).status_code == 415


def test_domain_errors_map_to_status_and_headers(client):
    assert client.post("/conflict").status_code == 409
    response = client.get("/limited")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_unexpected_errors_are_a_generic_500_without_details(client):
    response = client.get("/boom")
    assert response.status_code == 500
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert error_of(response)["code"] == "internal_error"


def test_plain_text_and_streams(client):
    assert client.get("/text").data == b"plain"
    response = client.get("/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.data == b'data: {"n":0}\n\ndata: {"n":1}\n\ndata: {"n":2}\n\n'


def test_auth_routes_use_the_authenticator(app):
    from shared.errors import UnauthorizedError

    class Principal:
        sub, is_admin = "u1", False

    def authenticator(request):
        if request.bearer_token() != "good":
            raise UnauthorizedError("bad token")
        return Principal()

    app._authenticator = authenticator
    client = build_client(app)
    assert client.get("/private").status_code == 401
    assert client.get("/private", headers={"Authorization": "Bearer bad"}).status_code == 401
    assert client.get("/private", headers={"Authorization": "Bearer good"}).get_json() == {"sub": "u1"}


def test_health_ready_and_metrics(app, client):
    assert client.get("/_/health").status_code == 200
    not_ready = client.get("/_/ready")
    assert not_ready.status_code == 503
    assert not_ready.get_json()["ready"] is False
    app.state["ready"] = True
    ready = client.get("/_/ready")
    assert ready.status_code == 200
    assert ready.get_json() == {"ready": True, "function": "demo", "model": "m"}
    client.get("/items/1")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'chatfaas_http_requests_total{code="200",function_name="demo",method="GET",route="/items/<item_id>"}' in metrics


def test_client_ip_trusts_only_the_hop_the_gateway_appended(app, monkeypatch):
    seen = {}

    @app.route("/ip")
    def ip(request):
        seen["ip"] = request.client_ip
        return {}

    client = build_client(app)
    client.get("/ip", headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.7"})
    assert seen["ip"] == "10.0.0.7"
    monkeypatch.setenv("TRUSTED_PROXY_HOPS", "0")
    client.get("/ip", headers={"X-Forwarded-For": "6.6.6.6"})
    assert seen["ip"] == "127.0.0.1"
