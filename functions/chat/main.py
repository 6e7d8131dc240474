"""The chat function: conversations and messages (target ``chat``), and the Kafka-triggered
sink of inference results (target ``chat_results``). Same image, two targets.

Every ``chat`` route needs a user token; another user's conversation is 404 everywhere; an id
that is not an id (32 lowercase hex characters) is 400 before any query.

A turn (``POST /conversations/<id>/messages``, ``POST /chat``) answers, by what the client asks:
- by default, the assistant message once complete (201); 504 with its ``Location`` after
  ``CHAT_REPLY_TIMEOUT_SECONDS`` (the reply still lands); 502 when the generation failed;
- ``"stream": true`` or ``Accept: text/event-stream``: SSE of OpenAI chunks, then ``[DONE]``;
- ``Prefer: respond-async``: 202 at once with the pending message and its ``Location``.
"""
from __future__ import annotations

import functions_framework

from functions.chat import metrics, runtime
from functions.chat.delivery import stream_reply, turn_details, wait_for_reply
from functions.chat.schemas import (
    ChatCreate,
    ConversationCreate,
    ConversationPatch,
    GenerationOptions,
    ListQuery,
    MessageCreate,
    conversation_json,
    message_json,
    message_location,
)
from functions.chat.service import Turn
from functions.chat.results import handle_result_event
from functions.chat.store import Message, require_id
from shared.errors import PlatformError
from shared.http import App, Request, Response, StreamingResponse

app = App("chat")
results_app = App("chat-results")
# Ready once the adapters are built (settings validated, store and publisher configured).
app.readiness_check(lambda: (runtime.service() is not None, {}))
results_app.readiness_check(lambda: (runtime.service() is not None, {}))


# -- conversations ----------------------------------------------------------------------

@app.route("/conversations", methods=["POST"], auth="user", body=ConversationCreate)
def create_conversation(request: Request) -> Response:
    conversation = runtime.service().create_conversation(request.principal.sub, request.body)
    return Response(conversation_json(conversation), status=201,
                    headers={"Location": f"/function/chat/conversations/{conversation.id}"})


@app.route("/conversations", methods=["GET"], auth="user", query=ListQuery)
def list_conversations(request: Request) -> dict:
    query: ListQuery = request.query_model  # type: ignore[attr-defined]
    page = runtime.service().list_conversations(request.principal.sub, limit=query.limit, cursor=query.cursor)
    return {"object": "list", "data": [conversation_json(c) for c in page.items], "next_cursor": page.next_cursor}


@app.route("/conversations/<conversation_id>", methods=["GET"], auth="user")
def get_conversation(request: Request) -> dict:
    conversation, messages = runtime.service().conversation(_id(request, "conversation_id"), request.principal.sub)
    return {**conversation_json(conversation), "messages": [message_json(m) for m in messages]}


@app.route("/conversations/<conversation_id>", methods=["PATCH"], auth="user", body=ConversationPatch)
def update_conversation(request: Request) -> dict:
    conversation = runtime.service().update_conversation(
        _id(request, "conversation_id"), request.principal.sub, request.body.changes()
    )
    return conversation_json(conversation)


@app.route("/conversations/<conversation_id>", methods=["DELETE"], auth="user")
def delete_conversation(request: Request) -> None:
    runtime.service().delete_conversation(_id(request, "conversation_id"), request.principal.sub)


# -- turns ------------------------------------------------------------------------------

@app.route("/conversations/<conversation_id>/messages", methods=["POST"], auth="user", body=MessageCreate)
def post_message(request: Request) -> Response | StreamingResponse:
    conversation_id = _id(request, "conversation_id")
    return _reply(request, conversation_id, request.body.content, request.body, envelope=False)


@app.route("/conversations/<conversation_id>/messages/<message_id>", methods=["GET"], auth="user")
def get_message(request: Request) -> dict:
    message = runtime.service().message(
        _id(request, "conversation_id"), _id(request, "message_id"), request.principal.sub
    )
    return message_json(message)


@app.route("/chat", methods=["POST"], auth="user", body=ChatCreate)
def one_call_chat(request: Request) -> Response | StreamingResponse:
    """The seed's one call: a new conversation unless ``conversation_id`` names one of yours."""
    body: ChatCreate = request.body
    if body.conversation_id is not None:
        return _reply(request, require_id(body.conversation_id, "conversation_id"), body.message, body, envelope=True)
    conversation = runtime.service().create_conversation(request.principal.sub, ConversationCreate(model=body.model))
    try:
        return _reply(request, conversation.id, body.message, body, envelope=True)
    except PlatformError as err:
        if err.status < 500:  # the turn was refused (too long…): leave no empty conversation behind
            runtime.service().delete_conversation(conversation.id, request.principal.sub)
        raise


def _reply(request: Request, conversation_id: str, content: str, options: GenerationOptions,
           *, envelope: bool) -> Response | StreamingResponse:
    mode = _reply_mode(request, options)
    service = runtime.service()
    turn = service.start_turn(request.principal.sub, request.bearer_token(), conversation_id, content, options,
                              stream=mode != "async")
    location = message_location(turn.conversation.id, turn.request_id)
    headers = {"Location": location, "X-Conversation-Id": turn.conversation.id, "X-Message-Id": turn.request_id}
    if mode == "stream":
        return StreamingResponse(stream_reply(service, turn), headers=headers)
    if mode == "async":
        metrics.turn_ended("async", "accepted")
        body = _body(turn, turn.assistant_message, envelope)
        return Response(body, status=202, headers={**headers, "Preference-Applied": "respond-async"})
    return Response(_body(turn, wait_for_reply(service, turn), envelope), status=201, headers=headers)


def _body(turn: Turn, message: Message, envelope: bool) -> dict:
    if not envelope:
        return message_json(message)
    return {"conversation_id": turn.conversation.id, "message": message_json(message),
            "location": turn_details(turn)["location"]}


def _reply_mode(request: Request, options: GenerationOptions) -> str:
    prefer = {token.strip().lower() for token in (request.headers.get("Prefer") or "").split(",")}
    if "respond-async" in prefer:
        return "async"
    if options.stream or "text/event-stream" in (request.headers.get("Accept") or "").lower():
        return "stream"
    return "sync"


def _id(request: Request, name: str) -> str:
    return require_id(request.params[name], name)


# -- chat-results -------------------------------------------------------------------------

results_app.route("/", methods=["POST"])(handle_result_event)


# -- functions-framework targets ----------------------------------------------------------

@functions_framework.http
def chat(flask_request):
    return app.handle(flask_request)


@functions_framework.http
def chat_results(flask_request):
    return results_app.handle(flask_request)
