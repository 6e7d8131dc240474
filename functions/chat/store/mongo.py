"""MongoDB backend (pymongo): collections ``conversations`` and ``messages``.

Documents use the 32-hex id as ``_id``. Indexes: ``conversations(user_id, updated_at, _id)``
for the newest-first list, ``messages(conversation_id, created_at)`` and the unique
``messages(conversation_id, seq)`` for ordered reads, and a unique *sparse* index on
``messages.request_id`` (only assistant messages carry the field) so a redelivered result can
never produce a second assistant message. Every id is validated before it enters a filter.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

DUPLICATE_KEY = 11000

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
from shared.errors import ConflictError, NotFoundError, UnavailableError

SERVER_SELECTION_TIMEOUT_MS = 3000


@contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError:
        raise ConflictError(f"{action}: a record with this id already exists") from None
    except BulkWriteError as exc:
        if any(err.get("code") == DUPLICATE_KEY for err in exc.details.get("writeErrors", [])):
            raise ConflictError(f"{action}: a record with this id already exists") from None
        raise UnavailableError(f"conversation store unavailable ({type(exc).__name__})") from exc
    except PyMongoError as exc:
        raise UnavailableError(f"conversation store unavailable ({type(exc).__name__})") from exc


def _conversation(doc: dict) -> Conversation:
    return Conversation(
        id=doc["_id"], user_id=doc["user_id"], title=doc.get("title"), model=doc.get("model"),
        system_prompt=doc.get("system_prompt"), created_at=doc["created_at"], updated_at=doc["updated_at"],
    )


def _message(doc: dict) -> Message:
    return Message(
        id=doc["_id"], conversation_id=doc["conversation_id"], parent_id=doc.get("parent_id"),
        role=doc["role"], content=doc.get("content", ""), status=doc["status"],
        created_at=doc["created_at"], updated_at=doc["updated_at"], seq=doc.get("seq", 0),
        error=doc.get("error"), request_id=doc.get("request_id"), model=doc.get("model"),
        usage=doc.get("usage"), finish_reason=doc.get("finish_reason"),
    )


class MongoConversationStore(ConversationStore):
    def __init__(self, client_or_url: Any, db_name: str = "chatfaas") -> None:
        if isinstance(client_or_url, str):
            # Fail fast (503) when the server is away, unless the URL sets its own timeout.
            options = {} if "serverselectiontimeoutms" in client_or_url.lower() else {
                "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS}
            self._client = pymongo.MongoClient(client_or_url, **options)
            self._owns_client = True
        else:
            self._client = client_or_url
            self._owns_client = False
        db = self._client[db_name]
        self._conversations = db["conversations"]
        self._messages = db["messages"]
        self._indexes_ready = False
        self._lock = threading.Lock()

    def _ready(self) -> None:
        """Create the indexes once per process, on first use (not at import or boot)."""
        if self._indexes_ready:
            return
        with self._lock, _driver_errors("create indexes"):
            if self._indexes_ready:
                return
            self._conversations.create_index(
                [("user_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)], name="by_user_updated"
            )
            self._messages.create_index([("conversation_id", ASCENDING), ("created_at", ASCENDING)], name="by_conversation_created")
            self._messages.create_index([("conversation_id", ASCENDING), ("seq", ASCENDING)], name="by_conversation_seq", unique=True)
            self._messages.create_index("request_id", name="unique_request_id", unique=True, sparse=True)
            self._indexes_ready = True

    @staticmethod
    def _owned(conversation_id: str, user_id: str | None) -> dict:
        query: dict[str, Any] = {"_id": require_id(conversation_id, "conversation id")}
        if user_id is not None:
            query["user_id"] = require_user_id(user_id)
        return query

    # -- conversations -------------------------------------------------------------------
    def create_conversation(self, user_id, *, now, title=None, model=None, system_prompt=None, id=None):
        doc = {
            "_id": require_id(id, "conversation id") if id is not None else new_id(),
            "user_id": require_user_id(user_id), "title": title, "model": model,
            "system_prompt": system_prompt, "created_at": now, "updated_at": now, "message_seq": 0,
        }
        self._ready()
        with _driver_errors("create conversation"):
            self._conversations.insert_one(doc)
        return _conversation(doc)

    def get_conversation(self, conversation_id, user_id):
        query = self._owned(conversation_id, user_id)
        self._ready()
        with _driver_errors("get conversation"):
            doc = self._conversations.find_one(query)
        if doc is None:
            raise NotFoundError("conversation not found")
        return _conversation(doc)

    def list_conversations(self, user_id, *, limit=None, cursor=None):
        size = clamp_limit(limit)
        query: dict[str, Any] = {"user_id": require_user_id(user_id)}
        if cursor:
            after = Cursor.decode(cursor)
            query["$or"] = [
                {"updated_at": {"$lt": after.updated_at}},
                {"updated_at": after.updated_at, "_id": {"$lt": after.id}},
            ]
        self._ready()
        with _driver_errors("list conversations"):
            docs = list(self._conversations.find(query).sort([("updated_at", DESCENDING), ("_id", DESCENDING)]).limit(size + 1))
        items = [_conversation(doc) for doc in docs[:size]]
        next_cursor = Cursor(items[-1].updated_at, items[-1].id).encode() if len(docs) > size else None
        return Page(items, next_cursor)

    def update_conversation(self, conversation_id, user_id, *, now, title=ConversationStore.UNSET,
                            model=ConversationStore.UNSET, system_prompt=ConversationStore.UNSET):
        query = self._owned(conversation_id, user_id)
        changes = {"title": title, "model": model, "system_prompt": system_prompt}
        update = {key: value for key, value in changes.items() if value is not ConversationStore.UNSET}
        update["updated_at"] = now
        self._ready()
        with _driver_errors("update conversation"):
            doc = self._conversations.find_one_and_update(query, {"$set": update}, return_document=ReturnDocument.AFTER)
        if doc is None:
            raise NotFoundError("conversation not found")
        return _conversation(doc)

    def delete_conversation(self, conversation_id, user_id):
        query = self._owned(conversation_id, user_id)
        self._ready()
        with _driver_errors("delete conversation"):
            deleted = self._conversations.delete_one(query).deleted_count
            if not deleted:
                raise NotFoundError("conversation not found")
            self._messages.delete_many({"conversation_id": query["_id"]})

    # -- messages ------------------------------------------------------------------------
    def add_messages(self, conversation_id, user_id, messages, *, now):
        query = self._owned(conversation_id, user_id)
        checked = [message.checked() for message in messages]
        self._ready()
        with _driver_errors("add messages"):
            # The counter update both checks ownership and reserves the sequence numbers.
            doc = self._conversations.find_one_and_update(
                query, {"$inc": {"message_seq": len(checked)}, "$set": {"updated_at": now}},
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                raise NotFoundError("conversation not found")
            first = doc["message_seq"] - len(checked) + 1
            docs = [self._message_doc(query["_id"], message, first + offset, now) for offset, message in enumerate(checked)]
            if docs:
                self._messages.insert_many(docs, ordered=True)
        return [_message(d) for d in docs]

    @staticmethod
    def _message_doc(conversation_id: str, message: NewMessage, seq: int, now: float) -> dict:
        doc = {
            "_id": message.id, "conversation_id": conversation_id, "parent_id": message.parent_id,
            "role": message.role, "content": message.content, "status": message.status, "seq": seq,
            "model": message.model, "error": None, "usage": None, "finish_reason": None,
            "created_at": now, "updated_at": now,
        }
        if message.request_id is not None:  # absent, not null: the unique index is sparse
            doc["request_id"] = message.request_id
        return doc

    def list_messages(self, conversation_id, user_id):
        conversation = self.get_conversation(conversation_id, user_id)
        with _driver_errors("list messages"):
            docs = self._messages.find({"conversation_id": conversation.id}).sort("seq", ASCENDING)
            return [_message(doc) for doc in docs]

    def get_message(self, conversation_id, message_id, user_id):
        conversation = self.get_conversation(conversation_id, user_id)
        message_id = require_id(message_id, "message id")
        with _driver_errors("get message"):
            doc = self._messages.find_one({"_id": message_id, "conversation_id": conversation.id})
        if doc is None:
            raise NotFoundError("message not found")
        return _message(doc)

    def find_by_request_id(self, request_id):
        request_id = require_id(request_id, "request id")
        self._ready()
        with _driver_errors("find message"):
            doc = self._messages.find_one({"request_id": request_id})
        return _message(doc) if doc else None

    def finish_message(self, request_id, outcome, *, now):
        request_id = require_id(request_id, "request id")
        outcome = check_outcome(outcome)
        update: dict[str, Any] = {
            "status": outcome.status, "content": outcome.content, "usage": dict(outcome.usage) if outcome.usage else None,
            "finish_reason": outcome.finish_reason, "error": dict(outcome.error) if outcome.error else None,
            "updated_at": now,
        }
        if outcome.model:
            update["model"] = outcome.model
        self._ready()
        with _driver_errors("finish message"):
            doc = self._messages.find_one_and_update(
                {"request_id": request_id, "status": PENDING}, {"$set": update}, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                return _message(doc), True
            current = self._messages.find_one({"request_id": request_id})
        return (_message(current) if current else None), False

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
