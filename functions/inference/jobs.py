"""The chat ⇄ inference event contract, as the worker reads and writes it.

In: an ``inference.request.submitted`` event (topic ``inference.requests``). Out: token-channel
entries (``tokens:<request_id>``) and one ``inference.result.completed|failed`` event (topic
``inference.results``). See ``/work/shared`` design notes; field names are part of the contract.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pydantic
from pydantic import Field, StrictBool, StrictStr

from functions.inference.protocol import ChatMessage, SamplingParams, WireModel


class InferenceJob(WireModel):
    request_id: StrictStr = Field(min_length=1, max_length=200)
    conversation_id: StrictStr | None = None
    user_id: StrictStr | None = None
    model: StrictStr = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    params: SamplingParams = Field(default_factory=SamplingParams)
    stream: StrictBool = True

    def engine_messages(self) -> list[dict[str, str]]:
        return [message.as_engine_message() for message in self.messages]


@dataclass(frozen=True)
class JobIdentity:
    """Who a result goes back to; recovered even from a payload that does not validate."""

    request_id: str
    conversation_id: str | None
    user_id: str | None
    model: str | None

    @classmethod
    def recover(cls, data: Any, event_id: str | None, subject: str | None) -> "JobIdentity | None":
        data = data if isinstance(data, dict) else {}

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        # The contract makes ce_id the request id, so an unreadable body still has one.
        request_id = text("request_id") or event_id
        if not request_id:
            return None
        return cls(request_id, text("conversation_id") or subject, text("user_id"), text("model"))


def parse_job(data: Any) -> InferenceJob:
    """Raises ``pydantic.ValidationError`` (the caller turns it into a failed result)."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"the event data is not JSON: {exc}") from None
    return InferenceJob.model_validate(data)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completed_result(identity: JobIdentity, model: str, content: str, finish_reason: str, usage_: dict) -> dict:
    return {
        "request_id": identity.request_id,
        "conversation_id": identity.conversation_id,
        "user_id": identity.user_id,
        "model": model,
        "content": content,
        "finish_reason": finish_reason,
        "usage": usage_,
        "error": None,
        "created_at": utc_now_iso(),
    }


def failed_result(identity: JobIdentity, code: str, message: str) -> dict:
    return {
        "request_id": identity.request_id,
        "conversation_id": identity.conversation_id,
        "user_id": identity.user_id,
        "model": identity.model,
        "content": "",
        "finish_reason": None,
        "usage": None,
        "error": {"code": code, "message": message},
        "created_at": utc_now_iso(),
    }


def terminal_entry(result: dict) -> dict:
    """The token channel's last entry for a result: ``done`` or ``error``."""
    if result.get("error"):
        return {"type": "error", "error": result["error"]}
    return {"type": "done", "finish_reason": result["finish_reason"], "usage": result["usage"], "content": result["content"]}


def describe_validation_error(exc: pydantic.ValidationError | ValueError) -> str:
    if isinstance(exc, pydantic.ValidationError):
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(exc)
