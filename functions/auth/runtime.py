"""Auth's adapters, built once per process on first use (never at import)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.config import env_float
from shared.security import RevocationList, SecuritySettings, StaticKeySource, TokenVerifier

from functions.auth.keys import KeyRing, load_key_ring
from functions.auth.notify import RegistrationNotifier
from functions.auth.service import AuthService, AuthSettings, LoginThrottle
from functions.auth.store import SqlAuthStore


@dataclass
class Runtime:
    keys: KeyRing
    verifier: TokenVerifier
    service: AuthService


def _publisher() -> object:
    from shared.events import publisher_from_env

    return publisher_from_env()


def build_runtime() -> Runtime:
    from shared.storage.cache import cache_from_env
    from shared.storage.relational import database_from_env

    settings = AuthSettings.from_env()
    keys = load_key_ring()
    store = SqlAuthStore(database_from_env("auth"))
    store.migrate()
    cache = cache_from_env("auth")
    revocations = RevocationList(cache)
    # Inside auth the verifier uses the key ring directly: no HTTP round trip to itself.
    verifier = TokenVerifier(SecuritySettings.from_env(), StaticKeySource(keys.public_keys), revocations)
    service = AuthService(
        store=store,
        keys=lambda: keys,
        verifier=verifier,
        revocations=revocations,
        throttle=LoginThrottle(cache, settings),
        settings=settings,
        on_registered=RegistrationNotifier(_publisher, timeout=env_float("AUTH_EVENT_PUBLISH_TIMEOUT_SECONDS", 2.0)),
    )
    return Runtime(keys, verifier, service)


class LazyRuntime:
    def __init__(self) -> None:
        self._value: Runtime | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Runtime:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = build_runtime()
        return self._value
