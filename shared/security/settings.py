"""Token-verification settings, shared by the issuer (auth) and every verifying function."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from shared.config import env_float, env_str, function_url

DEFAULT_ISSUER = "chatfaas-auth"
DEFAULT_AUDIENCE = "chatfaas"
from shared.config import DEFAULT_GATEWAY_URL
JWKS_PATH = "/.well-known/jwks.json"
# Asymmetric only: an HMAC algorithm here would let anyone holding the public key mint tokens.
ALLOWED_ALGORITHMS = ("RS256", "EdDSA")


@dataclass(frozen=True)
class SecuritySettings:
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    leeway_seconds: float = 30.0
    jwks_url: str = DEFAULT_GATEWAY_URL + "/function/auth" + JWKS_PATH
    jwks_ttl_seconds: float = 300.0
    # An unknown kid forces a JWKS refetch at most this often, so random kids cannot flood auth.
    jwks_min_refresh_seconds: float = 10.0
    jwks_timeout_seconds: float = 3.0
    # A verified token is remembered this long (signature and claims only; revocation is
    # checked on every request). 0 disables it.
    verify_cache_seconds: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SecuritySettings":
        return cls(
            issuer=env_str("AUTH_ISSUER", DEFAULT_ISSUER, environ=environ),
            audience=env_str("AUTH_AUDIENCE", DEFAULT_AUDIENCE, environ=environ),
            leeway_seconds=env_float("AUTH_LEEWAY_SECONDS", 30.0, environ=environ),
            jwks_url=env_str("AUTH_JWKS_URL", function_url("auth", environ) + JWKS_PATH, environ=environ),
            jwks_ttl_seconds=env_float("AUTH_JWKS_TTL_SECONDS", 300.0, environ=environ),
            jwks_min_refresh_seconds=env_float("AUTH_JWKS_MIN_REFRESH_SECONDS", 10.0, environ=environ),
            jwks_timeout_seconds=env_float("AUTH_JWKS_TIMEOUT_SECONDS", 3.0, environ=environ),
            verify_cache_seconds=env_float("AUTH_VERIFY_CACHE_SECONDS", 5.0, environ=environ),
        )
