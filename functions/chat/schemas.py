"""Wire models of the chat function: request bodies, and the JSON of its resources."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from functions.chat.store import Conversation, Message

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$"


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, pattern=MODEL_NAME)
    system_prompt: str | None = Field(default=None, max_length=8000)


class ConversationPatch(BaseModel):
    """Rename, change the system prompt or the model; ``null`` clears a field."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, pattern=MODEL_NAME)
    system_prompt: str | None = Field(default=None, max_length=8000)

    @model_validator(mode="after")
    def _not_empty(self) -> "ConversationPatch":
        if not self.model_fields_set:
            raise ValueError("nothing to update: send title, system_prompt or model")
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=512)


class GenerationOptions(BaseModel):
    """Per-turn overrides of the conversation's and the user's defaults."""

    model_config = ConfigDict(extra="forbid")

    stream: bool = False
    model: str | None = Field(default=None, pattern=MODEL_NAME)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)


class MessageCreate(GenerationOptions):
    content: str = Field(min_length=1)


class ChatCreate(GenerationOptions):
    """The one-call ``POST /chat``: a new conversation unless ``conversation_id`` is given."""

    message: str = Field(min_length=1)
    conversation_id: str | None = Field(default=None, max_length=64)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "object": "conversation",
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "object": "conversation.message",
        "conversation_id": message.conversation_id,
        "parent_id": message.parent_id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": dict(message.error) if message.error else None,
        "request_id": message.request_id,
        "model": message.model,
        "usage": dict(message.usage) if message.usage else None,
        "finish_reason": message.finish_reason,
        "created_at": iso(message.created_at),
        "updated_at": iso(message.updated_at),
    }


def message_location(conversation_id: str, message_id: str) -> str:
    """Where a client polls a message, through the gateway."""
    return f"/function/chat/conversations/{conversation_id}/messages/{message_id}"


class ResultError(BaseModel):
    code: str = Field(default="inference_error", max_length=100)
    message: str = Field(default="generation failed", max_length=4000)


class InferenceResult(BaseModel):
    """The ``inference.results`` payload (the chat ⇄ inference contract); unknown fields pass."""

    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=200)
    conversation_id: str = Field(min_length=1, max_length=200)
    user_id: str | None = None
    model: str | None = Field(default=None, max_length=200)
    content: str = ""
    finish_reason: str | None = Field(default=None, max_length=50)
    usage: dict[str, int] | None = None
    error: ResultError | None = None
    created_at: str | None = None
