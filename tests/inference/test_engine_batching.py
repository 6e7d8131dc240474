"""Continuous batching: requests join the running batch and get the text they would get alone."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from functions.inference.engine import Engine, EngineConfig, GenerationParams

QUESTIONS = [
    "What is the capital of Italy?",
    "Write a haiku about autumn.",
    "Give me two tips for learning to cook.",
    "What is 7 plus 5?",
    "Name a famous painter.",
]


def solo_texts(engine, prompts, max_tokens):
    return [(g := engine.submit(p, GenerationParams(max_tokens=max_tokens)), list(g), g.text)[2] for p in prompts]


def concurrent_texts(engine, prompts, max_tokens, stagger=0.0):
    texts = [None] * len(prompts)

    def worker(i):
        gen = engine.submit(prompts[i], GenerationParams(max_tokens=max_tokens))
        list(gen)
        texts[i] = gen.text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join()
    return texts


def test_concurrent_requests_get_the_text_they_get_alone(engine, ask):
    prompts = [ask(engine, q) for q in QUESTIONS]
    alone = solo_texts(engine, prompts, 32)
    # staggered so that requests join a batch that is already decoding
    together = concurrent_texts(engine, prompts, 32, stagger=0.05)
    assert together == alone


def test_a_long_request_does_not_hold_back_short_ones(engine, ask):
    long_gen = engine.submit(ask(engine, "Count from 1 to 300, separated by commas."),
                             GenerationParams(max_tokens=400))
    it = iter(long_gen)
    next(it)  # the long request is decoding
    t0 = time.perf_counter()
    short = engine.submit(ask(engine, "Say hello."), GenerationParams(max_tokens=6))
    list(short)
    short_done = time.perf_counter() - t0
    assert long_gen.finish_reason is None, "the short request waited for the long one"
    assert short.completion_tokens >= 1
    rest = list(it)
    assert long_gen.finish_reason is not None
    assert long_gen.completion_tokens > short.completion_tokens + 20
    assert short_done < 5.0
    assert len(rest) >= 1


def forced_logits(runner, prompt, tokens, slot_and_logits=None):
    slot, logits = runner.add(prompt)
    out = [logits]
    for tok in tokens:
        out.append(runner.step([slot], [tok])[0])
    runner.remove(slot)
    return np.array(out)


@pytest.mark.parametrize("variant", ["int8", "int8-optimum"])
def test_a_request_gets_the_same_logits_alone_and_in_a_changing_batch(variant, model_dir, ask, engine):
    """Runner level, both graph layouts: request A runs alone, then again while B joins after
    two steps and C leaves midway. Joining, leaving, masks, positions and slots must not change
    A's logits beyond float rounding (greedy texts can still differ where two tokens nearly tie,
    which is why this compares logits). A is the longest prompt, so it is never left-padded:
    in optimum's int8 graph a left-padded row's logits move by up to ~0.9 (see ConcatRunner)."""
    import onnxruntime as ort

    from functions.inference.engine.runners import make_runner

    session = ort.InferenceSession(str(model_dir.parent / variant / "model.onnx"), providers=["CPUExecutionProvider"])
    runner = make_runner(session, max_batch=4, max_context=512)
    c, b, a = (ask(engine, q) for q in QUESTIONS[:3])
    assert len(a) > max(len(b), len(c))
    forced = list(range(2000, 2012))
    alone = forced_logits(runner, a, forced)

    sa, la = runner.add(a)
    sc, _ = runner.add(c)
    batched = [la]
    for i, tok in enumerate(forced):
        if i == 2:
            sb, _ = runner.add(b)
        if i == 6:
            runner.remove(sc)
        slots = [sa, sb] if i >= 6 else [sa, sc, sb] if i >= 2 else [sa, sc]
        batched.append(runner.step(slots, [tok] * len(slots))[0])
    np.testing.assert_allclose(np.array(batched), alone, atol=2e-2, rtol=0)
    assert (np.array(batched).argmax(-1) == alone.argmax(-1)).all()


def test_kv_buffers_grow_without_changing_the_text(engine, model_dir, ask, monkeypatch):
    from functions.inference.engine.runners import SharedBufferRunner

    prompts = [ask(engine, q) for q in QUESTIONS[:3]]
    expected = solo_texts(engine, prompts, 40)
    monkeypatch.setattr(SharedBufferRunner, "INITIAL_CAPACITY", 32)  # every prompt outgrows it
    with Engine.load(EngineConfig(model_dir=str(model_dir), threads=2, max_batch=4)) as small:
        assert small._runner.capacity == 32
        assert concurrent_texts(small, prompts, 40, stagger=0.05) == expected
        assert small._runner.capacity == 128


LONG_TEXT = " ".join(f"Item {i}: the quick brown fox jumps over the lazy dog." for i in range(100))


def test_a_long_prompt_is_prefilled_in_chunks_to_the_same_text(engine, ask):
    prompt = ask(engine, "Summarise this list in one sentence. " + LONG_TEXT[:2400])
    assert len(prompt) > 2 * engine._scheduler.PREFILL_CHUNK
    chunked = solo_texts(engine, [prompt], 16)
    engine._scheduler.PREFILL_CHUNK = 10**6  # instance attribute: this engine only, until reset
    try:
        whole = solo_texts(engine, [prompt], 16)
    finally:
        del engine._scheduler.PREFILL_CHUNK
    assert chunked == whole


def test_a_long_prompt_does_not_stall_a_streaming_request(engine, ask):
    streaming = engine.submit(ask(engine, "Count from 1 to 300, separated by commas."),
                              GenerationParams(max_tokens=400))
    it = iter(streaming)
    next(it)
    long_prompt = ask(engine, "Summarise this list in one sentence. " + LONG_TEXT)
    chunks = -(-len(long_prompt) // engine._scheduler.PREFILL_CHUNK)
    assert chunks >= 5
    long_gen = engine.submit(long_prompt, GenerationParams(max_tokens=2))
    before = streaming.completion_tokens
    next(iter(long_gen))  # the long prompt's first token: its prefill is done
    during = streaming.completion_tokens - before
    streaming.cancel()
    list(it)
    list(long_gen)
    # one chunk per scheduler iteration, each followed by a decode step of the streaming request
    assert during >= chunks - 2
