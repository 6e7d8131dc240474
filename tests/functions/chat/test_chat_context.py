"""The prompt of a turn: which history fits the window (pure logic, no I/O)."""
from __future__ import annotations

import pytest

from functions.chat.context import build_prompt, completed_turns, derive_title, estimate_tokens, prompt_budget
from functions.chat.store import COMPLETE, FAILED, PENDING, Message, new_id
from shared.errors import ValidationError


def _msg(role: str, content: str, seq: int, parent: str | None = None, status: str = COMPLETE) -> Message:
    return Message(id=new_id(), conversation_id="c" * 32, parent_id=parent, role=role, content=content,
                   status=status, created_at=1.0, updated_at=1.0, seq=seq)


def _history(*turns: tuple[str, str, str]) -> list[Message]:
    messages, seq = [], 0
    for question, answer, status in turns:
        user = _msg("user", question, seq := seq + 1)
        messages += [user, _msg("assistant", answer, seq := seq + 1, parent=user.id, status=status)]
    return messages


def test_everything_fits_in_a_large_window():
    history = _history(("q1", "a1", COMPLETE), ("q2", "a2", COMPLETE))
    prompt = build_prompt(system_prompt="Be brief.", history=history, content="q3",
                          context_tokens=2048, max_tokens=256, chars_per_token=4)
    assert prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q3"},
    ]


def test_the_oldest_whole_turns_are_dropped_first():
    long = "x" * 400  # ~100 tokens + overhead
    history = _history(("old " + long, "old answer " + long, COMPLETE), ("mid " + long, "mid answer", COMPLETE),
                       ("new", "new answer", COMPLETE))
    prompt = build_prompt(system_prompt="sys", history=history, content="now",
                          context_tokens=256, max_tokens=64, chars_per_token=4)
    contents = [m["content"] for m in prompt]
    assert contents[0] == "sys" and contents[-1] == "now"
    assert "new" in contents and "new answer" in contents
    assert not any(c.startswith("old") for c in contents)
    assert sum(estimate_tokens(c, 4) for c in contents) <= prompt_budget(256, 64)
    # pairs stay pairs: every user turn kept is followed by its answer
    roles = [m["role"] for m in prompt[1:-1]]
    assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_failed_and_pending_turns_are_left_out_with_their_question():
    history = _history(("q1", "a1", COMPLETE), ("q2", "", FAILED), ("q3", "", PENDING))
    assert [(u.content, a.content) for u, a in completed_turns(history)] == [("q1", "a1")]
    prompt = build_prompt(system_prompt=None, history=history, content="q4",
                          context_tokens=2048, max_tokens=256, chars_per_token=4)
    assert [m["content"] for m in prompt] == ["q1", "a1", "q4"]


def test_a_message_that_cannot_fit_alone_is_refused():
    with pytest.raises(ValidationError) as err:
        build_prompt(system_prompt="s", history=[], content="y" * 4000,
                     context_tokens=512, max_tokens=128, chars_per_token=4)
    assert err.value.code == "context_length_exceeded"


def test_the_reply_reserve_is_at_most_half_the_window():
    assert prompt_budget(2048, 256) == 1792
    assert prompt_budget(2048, 4096) == 1024


def test_a_title_is_the_start_of_the_first_message_on_one_line():
    assert derive_title("  What is\n the  capital of France? ") == "What is the capital of France?"
    title = derive_title("word " * 40)
    assert len(title) == 60 and title.endswith("…")
