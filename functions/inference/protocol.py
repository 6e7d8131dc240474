"""Wire models of the OpenAI API subset we serve: ``/v1/chat/completions`` and ``/v1/models``.

Requests are validated strictly (no "0.5" for a number, no NaN): OpenAI fields we do not use but
that change nothing at their default value (``n=1``, ``user``, ``logprobs=false``,
``frequency_penalty=0`` …) are accepted and ignored, unknown fields too; fields whose meaning we
cannot honour (``n>1``, ``tools``, image parts …) are refused with a 400 that names them.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 100
ROLES = {"system", "developer", "user", "assistant"}


def unsupported(param: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", "{param}: {message}", {"param": param, "message": message})


def unsupported_value(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_value", message)


class WireModel(BaseModel):
    """Strict types; unknown fields are kept (and ignored) so newer clients keep working."""

    model_config = ConfigDict(strict=True, extra="allow")


# -- requests ----------------------------------------------------------------------------
class ChatMessage(WireModel):
    role: StrictStr
    content: Any = Field(None, validate_default=True)
    name: StrictStr | None = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise unsupported_value(f"role {role!r} is not supported: this model has no tool calling")
        if role not in ROLES:
            raise unsupported_value(f"unknown role {role!r}; expected one of {', '.join(sorted(ROLES))}")
        return role

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> str:
        """A string, or OpenAI content parts joined; only text parts can be read by a text model."""
        if content is None:
            raise PydanticCustomError("missing", "content is required")
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise PydanticCustomError("string_type", "content must be a string or a list of content parts")
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise unsupported_value(f"content parts of type {kind!r} are not supported; this model reads text only")
            text = part.get("text")
            if not isinstance(text, str):
                raise PydanticCustomError("string_type", "a text content part needs a string 'text'")
            texts.append(text)
        return "".join(texts)

    @model_validator(mode="after")
    def _no_tool_calls(self) -> "ChatMessage":
        if getattr(self, "tool_calls", None) or getattr(self, "function_call", None):
            raise unsupported("tool_calls", "tool calling is not supported")
        return self

    def as_engine_message(self) -> dict[str, str]:
        # "developer" is OpenAI's newer name for "system"; the chat template knows only "system".
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content or ""}


class SamplingParams(WireModel):
    """The generation knobs, shared by the HTTP API and the worker's event payload."""

    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    stop: Any = None
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**63)  # int64, as OpenAI

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: Any) -> list[str]:
        """A string or up to four strings, as OpenAI; always a list afterwards."""
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
            raise PydanticCustomError("string_type", "stop must be a string or a list of strings")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise PydanticCustomError("invalid_value", f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        for item in stops:
            if not item:
                raise PydanticCustomError("invalid_value", "a stop sequence cannot be empty")
            if len(item) > MAX_STOP_LENGTH:
                raise PydanticCustomError("invalid_value", f"a stop sequence is at most {MAX_STOP_LENGTH} characters")
        return stops


class StreamOptions(WireModel):
    include_usage: StrictBool | None = False


class ChatCompletionRequest(SamplingParams):
    model: StrictStr = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    # Accepted only at the value that changes nothing.
    n: StrictInt | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None

    @model_validator(mode="after")
    def _only_what_we_can_honour(self) -> "ChatCompletionRequest":
        refusals = {
            "n": self.n not in (None, 1) and "only n=1 is supported",
            "frequency_penalty": self.frequency_penalty not in (None, 0) and "penalties are not supported",
            "presence_penalty": self.presence_penalty not in (None, 0) and "penalties are not supported",
            "logprobs": bool(self.logprobs) and "log probabilities are not supported",
            "top_logprobs": self.top_logprobs not in (None, 0) and "log probabilities are not supported",
            "logit_bias": bool(self.logit_bias) and "logit_bias is not supported",
            "response_format": self.response_format not in (None, {"type": "text"})
            and "only response_format {'type': 'text'} is supported",
            "modalities": self.modalities not in (None, ["text"]) and "only the text modality is supported",
            "audio": self.audio is not None and "audio output is not supported",
            "tools": bool(self.tools) and "tool calling is not supported",
            "tool_choice": self.tool_choice not in (None, "none") and "tool calling is not supported",
            "functions": bool(self.functions) and "function calling is not supported",
            "function_call": self.function_call not in (None, "none") and "function calling is not supported",
        }
        for param, reason in refusals.items():
            if reason:
                raise unsupported(param, reason)
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("invalid_value", "stream_options is only allowed when stream is true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) wins over ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# -- responses ---------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _only_what_is_set(self) -> dict[str, Any]:
        # OpenAI deltas carry only the keys that change: {"content": "…"}, {} at the end.
        return {key: value for key, value in (("role", self.role), ("content", self.content)) if value is not None}


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatfaas"
    # Beyond OpenAI's card (clients ignore unknown fields): what is actually serving.
    variant: str | None = None
    provider: str | None = None
    context_length: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
