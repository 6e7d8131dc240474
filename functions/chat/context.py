"""Pure logic of a turn's prompt: which history fits the model's window, and the title.

Token counts are estimated from characters (``chars_per_token``, 4 by default for English
text with a BPE tokenizer) plus a small per-message overhead for the chat template's role
markers. The estimate only has to keep the prompt inside the window; the worker still checks
the real token count and fails a request that does not fit.
"""
from __future__ import annotations

import math
from typing import Iterable

from functions.chat.store import COMPLETE, Message
from shared.errors import ValidationError

MESSAGE_OVERHEAD_TOKENS = 4
TITLE_CHARS = 60


def estimate_tokens(text: str, chars_per_token: float) -> int:
    return math.ceil(len(text) / chars_per_token) + MESSAGE_OVERHEAD_TOKENS


def completed_turns(messages: Iterable[Message]) -> list[tuple[Message, Message]]:
    """(user, assistant) pairs whose reply completed, oldest first.

    A user message whose reply failed or is still pending is left out with it: sending it
    again would show the model two user turns in a row, or a question it never answered."""
    ordered = sorted(messages, key=lambda m: m.seq)
    replies = {m.parent_id: m for m in ordered if m.role == "assistant" and m.status == COMPLETE}
    return [(m, replies[m.id]) for m in ordered if m.role == "user" and m.id in replies]


def prompt_budget(context_tokens: int, max_tokens: int) -> int:
    """Tokens left for the prompt once the reply's share is reserved (at most half the window)."""
    return context_tokens - min(max_tokens, context_tokens // 2)


def build_prompt(
    *,
    system_prompt: str | None,
    history: Iterable[Message],
    content: str,
    context_tokens: int,
    max_tokens: int,
    chars_per_token: float,
) -> list[dict[str, str]]:
    """System prompt, then as many of the newest completed turns as fit, then the new message.

    Whole turns are dropped, oldest first; the system prompt and the new message are always
    kept, and a new message that cannot fit even alone is refused (422)."""
    budget = prompt_budget(context_tokens, max_tokens)
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    tail = [{"role": "user", "content": content}]
    used = sum(estimate_tokens(m["content"], chars_per_token) for m in head + tail)
    if used > budget:
        raise ValidationError(
            f"the message and system prompt need about {used} tokens; this model accepts {budget} "
            f"(a {context_tokens}-token window less {context_tokens - budget} for the reply)",
            code="context_length_exceeded",
        )
    kept: list[dict[str, str]] = []
    for user, assistant in reversed(completed_turns(history)):
        cost = estimate_tokens(user.content, chars_per_token) + estimate_tokens(assistant.content, chars_per_token)
        if used + cost > budget:
            break
        used += cost
        kept[:0] = [{"role": "user", "content": user.content}, {"role": "assistant", "content": assistant.content}]
    return head + kept + tail


def derive_title(content: str) -> str:
    """A conversation's default title: the start of its first message, on one line."""
    line = " ".join(content.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"
