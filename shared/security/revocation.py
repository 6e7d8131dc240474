"""Revoked access-token ids, shared by every function through the ``auth`` cache namespace."""
from __future__ import annotations

import time
from typing import Any, Callable

from shared.errors import PlatformError, UnavailableError

KEY_PREFIX = "revoked:"


class RevocationList:
    """``revoked:<jti>`` entries that live exactly as long as the token they cancel could."""

    def __init__(self, cache: Any, clock: Callable[[], float] = time.time, grace_seconds: float = 60.0) -> None:
        self._cache = cache
        self._clock = clock
        # Verifiers accept a token for ``leeway`` seconds past ``exp``; outlive that.
        self._grace = grace_seconds

    def revoke(self, jti: str, expires_at: float) -> None:
        remaining = expires_at + self._grace - self._clock()
        if remaining <= 0:
            return  # already unusable; nothing to remember
        self._cache.set(KEY_PREFIX + jti, b"1", ttl=remaining)

    def is_revoked(self, jti: str) -> bool:
        """Fails closed: when the cache cannot answer, the request is refused with 503."""
        try:
            return self._cache.get(KEY_PREFIX + jti) is not None
        except PlatformError:
            raise
        except Exception as exc:  # a backend that leaked a driver error
            raise UnavailableError("the token revocation list is unavailable") from exc
