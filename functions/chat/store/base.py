"""The conversation store's interface, records and the rules every backend shares.

Ids are 32 lowercase hex characters (``uuid4().hex``); :func:`require_id` checks every id
*before* a backend builds a query, so a value such as ``{"$gt": ""}`` or ``"' OR 1=1"`` is
refused with 400 and never reaches MongoDB or SQL. User ids come from a verified token but are
still checked to be short, non-empty strings.

Message order is a per-conversation sequence number taken from the conversation when the
message is added (clocks of different processes may disagree; the sequence never does).

An assistant message moves ``pending`` → ``complete`` or ``pending`` → ``failed`` exactly once:
:meth:`ConversationStore.finish_message` only updates a message that is still pending, so a
redelivered result (or two writers racing) never flips a finished message and never creates a
second one (the assistant message's ``request_id`` is unique in every backend).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from shared.errors import BadRequestError

ID_PATTERN = re.compile(r"[0-9a-f]{32}")
MAX_USER_ID_LENGTH = 200

ROLES = ("system", "user", "assistant")
PENDING, COMPLETE, FAILED = "pending", "complete", "failed"
STATUSES = (PENDING, COMPLETE, FAILED)

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: Any) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def require_id(value: Any, what: str = "id") -> str:
    """``value`` if it is a well-formed id, else 400 (never a query with it)."""
    if not is_id(value):
        raise BadRequestError(f"{what} is not a valid id (32 lowercase hex characters)", code="invalid_id")
    return value


def require_user_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_USER_ID_LENGTH:
        raise BadRequestError("user id is not valid", code="invalid_user_id")
    return value


@dataclass(frozen=True)
class Conversation:
    id: str
    user_id: str
    title: str | None
    model: str | None
    system_prompt: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Message:
    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    status: str
    created_at: float
    updated_at: float
    seq: int = 0
    error: Mapping[str, Any] | None = None
    request_id: str | None = None
    model: str | None = None
    usage: Mapping[str, Any] | None = None
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.status != PENDING


@dataclass(frozen=True)
class NewMessage:
    """What a caller supplies to add a message; the store assigns ``seq`` and timestamps."""

    role: str
    content: str
    parent_id: str | None = None
    status: str = COMPLETE
    id: str = field(default_factory=new_id)
    request_id: str | None = None
    model: str | None = None

    def checked(self) -> "NewMessage":
        if self.role not in ROLES:
            raise BadRequestError(f"unknown role {self.role!r}", code="invalid_role")
        if self.status not in STATUSES:
            raise BadRequestError(f"unknown status {self.status!r}", code="invalid_status")
        require_id(self.id, "message id")
        if self.parent_id is not None:
            require_id(self.parent_id, "parent id")
        if self.request_id is not None:
            require_id(self.request_id, "request id")
        return self


@dataclass(frozen=True)
class Outcome:
    """How an assistant message ends: ``complete`` with content, or ``failed`` with a reason."""

    status: str
    content: str = ""
    usage: Mapping[str, Any] | None = None
    finish_reason: str | None = None
    error: Mapping[str, Any] | None = None
    model: str | None = None

    @classmethod
    def complete(cls, content: str, *, usage=None, finish_reason=None, model=None) -> "Outcome":
        return cls(COMPLETE, content, usage, finish_reason, None, model)

    @classmethod
    def failed(cls, code: str, message: str, *, model=None) -> "Outcome":
        return cls(FAILED, "", None, None, {"code": code, "message": message}, model)


@dataclass(frozen=True)
class Page:
    items: list[Conversation]
    next_cursor: str | None


@dataclass(frozen=True)
class Cursor:
    """Position after the last conversation of a page: ``(updated_at, id)``, newest first."""

    updated_at: float
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.updated_at, self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor":
        try:
            padded = token + "=" * (-len(token) % 4)
            updated_at, conversation_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
            if isinstance(updated_at, bool) or not isinstance(updated_at, (int, float)) or not is_id(conversation_id):
                raise ValueError("bad cursor fields")
            return cls(float(updated_at), conversation_id)
        except (ValueError, TypeError, binascii.Error, UnicodeError):
            raise BadRequestError("cursor is not valid", code="invalid_cursor") from None


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_PAGE_SIZE
    return max(1, min(MAX_PAGE_SIZE, int(limit)))


_UNSET: Any = object()


class ConversationStore(ABC):
    """Conversations and their messages. Every method that names a conversation and a user
    raises ``NotFoundError`` when the conversation does not exist *or belongs to someone else*
    (a caller cannot tell the two apart). Driver failures raise ``UnavailableError``."""

    UNSET = _UNSET

    # -- conversations -------------------------------------------------------------------
    @abstractmethod
    def create_conversation(
        self, user_id: str, *, now: float, title: str | None = None, model: str | None = None,
        system_prompt: str | None = None, id: str | None = None,
    ) -> Conversation: ...

    @abstractmethod
    def get_conversation(self, conversation_id: str, user_id: str | None) -> Conversation:
        """``user_id=None`` is for internal callers (the results sink) that have no caller."""

    @abstractmethod
    def list_conversations(self, user_id: str, *, limit: int | None = None, cursor: str | None = None) -> Page: ...

    @abstractmethod
    def update_conversation(
        self, conversation_id: str, user_id: str, *, now: float, title: Any = _UNSET,
        model: Any = _UNSET, system_prompt: Any = _UNSET,
    ) -> Conversation: ...

    @abstractmethod
    def delete_conversation(self, conversation_id: str, user_id: str) -> None:
        """Delete the conversation and all its messages."""

    # -- messages ------------------------------------------------------------------------
    @abstractmethod
    def add_messages(self, conversation_id: str, user_id: str, messages: list[NewMessage], *, now: float) -> list[Message]:
        """Append ``messages`` in order (sequence numbers follow the list) and touch the
        conversation's ``updated_at``. A duplicate id or ``request_id`` raises ConflictError."""

    @abstractmethod
    def list_messages(self, conversation_id: str, user_id: str | None) -> list[Message]:
        """The conversation's messages in the order they were added."""

    @abstractmethod
    def get_message(self, conversation_id: str, message_id: str, user_id: str | None) -> Message: ...

    @abstractmethod
    def find_by_request_id(self, request_id: str) -> Message | None: ...

    @abstractmethod
    def finish_message(self, request_id: str, outcome: Outcome, *, now: float) -> tuple[Message | None, bool]:
        """Mark the assistant message of ``request_id`` complete/failed if it is still pending.

        Returns ``(message as stored now, whether this call changed it)``; ``(None, False)``
        when no message has that request id. Never creates a message."""

    def close(self) -> None:
        """Release connections (a no-op for backends that own none)."""


def check_outcome(outcome: Outcome) -> Outcome:
    if outcome.status not in (COMPLETE, FAILED):
        raise BadRequestError("an outcome is complete or failed", code="invalid_status")
    return outcome


def with_updates(conversation: Conversation, **changes: Any) -> Conversation:
    return replace(conversation, **{k: v for k, v in changes.items() if v is not _UNSET})
