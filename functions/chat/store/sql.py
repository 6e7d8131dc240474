"""Relational backend over ``shared.storage.relational.Database`` (SQLite or PostgreSQL).

The embedded default (no ``MONGODB_URL``): tables ``chat_conversations`` and ``chat_messages``
(migrations in ``migrations/``), the same rules as the MongoDB backend. Values always travel as
bound parameters; ids are validated anyway so both backends refuse the same inputs.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from functions.chat.store.base import (
    PENDING,
    Conversation,
    ConversationStore,
    Cursor,
    Message,
    NewMessage,
    Page,
    check_outcome,
    clamp_limit,
    new_id,
    require_id,
    require_user_id,
)
from shared.errors import NotFoundError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
COMPONENT = "chat"

_CONVERSATION_COLUMNS = "id, user_id, title, model, system_prompt, created_at, updated_at"
_MESSAGE_COLUMNS = (
    "id, conversation_id, seq, parent_id, role, content, status, error_json, request_id, model, "
    "usage_json, finish_reason, created_at, updated_at"
)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(dict(value), separators=(",", ":"))


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def _conversation(row: dict) -> Conversation:
    return Conversation(
        id=row["id"], user_id=row["user_id"], title=row["title"], model=row["model"],
        system_prompt=row["system_prompt"], created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


def _message(row: dict) -> Message:
    return Message(
        id=row["id"], conversation_id=row["conversation_id"], parent_id=row["parent_id"], role=row["role"],
        content=row["content"], status=row["status"], created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]), seq=int(row["seq"]), error=_loads(row["error_json"]),
        request_id=row["request_id"], model=row["model"], usage=_loads(row["usage_json"]),
        finish_reason=row["finish_reason"],
    )


class SqlConversationStore(ConversationStore):
    def __init__(self, database: Any) -> None:
        self._db = database
        self._migrated = False
        self._lock = threading.Lock()

    def _ready(self) -> Any:
        if not self._migrated:
            with self._lock:
                if not self._migrated:
                    self._db.migrate(COMPONENT, MIGRATIONS)
                    self._migrated = True
        return self._db

    # -- conversations -------------------------------------------------------------------
    def create_conversation(self, user_id, *, now, title=None, model=None, system_prompt=None, id=None):
        row = {
            "id": require_id(id, "conversation id") if id is not None else new_id(),
            "user_id": require_user_id(user_id), "title": title, "model": model,
            "system_prompt": system_prompt, "created_at": now, "updated_at": now,
        }
        self._ready().execute(
            f"INSERT INTO chat_conversations ({_CONVERSATION_COLUMNS}, message_seq) "
            "VALUES (:id, :user_id, :title, :model, :system_prompt, :created_at, :updated_at, 0)",
            row,
        )
        return _conversation(row)

    def _owned_row(self, conversation_id: str, user_id: str | None) -> dict:
        params = {"id": require_id(conversation_id, "conversation id")}
        sql = f"SELECT {_CONVERSATION_COLUMNS} FROM chat_conversations WHERE id = :id"
        if user_id is not None:
            params["user_id"] = require_user_id(user_id)
            sql += " AND user_id = :user_id"
        row = self._ready().fetch_one(sql, params)
        if row is None:
            raise NotFoundError("conversation not found")
        return row

    def get_conversation(self, conversation_id, user_id):
        return _conversation(self._owned_row(conversation_id, user_id))

    def list_conversations(self, user_id, *, limit=None, cursor=None):
        size = clamp_limit(limit)
        params: dict[str, Any] = {"user_id": require_user_id(user_id), "limit": size + 1}
        where = "user_id = :user_id"
        if cursor:
            after = Cursor.decode(cursor)
            params.update(after_updated=after.updated_at, after_id=after.id)
            where += " AND (updated_at < :after_updated OR (updated_at = :after_updated AND id < :after_id))"
        rows = self._ready().fetch_all(
            f"SELECT {_CONVERSATION_COLUMNS} FROM chat_conversations WHERE {where} "
            "ORDER BY updated_at DESC, id DESC LIMIT :limit",
            params,
        )
        items = [_conversation(row) for row in rows[:size]]
        next_cursor = Cursor(items[-1].updated_at, items[-1].id).encode() if len(rows) > size else None
        return Page(items, next_cursor)

    def update_conversation(self, conversation_id, user_id, *, now, title=ConversationStore.UNSET,
                            model=ConversationStore.UNSET, system_prompt=ConversationStore.UNSET):
        params = {"id": require_id(conversation_id, "conversation id"), "user_id": require_user_id(user_id), "now": now}
        # Column names come from this fixed tuple, never from the caller.
        assignments = ["updated_at = :now"]
        for column, value in (("title", title), ("model", model), ("system_prompt", system_prompt)):
            if value is not ConversationStore.UNSET:
                assignments.append(f"{column} = :{column}")
                params[column] = value
        db = self._ready()
        with db.transaction():
            changed = db.execute(
                f"UPDATE chat_conversations SET {', '.join(assignments)} WHERE id = :id AND user_id = :user_id", params
            )
            if not changed:
                raise NotFoundError("conversation not found")
            return _conversation(self._owned_row(conversation_id, user_id))

    def delete_conversation(self, conversation_id, user_id):
        params = {"id": require_id(conversation_id, "conversation id"), "user_id": require_user_id(user_id)}
        db = self._ready()
        with db.transaction():
            self._owned_row(conversation_id, user_id)
            db.execute("DELETE FROM chat_messages WHERE conversation_id = :id", {"id": params["id"]})
            db.execute("DELETE FROM chat_conversations WHERE id = :id AND user_id = :user_id", params)

    # -- messages ------------------------------------------------------------------------
    def add_messages(self, conversation_id, user_id, messages, *, now):
        params = {"id": require_id(conversation_id, "conversation id"), "user_id": require_user_id(user_id)}
        checked = [message.checked() for message in messages]
        db = self._ready()
        with db.transaction():
            # Bumping the counter first locks the conversation row and checks ownership.
            changed = db.execute(
                "UPDATE chat_conversations SET message_seq = message_seq + :count, updated_at = :now "
                "WHERE id = :id AND user_id = :user_id",
                {**params, "count": len(checked), "now": now},
            )
            if not changed:
                raise NotFoundError("conversation not found")
            last = db.fetch_one("SELECT message_seq FROM chat_conversations WHERE id = :id", {"id": params["id"]})
            first = int(last["message_seq"]) - len(checked) + 1
            rows = [self._message_row(params["id"], message, first + offset, now) for offset, message in enumerate(checked)]
            for row in rows:
                db.execute(
                    f"INSERT INTO chat_messages ({_MESSAGE_COLUMNS}) VALUES (:id, :conversation_id, :seq, :parent_id, "
                    ":role, :content, :status, :error_json, :request_id, :model, :usage_json, :finish_reason, "
                    ":created_at, :updated_at)",
                    row,
                )
        return [_message(row) for row in rows]

    @staticmethod
    def _message_row(conversation_id: str, message: NewMessage, seq: int, now: float) -> dict:
        return {
            "id": message.id, "conversation_id": conversation_id, "seq": seq, "parent_id": message.parent_id,
            "role": message.role, "content": message.content, "status": message.status, "error_json": None,
            "request_id": message.request_id, "model": message.model, "usage_json": None, "finish_reason": None,
            "created_at": now, "updated_at": now,
        }

    def list_messages(self, conversation_id, user_id):
        conversation = self.get_conversation(conversation_id, user_id)
        rows = self._ready().fetch_all(
            f"SELECT {_MESSAGE_COLUMNS} FROM chat_messages WHERE conversation_id = :id ORDER BY seq", {"id": conversation.id}
        )
        return [_message(row) for row in rows]

    def get_message(self, conversation_id, message_id, user_id):
        conversation = self.get_conversation(conversation_id, user_id)
        row = self._ready().fetch_one(
            f"SELECT {_MESSAGE_COLUMNS} FROM chat_messages WHERE id = :id AND conversation_id = :conversation_id",
            {"id": require_id(message_id, "message id"), "conversation_id": conversation.id},
        )
        if row is None:
            raise NotFoundError("message not found")
        return _message(row)

    def find_by_request_id(self, request_id):
        row = self._ready().fetch_one(
            f"SELECT {_MESSAGE_COLUMNS} FROM chat_messages WHERE request_id = :request_id",
            {"request_id": require_id(request_id, "request id")},
        )
        return _message(row) if row else None

    def finish_message(self, request_id, outcome, *, now):
        request_id = require_id(request_id, "request id")
        outcome = check_outcome(outcome)
        params = {
            "request_id": request_id, "status": outcome.status, "content": outcome.content,
            "usage_json": _json_or_none(outcome.usage), "finish_reason": outcome.finish_reason,
            "error_json": _json_or_none(outcome.error), "model": outcome.model, "now": now, "pending": PENDING,
        }
        changed = self._ready().execute(
            "UPDATE chat_messages SET status = :status, content = :content, usage_json = :usage_json, "
            "finish_reason = :finish_reason, error_json = :error_json, model = COALESCE(:model, model), "
            "updated_at = :now WHERE request_id = :request_id AND status = :pending",
            params,
        )
        return self.find_by_request_id(request_id), bool(changed)

    def close(self) -> None:
        self._db.close()
