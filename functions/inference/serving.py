"""``/v1/chat/completions`` and ``/v1/models``: validate → engine → response or SSE chunks.

Everything that can go wrong with a request is found before the first byte is sent, so it gets
a proper 4xx; what fails later (the engine) arrives as an SSE ``data: {"error": …}`` event.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any, Iterator

import pydantic

from shared.errors import BadRequestError, NotFoundError, PlatformError, UnsupportedMediaTypeError
from shared.http import Request, StreamingResponse, sse_event

from functions.inference import metrics
from functions.inference.errors import invalid_request, openai_error
from functions.inference.generation import plan_generation, submit
from functions.inference.lifecycle import LoadedModel, ModelLifecycle
from functions.inference.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    Usage,
)

log = logging.getLogger("functions.inference.serving")

DONE = b"data: [DONE]\n\n"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(request: Request) -> Any:
    """The body as JSON; 415 for another content type, 400 when malformed (``NaN`` included,
    which Python's json would accept but JSON does not)."""
    content_type = request.content_type
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise UnsupportedMediaTypeError("expected Content-Type: application/json")
    raw = request.data()
    if not raw.strip():
        raise BadRequestError("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"malformed JSON: {exc}", code="invalid_json") from None


def parse_chat_request(request: Request) -> ChatCompletionRequest:
    data = parse_json_body(request)
    if not isinstance(data, dict):
        raise BadRequestError("the request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid_request(exc) from None


def model_not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"The model '{name}' does not exist or you do not have access to it.", code="model_not_found", param="model"
    )


def fingerprint(model: LoadedModel) -> str:
    """Changes when the weights, their variant or the execution provider change (OpenAI's meaning)."""
    digest = hashlib.sha256(f"{model.model_id}/{model.variant}/{model.provider}/{model.created}".encode())
    return "fp_" + digest.hexdigest()[:10]


class ChatCompletionsService:
    def __init__(self, lifecycle: ModelLifecycle, *, default_max_tokens: int, function_name: str,
                 default_system_prompt: str | None = None) -> None:
        self.lifecycle = lifecycle
        self.default_max_tokens = default_max_tokens
        self.default_system_prompt = default_system_prompt
        self.function_name = function_name

    # -- /v1/models ----------------------------------------------------------------------
    def list_models(self) -> ModelList:
        return ModelList(data=[self._card(self.lifecycle.model())])

    def get_model(self, name: str) -> ModelCard:
        model = self.lifecycle.model()
        if not model.serves(name):
            raise model_not_found(name)
        return self._card(model)

    @staticmethod
    def _card(model: LoadedModel) -> ModelCard:
        return ModelCard(id=model.model_id, created=model.created, variant=model.variant,
                         provider=model.provider, context_length=model.context_length)

    # -- /v1/chat/completions ------------------------------------------------------------
    def create(self, body: ChatCompletionRequest) -> ChatCompletion | StreamingResponse:
        model = self.lifecycle.model()
        if not model.serves(body.model):
            raise model_not_found(body.model)
        plan = plan_generation(
            model,
            [message.as_engine_message() for message in body.messages],
            body,
            max_tokens=body.requested_max_tokens,
            default_max_tokens=self.default_max_tokens,
            default_system_prompt=self.default_system_prompt,
        )
        gen = submit(model, plan)
        timer = metrics.GenerationTimer(self.function_name, model.model_id)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            chunks = self._stream(model, gen, timer, completion_id, include_usage=body.include_usage)
            return StreamingResponse(chunks, headers={"X-Completion-Id": completion_id})
        return self._complete(model, gen, timer, completion_id)

    def _complete(self, model: LoadedModel, gen: Any, timer: metrics.GenerationTimer, completion_id: str) -> ChatCompletion:
        outcome = "error"
        try:
            for _ in gen:
                timer.token()
            outcome = gen.finish_reason or "stop"
        except Exception as exc:
            log.exception("generation %s failed", completion_id)
            raise PlatformError("the generation failed", code="generation_failed") from exc
        finally:
            if outcome == "error":
                gen.cancel()
            timer.finish(gen.prompt_tokens, gen.completion_tokens)
            metrics.REQUESTS.labels(self.function_name, "http", outcome).inc()
        return ChatCompletion(
            id=completion_id,
            created=int(time.time()),
            model=model.model_id,
            system_fingerprint=fingerprint(model),
            choices=[Choice(message=AssistantMessage(content=gen.text), finish_reason=gen.finish_reason)],
            usage=Usage.of(gen.prompt_tokens, gen.completion_tokens),
        )

    def _stream(self, model: LoadedModel, gen: Any, timer: metrics.GenerationTimer, completion_id: str, *, include_usage: bool) -> Iterator[bytes]:
        """SSE chunks as OpenAI sends them. Closing this generator (the client went away)
        cancels the generation, which frees its batch slot at the engine's next step."""
        created = int(time.time())
        common = {"id": completion_id, "created": created, "model": model.model_id, "system_fingerprint": fingerprint(model)}
        exclude = None if include_usage else {"usage"}  # with include_usage every chunk has "usage": null

        def chunk(delta: Delta, finish_reason: str | None = None) -> bytes:
            value = ChatCompletionChunk(**common, choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)])
            return sse_event(value.model_dump(mode="json", exclude=exclude))

        outcome = "cancelled"
        try:
            yield chunk(Delta(role="assistant", content=""))
            for event in gen:
                timer.token()
                if event.text:
                    yield chunk(Delta(content=event.text))
            outcome = gen.finish_reason or "stop"
            yield chunk(Delta(), gen.finish_reason)
            if include_usage:
                usage = Usage.of(gen.prompt_tokens, gen.completion_tokens)
                yield sse_event(ChatCompletionChunk(**common, choices=[], usage=usage).model_dump(mode="json"))
            yield DONE
        except Exception:  # GeneratorExit (the client left) is not one: it keeps outcome "cancelled"
            outcome = "error"
            log.exception("generation %s failed mid-stream", completion_id)
            error = openai_error(PlatformError("the generation failed", code="generation_failed"))
            yield sse_event({"error": error})
        finally:
            if outcome in ("cancelled", "error"):
                gen.cancel()
            timer.finish(gen.prompt_tokens, gen.completion_tokens)
            metrics.REQUESTS.labels(self.function_name, "http", outcome).inc()
