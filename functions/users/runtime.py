"""Users' adapters, built once per process on first use (never at import)."""
from __future__ import annotations

import threading

from shared.config import env_float

from functions.users.service import ProfileCache, UsersService
from functions.users.store import SqlProfileStore


def build_service() -> UsersService:
    from shared.storage.cache import cache_from_env
    from shared.storage.relational import database_from_env

    store = SqlProfileStore(database_from_env("users"))
    store.migrate()
    cache = ProfileCache(cache_from_env("users"), ttl=env_float("USERS_CACHE_TTL_SECONDS", 30.0))
    return UsersService(store, cache)


class LazyService:
    def __init__(self) -> None:
        self._value: UsersService | None = None
        self._lock = threading.Lock()

    def __call__(self) -> UsersService:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = build_service()
        return self._value
