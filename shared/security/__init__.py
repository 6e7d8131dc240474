"""JWT verification used by every function.

``authenticate_request(request)`` reads the bearer token, verifies it against auth's JWKS
(fetched through the gateway, cached), checks the revocation list in the shared ``auth``
cache namespace, and returns a :class:`Principal`; anything wrong is a 401.
"""
from __future__ import annotations

import threading
from typing import Any

from shared.errors import UnauthorizedError
from shared.security.keysource import JwksKeySource, KeySource, StaticKeySource, parse_jwks
from shared.security.principal import ADMIN_ROLE, Principal
from shared.security.revocation import RevocationList
from shared.security.settings import ALLOWED_ALGORITHMS, SecuritySettings
from shared.security.verifier import TokenVerifier

__all__ = [
    "ADMIN_ROLE",
    "ALLOWED_ALGORITHMS",
    "JwksKeySource",
    "KeySource",
    "Principal",
    "RevocationList",
    "SecuritySettings",
    "StaticKeySource",
    "TokenVerifier",
    "authenticate_request",
    "bearer_authenticator",
    "default_verifier",
    "parse_jwks",
    "reset_default_verifier",
    "revocation_list_from_env",
]

_default: TokenVerifier | None = None
_lock = threading.Lock()


def revocation_list_from_env() -> RevocationList:
    from shared.storage.cache import cache_from_env

    return RevocationList(cache_from_env("auth"))


def default_verifier() -> TokenVerifier:
    """The process-wide verifier, built once from the environment on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                settings = SecuritySettings.from_env()
                keys = JwksKeySource(
                    settings.jwks_url,
                    ttl=settings.jwks_ttl_seconds,
                    min_refresh=settings.jwks_min_refresh_seconds,
                    timeout=settings.jwks_timeout_seconds,
                )
                _default = TokenVerifier(settings, keys, revocation_list_from_env())
    return _default


def reset_default_verifier() -> None:
    """Forget the process-wide verifier (tests that change the environment)."""
    global _default
    with _lock:
        _default = None


def bearer_authenticator(verifier: TokenVerifier):
    """An ``App(authenticator=...)`` callable over a given verifier (auth uses its own keys)."""

    def authenticate(request: Any) -> Principal:
        token = request.bearer_token()
        if token is None:
            raise UnauthorizedError(
                "missing bearer token: send 'Authorization: Bearer <access token>'",
                code="missing_token",
                headers={"WWW-Authenticate": 'Bearer realm="chatfaas"'},
            )
        return verifier.verify(token)

    return authenticate


def authenticate_request(request: Any) -> Principal:
    """The caller of ``request``, or ``UnauthorizedError`` when the token is missing or bad."""
    return bearer_authenticator(default_verifier())(request)
