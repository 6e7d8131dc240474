"""The caller's preferences from the ``users`` function, through the gateway, cached per user.

``GET <users>/me/preferences`` (``FUNCTION_URL_USERS``, else ``${GATEWAY_URL}/function/users``) with the caller's own bearer token (so
users applies its own authorization). Answers are cached in the ``chat`` cache namespace for
``CHAT_PREFERENCES_TTL_SECONDS``.

When users is down, slow or answers garbage, a chat turn still goes ahead with the platform
defaults (logged, and cached for a few seconds so a dead users function is not called on every
turn): preferences refine a reply, they are not worth failing it for.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

import requests

from shared.errors import UnavailableError

log = logging.getLogger("functions.chat.users")

PREFERENCES_PATH = "/me/preferences"
FALLBACK_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class Preferences:
    """The fields of users' preferences document that chat applies (others are ignored)."""

    default_model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None
    language: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> "Preferences":
        if not isinstance(data, dict):
            raise ValueError("preferences are not a JSON object")

        def pick(name: str, kind: type | tuple[type, ...]) -> Any:
            value = data.get(name)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(
            default_model=pick("default_model", str) or None,
            temperature=float(t) if (t := pick("temperature", (int, float))) is not None else None,
            max_tokens=pick("max_tokens", int),
            system_prompt=pick("system_prompt", str) or None,
            language=pick("language", str),
        )


DEFAULTS = Preferences()


class UsersClient:
    def __init__(self, users_url: str, cache: Any, *, ttl: float = 60.0, timeout: float = 2.0,
                 session: requests.Session | None = None) -> None:
        self._url = users_url.rstrip("/") + PREFERENCES_PATH
        self._cache = cache
        self._ttl = ttl
        self._timeout = timeout
        self._session = session or requests.Session()

    @staticmethod
    def _key(user_id: str) -> str:
        # Hashed: a user id from a token is not trusted to be a well-behaved cache key.
        return "prefs:" + hashlib.sha256(user_id.encode()).hexdigest()[:32]

    def preferences(self, user_id: str, bearer_token: str | None) -> Preferences:
        cached = self._cached(user_id)
        if cached is not None:
            return cached
        try:
            prefs = self._fetch(bearer_token)
            ttl = self._ttl
        except (requests.RequestException, ValueError) as exc:
            log.warning("users preferences unavailable, using defaults: %s", exc)
            prefs, ttl = DEFAULTS, min(FALLBACK_TTL_SECONDS, self._ttl)
        self._remember(user_id, prefs, ttl)
        return prefs

    def _fetch(self, bearer_token: str | None) -> Preferences:
        headers = {"Accept": "application/json"}
        if bearer_token:
            headers["Authorization"] = f"Bearer {bearer_token}"
        response = self._session.get(self._url, headers=headers, timeout=self._timeout)
        if response.status_code == 404:  # a user without a profile yet has no preferences
            return DEFAULTS
        if response.status_code != 200:
            raise ValueError(f"users answered {response.status_code}")
        return Preferences.from_json(response.json())

    def _cached(self, user_id: str) -> Preferences | None:
        try:
            data = self._cache.get_json(self._key(user_id))
        except UnavailableError:
            return None
        return Preferences(**data) if isinstance(data, dict) else None

    def _remember(self, user_id: str, prefs: Preferences, ttl: float) -> None:
        if ttl <= 0:
            return
        try:
            self._cache.set_json(self._key(user_id), asdict(prefs), ttl=ttl)
        except UnavailableError:
            log.warning("cache unavailable; preferences not cached")
