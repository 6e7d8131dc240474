"""POST /token (RFC 6749): password and refresh_token grants, rotation, reuse detection,
throttling; errors in the OAuth shape ``{"error": "<code>", "error_description": ...}``."""
from __future__ import annotations

import time

import jwt
import pytest

from tests.functions.identity_support import PASSWORD, bearer, start_auth


def oauth_error(response) -> str:
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error_description"], body
    return body["error"]


def test_password_grant_issues_a_signed_access_token_and_a_refresh_token(auth):
    user = auth.register("dana@example.com")
    response = auth.client.post("/token", data={"grant_type": "password", "username": "Dana@Example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["refresh_token"] and "." not in body["refresh_token"]  # opaque, not a JWT

    header = jwt.get_unverified_header(body["access_token"])
    jwks = auth.client.get("/.well-known/jwks.json").get_json()
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(body["access_token"], jwt.PyJWK(key).key, algorithms=[key["alg"]], audience="chatfaas", issuer="chatfaas-auth")
    assert claims["sub"] == user["id"] and claims["email"] == "dana@example.com"
    assert claims["roles"] == ["user"]
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"] and claims["jti"]


def test_token_endpoint_accepts_json_too(auth):
    auth.register("erin@example.com")
    response = auth.client.post("/token", json={"grant_type": "password", "username": "erin@example.com", "password": PASSWORD})
    assert response.status_code == 200 and response.get_json()["access_token"]


def test_refresh_tokens_are_stored_hashed(auth):
    auth.register("hash@example.com")
    tokens = auth.login("hash@example.com")
    rows = auth.module.runtime().service.store.db.fetch_all("SELECT token_hash FROM auth_refresh_tokens")
    assert rows and all(tokens["refresh_token"] not in row["token_hash"] for row in rows)


@pytest.mark.parametrize("username, password", [("frank@example.com", "Wrong-password-1"), ("nobody@example.com", PASSWORD)])
def test_bad_credentials_are_invalid_grant_without_saying_which(auth, username, password):
    auth.register("frank@example.com")
    response = auth.client.post("/token", data={"grant_type": "password", "username": username, "password": password})
    assert response.status_code == 400
    assert oauth_error(response) == "invalid_grant"
    assert response.get_json()["error_description"] == "the username or password is incorrect"


@pytest.mark.parametrize(
    "data, status, code",
    [
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "a@example.com"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token"}, 400, "invalid_request"),
        ({"username": "a@example.com", "password": PASSWORD}, 400, "invalid_request"),
        ({"grant_type": "password", "username": "a@example.com", "password": PASSWORD, "scope": "bad\"scope"}, 400, "invalid_scope"),
        ({"grant_type": "refresh_token", "refresh_token": "x" * 600}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "not-a-token"}, 400, "invalid_grant"),
    ],
)
def test_invalid_token_requests_use_the_oauth_error_shape(auth, data, status, code):
    response = auth.client.post("/token", data=data)
    assert response.status_code == status
    assert oauth_error(response) == code


def test_token_endpoint_wrong_content_type_malformed_json_and_oversized_body(auth):
    wrong_type = auth.client.post("/token", data="grant_type=password", content_type="text/plain")
    assert wrong_type.status_code == 415 and oauth_error(wrong_type) == "invalid_request"
    malformed = auth.client.post("/token", data="{grant_type", content_type="application/json")
    assert malformed.status_code == 400 and oauth_error(malformed) == "invalid_request"
    oversized = auth.client.post("/token", data={"grant_type": "password", "pad": "x" * 20_000})
    assert oversized.status_code == 413 and oauth_error(oversized) == "invalid_request"
    not_allowed = auth.client.get("/token")
    assert not_allowed.status_code == 405


def test_refresh_rotates_the_refresh_token_and_refuses_the_old_one(auth):
    auth.register("gina@example.com")
    first = auth.login("gina@example.com")
    response = auth.refresh(first["refresh_token"])
    assert response.status_code == 200
    second = response.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert auth.client.get("/userinfo", headers=bearer(second["access_token"])).get_json()["email"] == "gina@example.com"
    again = auth.refresh(first["refresh_token"])
    assert again.status_code == 400 and oauth_error(again) == "invalid_grant"


def test_refresh_token_reuse_revokes_the_family(auth):
    auth.register("hank@example.com")
    first = auth.login("hank@example.com")
    second = auth.refresh(first["refresh_token"]).get_json()
    other_session = auth.login("hank@example.com")

    reuse = auth.refresh(first["refresh_token"])  # the rotated token comes back: a leak
    assert reuse.status_code == 400 and "revoked" in reuse.get_json()["error_description"]

    assert auth.refresh(second["refresh_token"]).status_code == 400  # the whole family is dead
    revoked = auth.client.get("/userinfo", headers=bearer(second["access_token"]))
    assert revoked.status_code == 401
    assert revoked.get_json()["error"]["message"] == "the access token has been revoked"
    # Another login (another family) is untouched.
    assert auth.refresh(other_session["refresh_token"]).status_code == 200


def test_refresh_can_narrow_the_scope_but_not_widen_it(auth):
    auth.register("ivy@example.com")
    tokens = auth.login("ivy@example.com", scope="chat profile")
    assert tokens["scope"] == "chat profile"
    wider = auth.refresh(tokens["refresh_token"], scope="chat admin")
    assert wider.status_code == 400 and oauth_error(wider) == "invalid_scope"
    narrower = auth.refresh(tokens["refresh_token"], scope="chat")
    assert narrower.status_code == 200 and narrower.get_json()["scope"] == "chat"


def test_expired_refresh_token_is_refused(backend):
    harness = start_auth({"AUTH_REFRESH_TTL_SECONDS": "1"})
    try:
        harness.register("jack@example.com")
        tokens = harness.login("jack@example.com")
        time.sleep(1.1)
        response = harness.refresh(tokens["refresh_token"])
        assert response.status_code == 400 and oauth_error(response) == "invalid_grant"
    finally:
        harness.close()


def test_failed_logins_are_throttled_per_account_with_retry_after(auth):
    auth.register("kim@example.com")
    auth.register("lee@example.com")
    for _ in range(5):
        response = auth.client.post("/token", data={"grant_type": "password", "username": "kim@example.com", "password": "Wrong-password-1"})
        assert response.status_code == 400
    # Locked now, even with the right password: guessing cannot go on.
    locked = auth.client.post("/token", data={"grant_type": "password", "username": "kim@example.com", "password": PASSWORD})
    assert locked.status_code == 429
    assert oauth_error(locked) == "slow_down"
    assert 800 <= int(locked.headers["Retry-After"]) <= 900
    # Another account from the same address is not locked by kim's failures.
    assert auth.login("lee@example.com")["access_token"]


def test_failed_logins_are_throttled_per_ip(backend):
    harness = start_auth({"AUTH_LOGIN_MAX_FAILURES_PER_IP": "3"})
    try:
        harness.register("mia@example.com")
        for n in range(3):
            response = harness.client.post(
                "/token",
                data={"grant_type": "password", "username": f"guess{n}@example.com", "password": "Wrong-password-1"},
                environ_base={"REMOTE_ADDR": "10.1.2.3"},
            )
            assert response.status_code == 400
        blocked = harness.client.post(
            "/token", data={"grant_type": "password", "username": "mia@example.com", "password": PASSWORD}, environ_base={"REMOTE_ADDR": "10.1.2.3"}
        )
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
        elsewhere = harness.client.post(
            "/token", data={"grant_type": "password", "username": "mia@example.com", "password": PASSWORD}, environ_base={"REMOTE_ADDR": "10.9.9.9"}
        )
        assert elsewhere.status_code == 200
    finally:
        harness.close()


def test_successful_login_resets_the_account_failure_count(auth):
    auth.register("ned@example.com")
    for _ in range(4):
        auth.client.post("/token", data={"grant_type": "password", "username": "ned@example.com", "password": "Wrong-password-1"})
    auth.login("ned@example.com")
    for _ in range(4):
        auth.client.post("/token", data={"grant_type": "password", "username": "ned@example.com", "password": "Wrong-password-1"})
    assert auth.login("ned@example.com")["access_token"]


def test_login_rehashes_passwords_stored_with_weaker_parameters(backend):
    harness = start_auth()
    harness.register("olga@example.com")
    harness.close()
    stronger = start_auth({"AUTH_ARGON2_TIME_COST": "2"}, clear=False)
    try:
        db = stronger.module.runtime().service.store.db
        before = db.fetch_one("SELECT password_hash FROM auth_users WHERE email = 'olga@example.com'")["password_hash"]
        assert "t=1" in before
        stronger.login("olga@example.com")
        after = db.fetch_one("SELECT password_hash FROM auth_users WHERE email = 'olga@example.com'")["password_hash"]
        assert "t=2" in after
        assert stronger.login("olga@example.com")["access_token"]
    finally:
        stronger.close()


def test_userinfo_requires_a_bearer_token(auth):
    response = auth.client.get("/userinfo")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
