"""Incremental detokenization and stop sequences, on a byte-level toy tokenizer (id = byte)."""
from __future__ import annotations

import pytest

from functions.inference.engine.sampling import choose_token
from functions.inference.engine.text import TextStream

import numpy as np


def decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def feed(stream, text):
    return [stream.push(b) for b in text.encode()]


def test_multibyte_characters_are_released_whole():
    stream = TextStream(decode, stop=[])
    deltas = feed(stream, "café ☕")
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "café ☕"


def test_text_that_may_start_a_stop_sequence_is_held_back_then_released():
    stream = TextStream(decode, stop=["END"])
    deltas = feed(stream, "a EN")
    assert "".join(deltas) == "a "  # "EN" could begin "END"
    deltas += feed(stream, "d")
    assert "".join(deltas) == "a ENd"
    assert not stream.stopped


def test_a_stop_sequence_ends_the_text_before_it():
    stream = TextStream(decode, stop=["\n\n", "STOP"])
    deltas = feed(stream, "hello STOP more")
    assert stream.stopped
    assert "".join(deltas) == "hello "
    assert stream.text == "hello "


def test_held_back_text_is_released_at_the_end():
    stream = TextStream(decode, stop=["###"])
    deltas = feed(stream, "x ##")
    assert "".join(deltas) == "x "
    assert stream.finish() == "##"
    assert stream.text == "x ##"


def test_greedy_takes_the_argmax_and_sampling_follows_the_seed():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert choose_token(logits, 0.0, 1.0, np.random.default_rng(0)) == 1
    a = [choose_token(logits, 1.0, 0.9, np.random.default_rng(5)) for _ in range(3)]
    b = [choose_token(logits, 1.0, 0.9, np.random.default_rng(5)) for _ in range(3)]
    assert a == b
    picks = {choose_token(logits, 1.0, 0.5, rng) for rng in map(np.random.default_rng, range(50))}
    assert picks == {1}  # top_p 0.5 keeps only the most likely token


def test_generation_params_are_validated():
    from functions.inference.engine import GenerationParams

    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": [""]}):
        with pytest.raises(ValueError):
            GenerationParams(**bad)
