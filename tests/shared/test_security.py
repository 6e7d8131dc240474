"""shared.security: what every function accepts as a bearer token, and what it refuses."""
from __future__ import annotations

import base64
import json
import os
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from functions.auth.keys import KeyRing, generate_key
from shared.errors import UnauthorizedError, UnavailableError
from shared.http import App
from shared.security import JwksKeySource, RevocationList, SecuritySettings, TokenVerifier, reset_default_verifier
from tests.functions.identity_support import JwksServer, reset_process_state

ISSUER, AUDIENCE = "chatfaas-auth", "chatfaas"


@pytest.fixture(scope="module")
def rsa_key():
    return generate_key("RS256")


@pytest.fixture(scope="module")
def ed_key():
    return generate_key("EdDSA")


@pytest.fixture
def jwks(rsa_key, ed_key):
    server = JwksServer(KeyRing([rsa_key, ed_key]).jwks()).start()
    yield server
    server.stop()


def claims(**overrides):
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "email": "user@example.com",
        "roles": ["user"],
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def make_verifier(jwks, revocations=None, **settings):
    source = JwksKeySource(jwks.url, min_refresh=settings.pop("min_refresh", 10.0))
    return TokenVerifier(SecuritySettings(**settings), source, revocations)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def refused(verifier, token) -> str:
    with pytest.raises(UnauthorizedError) as info:
        verifier.verify(token)
    assert info.value.status == 401 and info.value.headers["WWW-Authenticate"].startswith("Bearer")
    return info.value.message


@pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
def test_a_valid_token_gives_the_principal(jwks, rsa_key, ed_key, alg):
    key = rsa_key if alg == "RS256" else ed_key
    token = key.sign(claims(roles=["user", "admin"]))
    principal = make_verifier(jwks).verify(token)
    assert principal.sub == "user-1" and principal.email == "user@example.com"
    assert principal.roles == ("user", "admin") and principal.is_admin
    assert principal.expires_at > time.time() and principal.jti and principal.claims["iss"] == ISSUER


def test_expired_token_is_refused_but_leeway_is_honoured(jwks, rsa_key):
    verifier = make_verifier(jwks, leeway_seconds=30)
    now = int(time.time())
    assert "expired" in refused(verifier, rsa_key.sign(claims(exp=now - 31, iat=now - 900, nbf=now - 900)))
    assert verifier.verify(rsa_key.sign(claims(exp=now - 20, iat=now - 900, nbf=now - 900)))


def test_token_not_valid_yet_is_refused(jwks, rsa_key):
    now = int(time.time())
    assert "not valid yet" in refused(make_verifier(jwks), rsa_key.sign(claims(nbf=now + 300)))


def test_tampered_payload_is_refused(jwks, rsa_key):
    header, _, signature = rsa_key.sign(claims()).split(".")
    forged = ".".join([header, b64(claims(roles=["user", "admin"])), signature])
    assert "signature" in refused(make_verifier(jwks), forged)


def test_token_signed_by_another_key_with_a_known_kid_is_refused(jwks, rsa_key):
    impostor = generate_key("RS256")
    token = jwt.encode(claims(), impostor.private_key, algorithm="RS256", headers={"kid": rsa_key.kid})
    assert "signature" in refused(make_verifier(jwks), token)


def test_alg_none_is_refused(jwks, rsa_key):
    token = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': rsa_key.kid})}.{b64(claims())}."
    assert "'none'" in refused(make_verifier(jwks), token)


def test_hs256_signed_with_the_public_key_is_refused(jwks, rsa_key):
    public_pem = rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid})
    payload = b64(claims())
    import hashlib
    import hmac

    signature = base64.urlsafe_b64encode(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert "HS256" in refused(make_verifier(jwks), f"{header}.{payload}.{signature}")


def test_an_rs256_header_on_an_eddsa_kid_is_refused(jwks, rsa_key, ed_key):
    token = jwt.encode(claims(), rsa_key.private_key, algorithm="RS256", headers={"kid": ed_key.kid})
    assert "does not match" in refused(make_verifier(jwks), token)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"jti": None}, "'jti'"),
        ({"sub": None}, "'sub'"),
        ({"exp": None}, "'exp'"),
        ({"nbf": None}, "'nbf'"),
    ],
)
def test_wrong_or_missing_claims_are_refused(jwks, rsa_key, overrides, message):
    assert message in refused(make_verifier(jwks), rsa_key.sign(claims(**overrides)))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 5000])
def test_malformed_tokens_are_refused(jwks, token):
    refused(make_verifier(jwks), token)


def test_unknown_kid_refetches_once_and_a_flood_of_random_kids_does_not_hammer_auth(jwks, rsa_key):
    now = [0.0]
    source = JwksKeySource(jwks.url, ttl=300, min_refresh=10, clock=lambda: now[0])
    verifier = TokenVerifier(SecuritySettings(), source, None)
    assert verifier.verify(rsa_key.sign(claims()))
    assert jwks.fetches == 1
    now[0] = 60.0
    for _ in range(50):
        token = jwt.encode(claims(), rsa_key.private_key, algorithm="RS256", headers={"kid": uuid.uuid4().hex})
        assert "unknown key" in refused(verifier, token)
    assert jwks.fetches == 2  # one forced refresh, then rate-limited
    now[0] = 75.0
    refused(verifier, jwt.encode(claims(), rsa_key.private_key, algorithm="RS256", headers={"kid": "another"}))
    assert jwks.fetches == 3  # allowed again once min_refresh has passed
    now[0] = 400.0
    assert verifier.verify(rsa_key.sign(claims()))
    assert jwks.fetches == 4  # and the TTL refreshes known keys


