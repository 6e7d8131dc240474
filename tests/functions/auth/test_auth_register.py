"""POST /register: accounts, the password policy, and the platform error envelope."""
from __future__ import annotations

import pytest

from tests.functions.identity_support import ADMIN_EMAIL, PASSWORD


def error_code(response) -> str:
    body = response.get_json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]["code"]


def test_register_creates_a_user_with_a_normalised_email(auth):
    response = auth.client.post("/register", json={"email": "  Alice@Example.COM ", "password": PASSWORD, "display_name": " Alice "})
    assert response.status_code == 201
    body = response.get_json()
    assert body["email"] == "alice@example.com"
    assert body["display_name"] == "Alice"
    assert body["roles"] == ["user"]
    assert body["id"] and body["created_at"].endswith("+00:00")
    assert "password" not in response.get_data(as_text=True)


def test_configured_admin_email_gets_the_admin_role(auth):
    assert auth.register(ADMIN_EMAIL.upper())["roles"] == ["user", "admin"]


def test_duplicate_email_in_another_case_is_a_conflict(auth):
    auth.register("bob@example.com")
    response = auth.client.post("/register", json={"email": "BOB@example.com", "password": PASSWORD})
    assert response.status_code == 409
    assert error_code(response) == "email_taken"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"email": "carol@example.com", "password": "Short-1"}, "password"),
        ({"email": "carol@example.com", "password": "Aa1" * 43}, "password"),  # 129 characters
        ({"email": "carol@example.com", "password": "abcdefghijkl"}, "password"),
        ({"email": "carol@example.com", "password": "12345678901234"}, "password"),
        ({"email": "carol@example.com", "password": "CAROL@example.com"}, "body"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a@b", "password": PASSWORD}, "email"),
        ({"email": "x" * 250 + "@example.com", "password": PASSWORD}, "email"),
        ({"password": PASSWORD}, "email"),
        ({"email": "carol@example.com"}, "password"),
        ({"email": "carol@example.com", "password": PASSWORD, "display_name": "x" * 101}, "display_name"),
        ({"email": "carol@example.com", "password": PASSWORD, "is_admin": True}, "is_admin"),
        ({"email": 42, "password": PASSWORD}, "email"),
    ],
)
def test_invalid_registrations_are_422_with_field_details(auth, payload, field):
    response = auth.client.post("/register", json=payload)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    fields = [detail["field"] for detail in response.get_json()["error"]["details"]]
    assert field in fields
    assert PASSWORD not in response.get_data(as_text=True)  # offending input is never echoed


def test_malformed_json_is_400(auth):
    response = auth.client.post("/register", data='{"email": ', content_type="application/json")
    assert response.status_code == 400
    assert error_code(response) == "invalid_json"


def test_json_that_is_not_an_object_is_422(auth):
    response = auth.client.post("/register", json=["alice@example.com", PASSWORD])
    assert response.status_code == 422


def test_wrong_content_type_is_415(auth):
    response = auth.client.post("/register", data="email=a@example.com", content_type="text/plain")
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"


def test_body_over_the_limit_is_413(auth):
    response = auth.client.post("/register", json={"email": "a@example.com", "password": PASSWORD, "pad": "x" * 20_000})
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"


def test_unknown_route_is_404(auth):
    response = auth.client.get("/nope")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_wrong_method_is_405_with_allow(auth):
    response = auth.client.get("/register")
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
