"""The serving engine on the real model (int8 fused variant): answers, sampling, limits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from functions.inference.engine import Engine, EngineConfig, GenerationParams, PromptTooLongError

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(engine, ids, **params):
    gen = engine.submit(ids, GenerationParams(**params))
    events = list(gen)
    return gen, events


def test_capital_of_france_is_paris(engine, ask):
    # With no system prompt the model's fp32 reference itself hesitates ("The" vs "L'..." within
    # 0.1 logits); with a plain system prompt fp32 and int8 both answer in one sentence.
    gen, events = run(engine, ask(engine, "What is the capital of France?", system="You are a helpful assistant."),
                      max_tokens=32)
    assert "Paris" in gen.text
    assert gen.finish_reason == "stop"
    assert "".join(e.text for e in events) == gen.text
    assert gen.completion_tokens == len(events)


def test_engine_is_ready_and_describes_itself(engine):
    info = engine.info()
    assert engine.ready is True
    assert engine.provider == "CPUExecutionProvider"
    assert engine.model_id == info["model_id"] == "smollm2-135m-instruct"
    assert info["variant"] == "int8"
    assert engine.context_length == info["context_length"] == 8192
    assert info["agreement"] >= 0.95
    assert info["max_batch"] == 8


def test_same_seed_gives_the_same_text(engine, ask):
    ids = ask(engine, "Tell me a short story about a dragon.")
    first, _ = run(engine, ids, max_tokens=40, temperature=1.0, top_p=0.95, seed=1234)
    second, _ = run(engine, ids, max_tokens=40, temperature=1.0, top_p=0.95, seed=1234)
    other, _ = run(engine, ids, max_tokens=40, temperature=1.0, top_p=0.95, seed=99)
    assert first.text == second.text
    assert other.text != first.text  # sampling really samples


def test_greedy_is_deterministic(engine, ask):
    ids = ask(engine, "Name three colours.")
    assert run(engine, ids, max_tokens=24)[0].text == run(engine, ids, max_tokens=24)[0].text


def test_max_tokens_ends_with_length(engine, ask):
    gen, events = run(engine, ask(engine, "Write a long essay about the history of Rome."), max_tokens=5)
    assert gen.finish_reason == "length"
    assert gen.completion_tokens == 5
    assert gen.text


def test_stop_sequence_cuts_the_text_before_it(engine, ask):
    ids = ask(engine, "Write a haiku about the sea.")
    full, _ = run(engine, ids, max_tokens=48)
    words = full.text.split()
    assert len(words) > 4, full.text
    stop = words[3]
    expected = full.text[: full.text.index(stop)]
    gen, events = run(engine, ids, max_tokens=48, stop=["never-appears", stop])
    assert gen.finish_reason == "stop"
    assert gen.text == expected
    assert all(stop not in e.text for e in events)
    assert "".join(e.text for e in events) == expected


def test_prompt_over_the_context_is_refused(engine):
    with pytest.raises(PromptTooLongError) as err:
        engine.submit([1] * engine.context_length, GenerationParams(max_tokens=1))
    assert isinstance(err.value, ValueError)


def test_generation_stops_with_length_when_the_context_is_full(model_dir, ask):
    with Engine.load(EngineConfig(model_dir=str(model_dir), threads=2, max_context=48)) as small:
        ids = ask(small, "Write a long story about a lighthouse keeper.")
        assert len(ids) < 48
        gen, _ = run(small, ids, max_tokens=500)
        assert gen.finish_reason == "length"
        assert gen.prompt_tokens + gen.completion_tokens == 48
        with pytest.raises(PromptTooLongError):
            small.submit(list(range(100, 148)))


def test_streamed_text_is_whole_characters(engine, ask):
    gen, events = run(engine, ask(engine, "Write the French words for coffee, tea and thank you, with accents."),
                      max_tokens=40)
    assert all("\ufffd" not in e.text for e in events)
    assert "".join(e.text for e in events) == gen.text
    # incremental decoding gives exactly the text of decoding every token at once
    ids = [e.token_id for e in events if e.token_id >= 0]
    assert engine.tokenizer.decode(ids) == gen.text


def test_cancel_frees_the_slot(engine, ask):
    gens = [engine.submit(ask(engine, f"Count from 1 to 100, number {i}."), GenerationParams(max_tokens=300))
            for i in range(engine.config.max_batch)]
    for gen in gens:
        next(iter(gen))
        gen.cancel()
    for gen in gens:
        list(gen)  # ends promptly: the slot was freed
    gen, _ = run(engine, ask(engine, "Say hi."), max_tokens=4)
    assert gen.completion_tokens >= 1


def test_the_engine_never_imports_torch_or_transformers():
    code = (
        "import sys, json; import functions.inference.engine as e; "
        "print(json.dumps([m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
