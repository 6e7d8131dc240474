"""Profiles and preferences: pure logic over an injected store, cache and clock."""
from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from datetime import datetime
from typing import Any, Callable, Mapping

from shared.errors import BadRequestError, ForbiddenError, NotFoundError, PlatformError, ValidationError

from functions.users.schemas import Preferences, ProfilePatch
from functions.users.store import ProfileRecord, SqlProfileStore

log = logging.getLogger("functions.users")


def encode_cursor(profile: ProfileRecord) -> str:
    raw = json.dumps([profile.created_at, profile.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, user_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created_at), str(user_id)
    except (ValueError, TypeError, binascii.Error):
        raise ValidationError(
            "the request is invalid", details=[{"field": "cursor", "message": "not a cursor returned by this API"}]
        ) from None


class ProfileCache:
    """Read-through cache of whole profiles. It is an optimisation only: when the cache
    backend fails, requests go to the database instead of failing."""

    def __init__(self, cache: Any, ttl: float) -> None:
        self._cache = cache
        self._ttl = ttl

    @staticmethod
    def _key(user_id: str) -> str:
        return f"profile:{user_id}"

    def get(self, user_id: str) -> ProfileRecord | None:
        try:
            data = self._cache.get_json(self._key(user_id))
        except Exception as exc:
            log.warning("profile cache read failed: %s", exc)
            return None
        return ProfileRecord.from_json(data) if data else None

    def put(self, profile: ProfileRecord) -> None:
        try:
            self._cache.set_json(self._key(profile.id), profile.to_json(), ttl=self._ttl)
        except Exception as exc:
            log.warning("profile cache write failed: %s", exc)

    def invalidate(self, user_id: str) -> None:
        try:
            self._cache.delete(self._key(user_id))
        except Exception as exc:
            log.warning("profile cache invalidation failed (stale for at most %ss): %s", self._ttl, exc)


class UsersService:
    def __init__(self, store: SqlProfileStore, cache: ProfileCache, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cache = cache
        self._clock = clock

    # -- the caller's own profile ------------------------------------------------------------
    def me(self, principal: Any) -> ProfileRecord:
        """The caller's profile, created from the token's claims on first access; email and
        roles follow the token (auth is their source of truth)."""
        cached = self.cache.get(principal.sub)
        if cached is not None and _identity_matches(cached, principal):
            return cached
        profile = self.store.get(principal.sub)
        if profile is None:
            now = self._clock()
            self.store.insert_if_absent(
                ProfileRecord(principal.sub, principal.email, None, tuple(principal.roles), Preferences().model_dump(), now, now)
            )
            profile = self._load(principal.sub)
        elif not _identity_matches(profile, principal):
            self.store.update_identity(principal.sub, principal.email, tuple(principal.roles), self._clock())
            profile = self._load(principal.sub)
        self.cache.put(profile)
        return profile

    def update_me(self, principal: Any, patch: ProfilePatch) -> ProfileRecord:
        self.me(principal)
        if "display_name" in patch.model_fields_set:
            self.store.update_display_name(principal.sub, patch.display_name, self._clock())
        return self._reload(principal.sub)

    def preferences(self, principal: Any) -> Preferences:
        return Preferences.model_validate(self.me(principal).preferences)

    def replace_preferences(self, principal: Any, preferences: Preferences) -> Preferences:
        self.me(principal)
        self.store.update_preferences(principal.sub, preferences.model_dump(), self._clock())
        return Preferences.model_validate(self._reload(principal.sub).preferences)

    # -- other users -------------------------------------------------------------------------
    def get(self, principal: Any, user_id: str) -> ProfileRecord:
        if user_id == principal.sub:
            return self.me(principal)
        if not principal.is_admin:
            raise ForbiddenError("you may only read your own profile")
        profile = self.cache.get(user_id) or self.store.get(user_id)
        if profile is None:
            raise NotFoundError(f"no user {user_id}")
        return profile

    def list(self, limit: int, cursor: str | None) -> tuple[list[ProfileRecord], str | None]:
        after = decode_cursor(cursor) if cursor else None
        # One extra row tells whether another page exists without a COUNT.
        rows = self.store.page(limit + 1, after)
        page = rows[:limit]
        return page, (encode_cursor(page[-1]) if len(rows) > limit else None)

    # -- events ------------------------------------------------------------------------------
    def on_user_registered(self, data: Mapping[str, Any]) -> bool:
        """Create the profile announced by auth; ``False`` when it already existed (a redelivery,
        or the user reached ``/me`` first). Safe to run any number of times."""
        user_id = data.get("user_id") if isinstance(data, Mapping) else None
        if not isinstance(user_id, str) or not user_id:
            raise BadRequestError("auth.user.registered event without a user_id", code="invalid_event")
        roles = data.get("roles") or ["user"]
        created_at = _epoch(data.get("created_at")) or self._clock()
        display_name = data.get("display_name") if isinstance(data.get("display_name"), str) else None
        created = self.store.insert_if_absent(
            ProfileRecord(
                user_id,
                data.get("email") if isinstance(data.get("email"), str) else None,
                display_name,
                tuple(str(role) for role in roles),
                Preferences().model_dump(),
                created_at,
                created_at,
            )
        )
        if not created and display_name:
            existing = self.store.get(user_id)
            if existing is not None and existing.display_name is None and existing.created_at == existing.updated_at:
                self.store.update_display_name(user_id, display_name, existing.updated_at)
                self.cache.invalidate(user_id)
        return created

    # -- helpers -----------------------------------------------------------------------------
    def _load(self, user_id: str) -> ProfileRecord:
        profile = self.store.get(user_id)
        if profile is None:  # deleted between write and read: a conflict, not a crash
            raise PlatformError("the profile vanished while it was being written", code="conflict", status=409)
        return profile

    def _reload(self, user_id: str) -> ProfileRecord:
        """Read after a write; the cached copy is dropped first so no reader sees the old one."""
        self.cache.invalidate(user_id)
        profile = self._load(user_id)
        self.cache.put(profile)
        return profile


def _identity_matches(profile: ProfileRecord, principal: Any) -> bool:
    return profile.email == principal.email and profile.roles == tuple(principal.roles)


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None