def test_a_key_published_after_rotation_is_picked_up_on_its_first_token(jwks, rsa_key):
    verifier = make_verifier(jwks, min_refresh=0)
    assert verifier.verify(rsa_key.sign(claims()))
    new_key = generate_key("EdDSA")
    jwks.document = KeyRing([rsa_key, new_key]).jwks()
    assert verifier.verify(new_key.sign(claims())).sub == "user-1"
    assert verifier.verify(rsa_key.sign(claims()))  # the old key still verifies


def test_keys_stay_usable_while_auth_is_down(jwks, rsa_key):
    verifier = TokenVerifier(SecuritySettings(), JwksKeySource(jwks.url, ttl=0, min_refresh=0, timeout=0.5), None)
    assert verifier.verify(rsa_key.sign(claims()))
    jwks.stop()
    assert verifier.verify(rsa_key.sign(claims())).sub == "user-1"


def test_no_keys_at_all_is_503_not_401(jwks, rsa_key):
    url = jwks.url
    jwks.stop()
    verifier = TokenVerifier(SecuritySettings(), JwksKeySource(url, timeout=0.5), None)
    with pytest.raises(UnavailableError) as info:
        verifier.verify(rsa_key.sign(claims()))
    assert info.value.status == 503 and "Retry-After" in info.value.headers


@pytest.fixture(params=["memory", "sqlite", "redis"])
def auth_cache(request, tmp_path):
    from shared.storage.cache import cache_from_env

    reset_process_state()
    if request.param == "redis":
        os.environ["REDIS_URL"] = request.getfixturevalue("redis_url")
    else:
        os.environ["CACHE_BACKEND"] = request.param
    cache = cache_from_env("auth")
    yield cache
    cache.close()
    reset_process_state()


def test_a_revoked_jti_is_refused_at_once_even_when_the_token_was_just_verified(jwks, rsa_key, auth_cache):
    revocations = RevocationList(auth_cache)
    verifier = make_verifier(jwks, revocations, verify_cache_seconds=5)
    token_claims = claims()
    token = rsa_key.sign(token_claims)
    assert verifier.verify(token)  # now in the positive cache
    RevocationList(auth_cache).revoke(token_claims["jti"], token_claims["exp"])
    assert "revoked" in refused(verifier, token)
    ttl = auth_cache.ttl("revoked:" + token_claims["jti"])
    assert 900 < ttl <= 900 + 60  # lives as long as the token could still be accepted


def test_revoking_an_expired_token_stores_nothing(auth_cache):
    RevocationList(auth_cache).revoke("old", time.time() - 3600)
    assert auth_cache.get("revoked:old") is None


# -- through an App route, as every function sees it ---------------------------------------
@pytest.fixture
def guarded_app(jwks):
    reset_process_state()
    os.environ["CACHE_BACKEND"] = "memory"
    os.environ["AUTH_JWKS_URL"] = jwks.url
    app = App("guarded")

    @app.route("/mine", auth="user")
    def mine(request):
        return {"sub": request.principal.sub}

    @app.route("/admin", auth="admin")
    def admin(request):
        return {"ok": True}

    yield app
    reset_default_verifier()


def call(app, headers):
    from flask import Flask, request

    flask_app = Flask("t")
    flask_app.add_url_rule("/<path:p>", "all", lambda p: app.handle(request), methods=["GET"])
    return flask_app.test_client().get("/mine" if "admin" not in headers.get("X-Path", "") else "/admin", headers=headers)


def test_routes_with_auth_answer_401_json_for_missing_or_bad_tokens(guarded_app, rsa_key):
    for headers, code in [({}, "missing_token"), ({"Authorization": "Basic dTpw"}, "missing_token"), ({"Authorization": "Bearer nope"}, "invalid_token")]:
        response = call(guarded_app, headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == code
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    ok = call(guarded_app, {"Authorization": "Bearer " + rsa_key.sign(claims())})
    assert ok.status_code == 200 and ok.get_json() == {"sub": "user-1"}


def test_admin_routes_refuse_users_with_403(guarded_app, rsa_key):
    user = call(guarded_app, {"Authorization": "Bearer " + rsa_key.sign(claims()), "X-Path": "admin"})
    assert user.status_code == 403 and user.get_json()["error"]["code"] == "forbidden"
    admin = call(guarded_app, {"Authorization": "Bearer " + rsa_key.sign(claims(roles=["user", "admin"])), "X-Path": "admin"})
    assert admin.status_code == 200


def test_a_malformed_jwks_document_is_503_not_500(jwks, rsa_key):
    jwks.document = ["not", "a", "jwks"]
    verifier = make_verifier(jwks)
    with pytest.raises(UnavailableError):
        verifier.verify(rsa_key.sign(claims()))
