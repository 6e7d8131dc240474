"""OAuth 2.0 errors: the one place auth leaves the platform's error envelope.

RFC 6749 §5.2 and RFC 7009 §2.2.1 require the token and revocation endpoints to answer
``{"error": "<code>", "error_description": "..."}`` with ``error`` a *string*, so standard OAuth
clients can read it; the platform body ``{"error": {"code", "message"}}`` would break them.
Every other auth route uses the platform envelope.
"""
from __future__ import annotations

from typing import Any

from shared.errors import PlatformError, RateLimitedError


class OAuthError(PlatformError):
    """An OAuth 2.0 error response (RFC 6749 §5.2)."""

    status, code = 400, "invalid_request"

    def to_body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.message}


def invalid_grant(message: str) -> OAuthError:
    return OAuthError(message, code="invalid_grant")


def as_oauth_error(err: PlatformError) -> OAuthError:
    """Re-shape a platform error raised while serving an OAuth endpoint (bad body, throttling)."""
    if isinstance(err, OAuthError):
        return err
    if isinstance(err, RateLimitedError):
        # "slow_down" is the registered OAuth error code for "you are asking too often".
        return OAuthError(err.message, code="slow_down", status=429, headers=err.headers)
    if err.status in (400, 413, 415, 422):
        message = err.message
        if isinstance(err.details, list) and err.details:
            message += ": " + "; ".join(f"{d.get('field')}: {d.get('message')}" for d in err.details)
        return OAuthError(message, code="invalid_request", status=400 if err.status == 422 else err.status, headers=err.headers, details=None)
    if err.status == 401:
        return OAuthError(err.message, code="invalid_client", status=401, headers=err.headers)
    return OAuthError(err.message, code="temporarily_unavailable" if err.status == 503 else "server_error", status=err.status, headers=err.headers)
