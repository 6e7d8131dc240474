"""The conversation store: one interface, a MongoDB and a relational backend.

``conversation_store_from_env()`` picks MongoDB when ``MONGODB_URL`` is set (database
``MONGODB_DB``, default ``chatfaas``), else the relational store of the ``chat`` component
(``DATABASE_URL`` → PostgreSQL, else the embedded SQLite file).
"""
from __future__ import annotations

from functions.chat.store.base import (
    COMPLETE,
    FAILED,
    PENDING,
    Conversation,
    ConversationStore,
    Message,
    NewMessage,
    Outcome,
    Page,
    is_id,
    new_id,
    require_id,
)
from shared.config import env_str

DEFAULT_MONGODB_DB = "chatfaas"


def conversation_store_from_env() -> ConversationStore:
    url = env_str("MONGODB_URL", "")
    if url:
        from functions.chat.store.mongo import MongoConversationStore

        return MongoConversationStore(url, env_str("MONGODB_DB", DEFAULT_MONGODB_DB))
    from functions.chat.store.sql import SqlConversationStore
    from shared.storage.relational import database_from_env

    return SqlConversationStore(database_from_env("chat"))


__all__ = [
    "COMPLETE", "FAILED", "PENDING", "Conversation", "ConversationStore", "Message", "NewMessage",
    "Outcome", "Page", "conversation_store_from_env", "is_id", "new_id", "require_id",
]
