"""The chat function's adapters, built once per process on first use (never at import).

``service()`` is what the routes call; ``reset()`` forgets everything (tests that change the
environment between cases).
"""
from __future__ import annotations

import threading
from typing import Any

from functions.chat.service import EVENT_SOURCE, ChatService
from functions.chat.settings import ChatSettings

_lock = threading.Lock()
_service: ChatService | None = None
_tokens: Any = None


def _token_cache() -> Any:
    """The namespace the worker writes the token channels into (shared.events.types)."""
    global _tokens
    if _tokens is None:
        with _lock:
            if _tokens is None:
                from shared.events.types import TOKEN_CACHE_NAMESPACE
                from shared.storage.cache import cache_from_env

                _tokens = cache_from_env(TOKEN_CACHE_NAMESPACE)
    return _tokens


def build_service() -> ChatService:
    from functions.chat.store import conversation_store_from_env
    from functions.chat.users_client import UsersClient
    from shared.events import publisher_from_env
    from shared.storage.cache import cache_from_env

    settings = ChatSettings.from_env()
    users = UsersClient(
        settings.users_url, cache_from_env("chat"),
        ttl=settings.preferences_ttl_seconds, timeout=settings.users_timeout_seconds,
    )
    return ChatService(conversation_store_from_env(), publisher_from_env(EVENT_SOURCE), _token_cache, users.preferences, settings)


def service() -> ChatService:
    global _service
    if _service is None:
        with _lock:
            if _service is None:
                _service = build_service()
    return _service


def reset() -> None:
    """Close and forget the adapters (tests)."""
    global _service, _tokens
    with _lock:
        if _service is not None:
            for closable in (_service.store, _service.publisher):
                close = getattr(closable, "close", None)
                if close is not None:
                    close()
        if _tokens is not None:
            _tokens.close()
        _service, _tokens = None, None
