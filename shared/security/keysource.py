"""Where verifying keys come from: auth's JWKS over HTTP, or a key ring held in-process."""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Protocol

import jwt

from shared.errors import UnavailableError

log = logging.getLogger("shared.security")


class KeySource(Protocol):
    def key_for(self, kid: str) -> jwt.PyJWK | None:
        """The public key for ``kid``, or ``None`` when it is not known."""


def parse_jwks(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """Usable signing keys of a JWKS by kid; keys we cannot use are skipped, not fatal."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS document is {"keys": [...]}')
    keys: dict[str, jwt.PyJWK] = {}
    for data in document["keys"]:
        kid = data.get("kid") if isinstance(data, Mapping) else None
        if not kid or data.get("use", "sig") != "sig":
            continue
        try:
            keys[kid] = jwt.PyJWK(dict(data))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("ignoring JWKS key %s: %s", kid, exc)
    return keys


def http_fetch_json(url: str, timeout: float) -> Mapping[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
        return json.loads(response.read())


class JwksKeySource:
    """Caches auth's JWKS for ``ttl`` seconds; an unknown kid triggers one refetch, at most
    every ``min_refresh`` seconds per process (a flood of random kids costs auth nothing)."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        min_refresh: float = 10.0,
        timeout: float = 3.0,
        fetch: Callable[[str, float], Mapping[str, Any]] = http_fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()
        self.fetch_count = 0

    def key_for(self, kid: str) -> jwt.PyJWK | None:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            self._refresh(now, forced=False)
        key = self._keys.get(kid)
        if key is None and self._may_force(now):
            self._refresh(now, forced=True)
            key = self._keys.get(kid)
        return key

    def _may_force(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh

    def _refresh(self, now: float, *, forced: bool) -> None:
        with self._lock:
            # Another thread may have refreshed while we waited for the lock.
            if forced and not self._may_force(now):
                return
            if not forced and self._fetched_at is not None and now - self._fetched_at < self._ttl:
                return
            if not forced and self._attempted_at is not None and self._keys and now - self._attempted_at < self._min_refresh:
                return  # a recent refresh failed; keep serving the keys we have
            self._attempted_at = now
            self.fetch_count += 1
            try:
                keys = parse_jwks(self._fetch(self.url, self._timeout))
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("cannot fetch JWKS from %s: %s", self.url, exc)
                if not self._keys:
                    raise UnavailableError("cannot fetch the token signing keys from auth", retry_after=5) from None
                return  # keep the stale keys: auth being down must not log everybody out
            self._keys = keys
            self._fetched_at = now


class StaticKeySource:
    """Keys given directly (inside the auth process, or in tests)."""

    def __init__(self, keys: Callable[[], Mapping[str, jwt.PyJWK]] | Mapping[str, jwt.PyJWK]) -> None:
        self._keys = keys

    def key_for(self, kid: str) -> jwt.PyJWK | None:
        keys = self._keys() if callable(self._keys) else self._keys
        return keys.get(kid)
