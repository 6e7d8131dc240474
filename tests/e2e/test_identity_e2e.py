"""Issue 2's walk through the dev gateway, with every part a separate process:
register → token → profile → preferences → refresh rotation and reuse → revoke → refused,
JWKS, and an async invocation delivered to a callback."""
from __future__ import annotations

import time

import jwt
import requests

from tests.e2e.conftest import bearer, json_error, register_and_login

PASSWORD = "correct horse battery 9"


def test_register_login_profile_preferences_refresh_revoke(identity_platform):
    gw = identity_platform.gateway
    email = f"Ada.{time.time_ns()}@Example.com"

    created = requests.post(f"{gw}/function/auth/register", json={"email": email, "password": PASSWORD}, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()["email"] == email.lower()
    assert requests.post(f"{gw}/function/auth/register", json={"email": email, "password": PASSWORD},
                         timeout=10).status_code == 409

    token = requests.post(f"{gw}/function/auth/token",
                          data={"grant_type": "password", "username": email, "password": PASSWORD}, timeout=10)
    assert token.status_code == 200, token.text
    pair = token.json()
    assert pair["token_type"].lower() == "bearer"
    assert 600 <= pair["expires_in"] <= 1800
    access, refresh = pair["access_token"], pair["refresh_token"]

    me = requests.get(f"{gw}/function/users/me", headers=bearer(access), timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == email.lower()

    prefs = {"language": "fr-FR", "default_model": "smollm2-135m-instruct", "temperature": 0.3,
             "max_tokens": 200, "system_prompt": "Answer briefly."}
    put = requests.put(f"{gw}/function/users/me/preferences", json=prefs, headers=bearer(access), timeout=10)
    assert put.status_code == 200, put.text
    stored = requests.get(f"{gw}/function/users/me/preferences", headers=bearer(access), timeout=10).json()
    assert {k: stored[k] for k in prefs} == prefs

    patched = requests.patch(f"{gw}/function/users/me", json={"display_name": "Ada L."}, headers=bearer(access), timeout=10)
    assert patched.status_code == 200, patched.text
    assert requests.get(f"{gw}/function/users/me", headers=bearer(access), timeout=10).json()["display_name"] == "Ada L."

    bad = requests.put(f"{gw}/function/users/me/preferences", json={**prefs, "temperature": 7},
                       headers=bearer(access), timeout=10)
    assert bad.status_code == 422
    assert json_error(bad)["code"] == "validation_error"

    # Refresh: a new pair; the old refresh token is refused; reusing it revokes the family.
    rotated = requests.post(f"{gw}/function/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}, timeout=10)
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != refresh and second["access_token"] != access
    reused = requests.post(f"{gw}/function/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}, timeout=10)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    family_gone = requests.post(f"{gw}/function/auth/token",
                                data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}, timeout=10)
    assert family_gone.status_code == 400, "reusing a rotated refresh token must revoke the whole family"

    # A fresh login, then revoke its access token: every function refuses it at once.
    third = requests.post(f"{gw}/function/auth/token",
                          data={"grant_type": "password", "username": email, "password": PASSWORD}, timeout=10).json()
    assert requests.get(f"{gw}/function/users/me", headers=bearer(third["access_token"]), timeout=10).status_code == 200
    revoked = requests.post(f"{gw}/function/auth/revoke", data={"token": third["access_token"]}, timeout=10)
    assert revoked.status_code == 200
    refused = requests.get(f"{gw}/function/users/me", headers=bearer(third["access_token"]), timeout=10)
    assert refused.status_code == 401
    assert json_error(refused)["code"] == "invalid_token"
    assert requests.get(f"{gw}/function/auth/userinfo", headers=bearer(third["access_token"]), timeout=10).status_code == 401


def test_jwks_publishes_the_key_that_signs_access_tokens(identity_platform):
    gw = identity_platform.gateway
    pair = register_and_login(gw, f"jwks.{time.time_ns()}@example.com")
    jwks = requests.get(f"{gw}/function/auth/.well-known/jwks.json", timeout=10)
    assert jwks.status_code == 200
    keys = {key["kid"]: key for key in jwks.json()["keys"]}
    header = jwt.get_unverified_header(pair["access_token"])
    assert header["kid"] in keys
    assert header["alg"] in {"RS256", "EdDSA"}
    assert all("d" not in key for key in keys.values()), "private key material must never be published"


def test_admin_from_configuration_lists_users_and_others_get_403(identity_platform):
    gw = identity_platform.gateway
    admin = register_and_login(gw, "root@example.com")
    user = register_and_login(gw, f"plain.{time.time_ns()}@example.com")
    requests.get(f"{gw}/function/users/me", headers=bearer(user["access_token"]), timeout=10)
    listing = requests.get(f"{gw}/function/users/users?limit=50", headers=bearer(admin["access_token"]), timeout=10)
    assert listing.status_code == 200, listing.text
    forbidden = requests.get(f"{gw}/function/users/users", headers=bearer(user["access_token"]), timeout=10)
    assert forbidden.status_code == 403
    assert json_error(forbidden)["code"] == "forbidden"


def test_bad_input_through_the_gateway_is_a_json_4xx(identity_platform):
    gw = identity_platform.gateway
    cases = [
        requests.post(f"{gw}/function/auth/register", data="{oops", headers={"Content-Type": "application/json"}, timeout=10),
        requests.post(f"{gw}/function/auth/register", data="email=a", headers={"Content-Type": "text/plain"}, timeout=10),
        requests.post(f"{gw}/function/auth/register", json={"email": "x@example.com"}, timeout=10),
        requests.post(f"{gw}/function/auth/register", json={"email": "x@example.com", "password": "p" * 5000}, timeout=10),
        requests.post(f"{gw}/function/auth/register", data=b"{" + b" " * 2_000_000 + b"}",
                      headers={"Content-Type": "application/json"}, timeout=10),
        requests.get(f"{gw}/function/users/nowhere", timeout=10),
        requests.delete(f"{gw}/function/auth/register", timeout=10),
        requests.get(f"{gw}/function/users/me", headers=bearer("not-a-jwt"), timeout=10),
        requests.get(f"{gw}/function/nosuchfunction/x", timeout=10),
    ]
    statuses = [r.status_code for r in cases]
    assert statuses == [400, 415, 422, 422, 413, 404, 405, 401, 404], statuses
    for response in cases:
        json_error(response)
        assert "Traceback" not in response.text


def test_async_invocation_result_arrives_at_the_callback(identity_platform, callback_receiver):
    gw = identity_platform.gateway
    pair = register_and_login(gw, f"async.{time.time_ns()}@example.com")
    prefs = {"language": "en", "temperature": 1.1, "max_tokens": 64}
    queued = requests.post(f"{gw}/async-function/users/me/preferences", json=prefs,
                           headers={**bearer(pair["access_token"]), "X-Callback-Url": callback_receiver.url}, timeout=10)
    assert queued.status_code == 202
    call_id = queued.headers["X-Call-Id"]

    delivered = callback_receiver.next(timeout=60)
    headers = {k.lower(): v for k, v in delivered["headers"].items()}
    assert headers["x-call-id"] == call_id
    assert headers["x-function-status"] == "200"
    assert float(headers["x-duration-seconds"]) >= 0
    assert b'"temperature":1.1' in delivered["body"].replace(b" ", b"")
    stored = requests.get(f"{gw}/function/users/me/preferences", headers=bearer(pair["access_token"]), timeout=10).json()
    assert stored["temperature"] == 1.1
