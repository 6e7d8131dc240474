"""The chat function's logic over injected adapters (store, event publisher, token channel,
users client) and a clock; no HTTP, no environment.

A turn: check the conversation is the caller's, resolve the generation settings (the request,
then the conversation, then the user's preferences, then the platform defaults), build the
prompt within the window, store the user message and a ``pending`` assistant message whose id
is the request id, publish ``inference.request.submitted``. The reply is then followed on the
token channel (:mod:`functions.chat.replies`) and stored by whichever comes first: this
function when a client is waiting and reads the terminal entry, or ``chat-results`` from the
result event. ``finish_message`` only moves a message out of ``pending``, so it happens once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from functions.chat.context import build_prompt, derive_title
from functions.chat.replies import ReplyEvent, follow_reply
from functions.chat.schemas import ConversationCreate, GenerationOptions
from functions.chat.settings import ChatSettings
from functions.chat.store import (
    PENDING,
    Conversation,
    ConversationStore,
    Message,
    NewMessage,
    Outcome,
    Page,
    is_id,
    new_id,
)
from functions.chat.users_client import Preferences
from shared.errors import BadRequestError, PlatformError, UnavailableError
from shared.events import types as event_types

log = logging.getLogger("functions.chat")

EVENT_SOURCE = "/functions/chat"


@dataclass(frozen=True)
class Generation:
    model: str
    temperature: float
    max_tokens: int
    system_prompt: str | None


@dataclass(frozen=True)
class Turn:
    conversation: Conversation
    user_message: Message
    assistant_message: Message
    generation: Generation

    @property
    def request_id(self) -> str:
        return self.assistant_message.id


def resolve_generation(options: GenerationOptions, conversation: Conversation, prefs: Preferences,
                       settings: ChatSettings) -> Generation:
    """The most specific setting wins: this turn, the conversation, the user, the platform."""
    return Generation(
        model=options.model or conversation.model or prefs.default_model or settings.default_model,
        temperature=next(t for t in (options.temperature, prefs.temperature, settings.default_temperature) if t is not None),
        max_tokens=options.max_tokens or prefs.max_tokens or settings.default_max_tokens,
        system_prompt=conversation.system_prompt or prefs.system_prompt,
    )


def inference_request(turn: Turn, user_id: str, messages: list[dict], *, stream: bool) -> dict[str, Any]:
    """The ``inference.requests`` event body (the chat ⇄ inference contract)."""
    return {
        "request_id": turn.request_id,
        "conversation_id": turn.conversation.id,
        "user_id": user_id,
        "model": turn.generation.model,
        "messages": messages,
        "params": {
            "max_tokens": turn.generation.max_tokens, "temperature": turn.generation.temperature,
            "top_p": 1.0, "stop": [], "seed": None,
        },
        "stream": stream,
    }


class ChatService:
    def __init__(
        self,
        store: ConversationStore,
        publisher: Any,
        tokens: Callable[[], Any],
        preferences: Callable[[str, str | None], Preferences],
        settings: ChatSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self._tokens = tokens  # a factory: only turns that wait need the token cache
        self._preferences = preferences
        self.settings = settings
        self._clock = clock
        self._monotonic = monotonic

    # -- conversations -------------------------------------------------------------------
    def create_conversation(self, user_id: str, body: ConversationCreate) -> Conversation:
        return self.store.create_conversation(
            user_id, now=self._clock(), title=body.title, model=body.model, system_prompt=body.system_prompt
        )

    def list_conversations(self, user_id: str, *, limit: int, cursor: str | None) -> Page:
        return self.store.list_conversations(user_id, limit=limit, cursor=cursor)

    def conversation(self, conversation_id: str, user_id: str) -> tuple[Conversation, list[Message]]:
        conversation = self.store.get_conversation(conversation_id, user_id)
        return conversation, self.store.list_messages(conversation.id, user_id)

    def update_conversation(self, conversation_id: str, user_id: str, changes: dict[str, Any]) -> Conversation:
        return self.store.update_conversation(conversation_id, user_id, now=self._clock(), **changes)

    def delete_conversation(self, conversation_id: str, user_id: str) -> None:
        self.store.delete_conversation(conversation_id, user_id)

    def message(self, conversation_id: str, message_id: str, user_id: str) -> Message:
        return self.store.get_message(conversation_id, message_id, user_id)

    # -- a turn --------------------------------------------------------------------------
    def start_turn(self, user_id: str, bearer_token: str | None, conversation_id: str, content: str,
                   options: GenerationOptions, *, stream: bool) -> Turn:
        if len(content) > self.settings.max_message_chars:
            raise BadRequestError(f"a message holds at most {self.settings.max_message_chars} characters",
                                  code="message_too_long")
        conversation = self.store.get_conversation(conversation_id, user_id)
        generation = resolve_generation(options, conversation, self._preferences(user_id, bearer_token), self.settings)
        history = self.store.list_messages(conversation.id, user_id)
        prompt = build_prompt(
            system_prompt=generation.system_prompt, history=history, content=content,
            context_tokens=self.settings.context_tokens, max_tokens=generation.max_tokens,
            chars_per_token=self.settings.chars_per_token,
        )
        user_message = NewMessage(role="user", content=content, parent_id=history[-1].id if history else None)
        request_id = new_id()
        assistant = NewMessage(role="assistant", content="", parent_id=user_message.id, status=PENDING,
                               id=request_id, request_id=request_id, model=generation.model)
        stored_user, stored_assistant = self.store.add_messages(
            conversation.id, user_id, [user_message, assistant], now=self._clock()
        )
        if conversation.title is None:
            conversation = self.store.update_conversation(conversation.id, user_id, now=self._clock(),
                                                          title=derive_title(content))
        turn = Turn(conversation, stored_user, stored_assistant, generation)
        self._submit(turn, user_id, prompt, stream=stream)
        return turn

    def _submit(self, turn: Turn, user_id: str, prompt: list[dict], *, stream: bool) -> None:
        try:
            self.publisher.publish(
                event_types.INFERENCE_REQUESTS, event_types.INFERENCE_REQUEST_SUBMITTED,
                inference_request(turn, user_id, prompt, stream=stream),
                key=turn.conversation.id, id=turn.request_id, subject=turn.conversation.id,
            )
        except Exception as exc:  # the broker is down: the turn cannot start, say so now
            log.warning("publishing request %s failed: %s", turn.request_id, exc)
            self.store.finish_message(turn.request_id, Outcome.failed("unavailable", "the request could not be queued"),
                                      now=self._clock())
            if isinstance(exc, UnavailableError):
                raise
            raise UnavailableError("the inference queue is unavailable; try again later", retry_after=5) from None

    def follow(self, turn: Turn) -> Iterator[ReplyEvent]:
        """The reply's events until it finishes or ``CHAT_REPLY_TIMEOUT_SECONDS`` pass."""
        return follow_reply(
            self._tokens(), self.store, turn.request_id,
            deadline=self._monotonic() + self.settings.reply_timeout_seconds,
            read_seconds=self.settings.channel_read_seconds, clock=self._monotonic,
        )

    def finish(self, request_id: str, outcome: Outcome) -> Message:
        """Store the outcome unless the message already finished; the stored message either way."""
        message, _ = self.store.finish_message(request_id, outcome, now=self._clock())
        if message is None:  # the conversation was deleted while the reply was generated
            raise PlatformError("the conversation was deleted during the reply", status=410, code="gone")
        return message

    # -- results (chat-results) ------------------------------------------------------------
    def record_result(self, data: dict[str, Any], *, failed: bool) -> tuple[str, Message | None]:
        """Store one ``inference.results`` payload; returns ``(status, message)`` where status is
        ``stored``, ``duplicate`` (already finished: nothing changed) or ``ignored`` (no such request)."""
        request_id = data["request_id"]
        if not is_id(request_id):
            log.warning("result for a request id chat never issues (%r): ignored", request_id[:64])
            return "ignored", None
        existing = self.store.find_by_request_id(request_id)
        if existing is None:
            log.warning("result for unknown request %s (conversation deleted?): ignored", request_id)
            return "ignored", None
        if existing.conversation_id != data["conversation_id"]:
            raise BadRequestError("the result's conversation_id does not match its request", code="mismatched_result")
        outcome = outcome_of_result(data, failed=failed)
        message, changed = self.store.finish_message(request_id, outcome, now=self._clock())
        return ("stored" if changed else "duplicate"), message


def outcome_of_result(data: dict[str, Any], *, failed: bool) -> Outcome:
    if failed or data.get("error"):
        error = data.get("error") or {}
        return Outcome.failed(str(error.get("code") or "inference_error"), str(error.get("message") or "generation failed"),
                              model=data.get("model"))
    return Outcome.complete(data.get("content") or "", usage=data.get("usage"), finish_reason=data.get("finish_reason"),
                            model=data.get("model"))
