"""How much the HTTP API costs over the engine: the same greedy generations (96 new tokens)
through the OpenAI API (official SDK, streaming) and through the engine in-process, at
concurrency 1 and 4; medians of 3 runs. Not a test (pytest does not collect it).

    PYTHONPATH=. .venv/bin/functions-framework --target inference \
        --source functions/inference/main.py --port 18432 &
    .venv/bin/python tests/functions/inference/bench_openai_api.py --port 18432 \
        --model-dir var/artefacts/models/smollm2-135m-instruct/int8
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

PROMPTS = ["Write a short story about a cat.", "Explain how rain forms.", "Describe Paris.", "Give me tips for sleeping well."]
NEW_TOKENS = 96


def via_api(client, prompt: str) -> tuple[float, int]:
    started, first, tokens = time.perf_counter(), None, 0
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": prompt}], max_tokens=NEW_TOKENS,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first - started, tokens


def via_engine(engine, prompt: str) -> tuple[float, int]:
    from functions.inference.engine import GenerationParams

    started, first = time.perf_counter(), None
    gen = engine.submit(engine.encode_chat([{"role": "user", "content": prompt}]), GenerationParams(max_tokens=NEW_TOKENS))
    for event in gen:
        if first is None and event.text:
            first = time.perf_counter()
    return first - started, gen.completion_tokens


def measure(generate, target, concurrency: int, runs: int = 3) -> tuple[float, float]:
    """(median time to first token in ms, median total tokens/s)."""
    ttfts, rates = [], []
    for _ in range(runs):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(lambda prompt: generate(target, prompt), PROMPTS[:concurrency]))
        ttfts.append(statistics.median(ttft for ttft, _ in outcomes))
        rates.append(sum(tokens for _, tokens in outcomes) / (time.perf_counter() - started))
    return statistics.median(ttfts) * 1000, statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args()

    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="x", max_retries=0)
    for concurrency in (1, 4):
        ttft, rate = measure(via_api, client, concurrency)
        print(f"api    concurrency {concurrency}: time to first token {ttft:.0f} ms, {rate:.1f} tok/s")

    from functions.inference.engine import Engine, EngineConfig

    engine = Engine.load(EngineConfig(model_dir=args.model_dir))
    engine.warmup()
    try:
        for concurrency in (1, 4):
            ttft, rate = measure(via_engine, engine, concurrency)
            print(f"engine concurrency {concurrency}: time to first token {ttft:.0f} ms, {rate:.1f} tok/s")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
