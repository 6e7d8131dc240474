"""Continuous batching: requests join the running batch and get the text they would get alone."""
from __future__ import annotations

import threading
import time

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


@pytest.fixture(scope="module")
def optimum_engine(optimum_model_dir):
    eng = Engine.load(EngineConfig(model_dir=str(optimum_model_dir), threads=2, max_batch=4))
    eng.warmup()
    yield eng
    eng.close()


def test_optimum_graph_batches_like_alone(optimum_engine, ask):
    prompts = [ask(optimum_engine, q) for q in QUESTIONS[:3]]
    alone = solo_texts(optimum_engine, prompts, 24)
    assert concurrent_texts(optimum_engine, prompts, 24, stagger=0.05) == alone
    assert optimum_engine.info()["variant"] == "int8-optimum"


def test_kv_buffers_grow_without_changing_the_text(engine, model_dir, ask, monkeypatch):
    from functions.inference.engine.runners import SharedBufferRunner

    prompts = [ask(engine, q) for q in QUESTIONS[:3]]
    expected = solo_texts(engine, prompts, 40)
    monkeypatch.setattr(SharedBufferRunner, "INITIAL_CAPACITY", 32)  # every prompt outgrows it
    with Engine.load(EngineConfig(model_dir=str(model_dir), threads=2, max_batch=4)) as small:
        assert small._runner.capacity == 32
        assert concurrent_texts(small, prompts, 40, stagger=0.05) == expected
        assert small._runner.capacity == 128
