"""POST /revoke (RFC 7009): possession of a token is the authority to revoke it."""
from __future__ import annotations

import pytest

from tests.functions.identity_support import bearer


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
def test_revoking_an_access_token_refuses_it_at_once(auth, hint):
    auth.register("pat@example.com")
    tokens = auth.login("pat@example.com")
    assert auth.client.get("/userinfo", headers=bearer(tokens["access_token"])).status_code == 200
    data = {"token": tokens["access_token"], **({"token_type_hint": hint} if hint else {})}
    response = auth.client.post("/revoke", data=data)
    assert response.status_code == 200
    refused = auth.client.get("/userinfo", headers=bearer(tokens["access_token"]))
    assert refused.status_code == 401
    assert refused.get_json() == {"error": {"code": "invalid_token", "message": "the access token has been revoked"}}
    # The refresh token of that login is a separate credential and still works.
    assert auth.refresh(tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize("hint", [None, "refresh_token", "access_token"])
def test_revoking_a_refresh_token_ends_the_session(auth, hint):
    auth.register("quinn@example.com")
    tokens = auth.login("quinn@example.com")
    data = {"token": tokens["refresh_token"], **({"token_type_hint": hint} if hint else {})}
    assert auth.client.post("/revoke", data=data).status_code == 200
    assert auth.refresh(tokens["refresh_token"]).status_code == 400
    # The access token issued with it is cancelled too.
    assert auth.client.get("/userinfo", headers=bearer(tokens["access_token"])).status_code == 401


def test_revoke_accepts_json(auth):
    auth.register("rae@example.com")
    tokens = auth.login("rae@example.com")
    assert auth.client.post("/revoke", json={"token": tokens["refresh_token"]}).status_code == 200
    assert auth.refresh(tokens["refresh_token"]).status_code == 400


@pytest.mark.parametrize("token", ["unknown-opaque-token", "aaa.bbb.ccc", "eyJhbGciOiJub25lIn0.e30."])
def test_unknown_or_invalid_tokens_are_still_200(auth, token):
    response = auth.client.post("/revoke", data={"token": token})
    assert response.status_code == 200
    assert response.get_data() == b""


def test_revoke_without_token_is_an_oauth_invalid_request(auth):
    response = auth.client.post("/revoke", data={"token_type_hint": "refresh_token"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"
    wrong_type = auth.client.post("/revoke", data="token=x", content_type="text/plain")
    assert wrong_type.status_code == 415 and wrong_type.get_json()["error"] == "invalid_request"
