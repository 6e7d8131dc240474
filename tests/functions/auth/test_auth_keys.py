"""Signing keys: JWKS publication, loading from the secret, dev persistence, rotation."""
from __future__ import annotations

import json
import os

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from functions.auth import keys as keys_module
from shared.config import ConfigError
from shared.security import JwksKeySource, SecuritySettings, TokenVerifier
from tests.functions.identity_support import bearer, load_app, reset_process_state, serve_wsgi, start_auth

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def test_jwks_publishes_public_keys_only_with_cache_control(auth):
    response = auth.client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    jwks = response.get_json()
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert {"kid", "alg", "use", "kty"} <= set(key) and key["use"] == "sig"
        assert not PRIVATE_MEMBERS & set(key)


def test_dev_key_is_generated_once_and_shared_by_restarts(auth):
    first = auth.client.get("/.well-known/jwks.json").get_json()
    tokens = auth.user("sam@example.com")[1]
    restarted = start_auth(clear=False)
    try:
        assert restarted.client.get("/.well-known/jwks.json").get_json() == first
        assert restarted.client.get("/userinfo", headers=bearer(tokens["access_token"])).status_code == 200
    finally:
        restarted.close()


def test_a_token_verifies_through_the_jwks_served_over_http(auth):
    tokens = auth.user("tess@example.com")[1]
    server = serve_wsgi(auth.flask_app)
    try:
        source = JwksKeySource(server.url + "/.well-known/jwks.json")
        principal = TokenVerifier(SecuritySettings(), source, None).verify(tokens["access_token"])
        assert principal.email == "tess@example.com" and principal.roles == ("user",)
    finally:
        server.stop()


def test_key_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(auth):
    old_tokens = auth.user("uma@example.com")[1]
    old_kid = jwt.get_unverified_header(old_tokens["access_token"])["kid"]
    ring = keys_module.rotate_file(keys_module.dev_keys_file(), alg="EdDSA")
    assert [k.kid for k in ring.keys][0] == old_kid and ring.signing_key.alg == "EdDSA"

    rotated = start_auth(clear=False)  # a new instance reads the rotated key set
    try:
        published = {k["kid"] for k in rotated.client.get("/.well-known/jwks.json").get_json()["keys"]}
        assert published == {old_kid, ring.signing_key.kid}
        assert rotated.client.get("/userinfo", headers=bearer(old_tokens["access_token"])).status_code == 200
        new_tokens = rotated.login("uma@example.com")
        header = jwt.get_unverified_header(new_tokens["access_token"])
        assert header["kid"] == ring.signing_key.kid and header["alg"] == "EdDSA"
        assert rotated.client.get("/userinfo", headers=bearer(new_tokens["access_token"])).status_code == 200
    finally:
        rotated.close()


def test_rotation_retires_a_key_only_after_its_tokens_expired():
    now = 1_000_000.0
    ring = keys_module.KeyRing([keys_module.generate_key("EdDSA", now)])
    ring = keys_module.rotate(ring, alg="EdDSA", now=now + 10, retire_after=3600)
    assert len(ring.keys) == 2  # the first key's tokens may still be alive
    ring = keys_module.rotate(ring, alg="EdDSA", now=now + 10 + 3601, retire_after=3600)
    assert len(ring.keys) == 2  # the first key retired, the second still published
    assert ring.keys[0].created_at == now + 10


def _pem(private_key) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.mark.parametrize("form", ["jwk-set", "pem"])
def test_keys_are_loaded_from_the_mounted_secret(backend, tmp_path, form):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    old_key, new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048), ed25519.Ed25519PrivateKey.generate()
    if form == "pem":
        content = _pem(old_key) + _pem(new_key)
    else:
        content = keys_module.KeyRing(
            [keys_module._from_private_key(old_key, 1.0, "old"), keys_module._from_private_key(new_key, 2.0, "new")]
        ).to_json()
    (secrets_dir / "auth-signing-keys").write_text(content)
    os.environ["SECRETS_DIR"] = str(secrets_dir)
    reset_process_state()
    harness = start_auth()
    try:
        jwks = harness.client.get("/.well-known/jwks.json").get_json()
        assert [k["alg"] for k in jwks["keys"]] == ["EdDSA", "RS256"]
        tokens = harness.user("vic@example.com")[1]
        header = jwt.get_unverified_header(tokens["access_token"])
        assert header["alg"] == "EdDSA" and header["kid"] == jwks["keys"][0]["kid"]
        if form == "jwk-set":
            assert header["kid"] == "new"
        assert not (tmp_path / "data" / "auth-signing-keys.json").exists()
    finally:
        harness.close()


@pytest.mark.parametrize(
    "content, message",
    [
        ("not a key", "neither"),
        ('{"keys": []}', "must be"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "not an RSA or OKP"),
        ("{broken json", "not valid JSON"),
    ],
)
def test_a_bad_secret_fails_loudly(content, message):
    with pytest.raises(ConfigError, match=message):
        keys_module.parse_keys(content)


def test_a_public_key_in_the_secret_is_refused():
    public_jwk = keys_module.generate_key("RS256").public_jwk
    with pytest.raises(ConfigError, match="public key"):
        keys_module.parse_keys(json.dumps({"keys": [public_jwk]}))


def test_small_rsa_keys_are_refused():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigError, match="2048"):
        keys_module.parse_keys(_pem(weak))


def test_required_secret_missing_makes_auth_not_ready(backend):
    reset_process_state()
    os.environ["AUTH_REQUIRE_SIGNING_KEYS"] = "true"
    os.environ["SECRETS_DIR"] = "/nonexistent"
    app, module = load_app("auth", "auth")
    client = app.test_client()
    assert client.get("/_/health").status_code == 200
    ready = client.get("/_/ready")
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
