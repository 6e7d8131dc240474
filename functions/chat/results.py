"""``chat_results``: the CloudEvent sink of ``inference.results`` (Knative KafkaSource delivery
or our Kafka connector; both parsed by ``shared.events.parse_http_event``).

Answers, and what the event source does with them:
- 200 ``stored``: the assistant message is now ``complete`` (content, usage, finish_reason) or
  ``failed`` (the worker's reason);
- 200 ``duplicate``: the message had already finished (a redelivery, or ``chat`` stored it from
  the token channel first); nothing changes, nothing is created;
- 200 ``ignored``: another event type, or a request chat does not know (its conversation was
  deleted while the reply was generated, or another producer's request). Nothing is created:
  a deleted conversation must not come back through a late result;
- 4xx: not a CloudEvent, or a payload that breaks the contract: the connector dead-letters it;
- 503: the store is down: the connector retries.
"""
from __future__ import annotations

import logging

import pydantic

from functions.chat import runtime
from functions.chat.schemas import InferenceResult
from shared import metrics
from shared.errors import BadRequestError, ValidationError
from shared.events import parse_http_event
from shared.events import types as event_types
from shared.http import Request
from shared.http.app import validation_details

log = logging.getLogger("functions.chat.results")

FUNCTION_NAME = "chat-results"
RESULT_TYPES = {event_types.INFERENCE_RESULT_COMPLETED: False, event_types.INFERENCE_RESULT_FAILED: True}


def handle_result_event(request: Request) -> dict:
    event = parse_http_event(request.headers, request.data())
    if event.type not in RESULT_TYPES:
        metrics.EVENTS_HANDLED.labels(FUNCTION_NAME, event.type or "", "ignored").inc()
        log.info("ignoring event %s of type %r", event.id, event.type)
        return {"status": "ignored", "reason": f"event type {event.type!r} is not handled here"}
    if not isinstance(event.data, dict):
        raise BadRequestError("the event's data is not a JSON object", code="invalid_event")
    try:
        result = InferenceResult.model_validate(event.data)
    except pydantic.ValidationError as exc:
        raise ValidationError("the inference result is invalid", details=validation_details(exc)) from None
    status, message = runtime.service().record_result(result.model_dump(), failed=RESULT_TYPES[event.type])
    metrics.EVENTS_HANDLED.labels(FUNCTION_NAME, event.type, status).inc()
    body = {"status": status, "request_id": result.request_id}
    if message is not None:
        body.update(message_id=message.id, message_status=message.status)
    return body
