"""What a streaming client sees when the engine fails mid-stream, and what closing a stream does.

An engine failure cannot be provoked on demand in the real process, so the SSE producer is fed a
stand-in generation here; its bytes then go through the official SDK to check how it reads them.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import openai
import pytest
from openai import OpenAI

from functions.inference import metrics
from functions.inference.lifecycle import LoadedModel
from functions.inference.serving import ChatCompletionsService

MODEL = LoadedModel(engine=None, model_id="m", variant="int8", provider="CPUExecutionProvider",
                    context_length=64, created=1, load_seconds=0.1)


class StandInGeneration:
    """Yields ``texts``; raises after ``fail_after`` of them when set (the engine died)."""

    def __init__(self, texts: list[str], fail_after: int | None = None) -> None:
        self.texts, self.fail_after = texts, fail_after
        self.prompt_tokens, self.completion_tokens = 5, 0
        self.finish_reason: str | None = None
        self.cancelled = False

    def __iter__(self):
        for index, text in enumerate(self.texts):
            if index == self.fail_after:
                raise RuntimeError("the ONNX session failed")
            self.completion_tokens += 1
            yield SimpleNamespace(text=text, token_id=index)
        self.finish_reason = "length"

    def cancel(self) -> None:
        self.cancelled = True


def stream(gen: StandInGeneration):
    service = ChatCompletionsService(lifecycle=None, default_max_tokens=16, function_name="stream-test")
    return service._stream(MODEL, gen, metrics.GenerationTimer("stream-test", "m"), "chatcmpl-test", include_usage=False)


def sse_payloads(raw: bytes) -> list[str]:
    return [line[len("data: "):] for line in raw.decode().split("\n") if line.startswith("data: ")]


def test_an_engine_failure_mid_stream_ends_it_with_an_error_event():
    gen = StandInGeneration(["Hel", "lo", " there"], fail_after=2)
    payloads = sse_payloads(b"".join(stream(gen)))
    assert "[DONE]" not in payloads
    error = json.loads(payloads[-1])["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed" and error["message"]
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:-1]] == ["Hel", "lo"]
    assert gen.cancelled


def test_the_sdk_raises_the_streamed_error():
    body = b"".join(stream(StandInGeneration(["a", "b"], fail_after=1)))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body))
    client = OpenAI(base_url="http://inference.test/v1", api_key="x", http_client=httpx.Client(transport=transport), max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "a"]
    assert caught.value.code == "generation_failed"


def test_closing_the_stream_cancels_the_generation_and_frees_its_batch_slot():
    gen = StandInGeneration(["x"] * 100)
    before = metrics.BATCH_SIZE.labels("stream-test")._value.get()
    chunks = stream(gen)
    assert metrics.BATCH_SIZE.labels("stream-test")._value.get() == before + 1
    next(chunks), next(chunks)
    chunks.close()  # what the server does when the client goes away
    assert gen.cancelled
    assert metrics.BATCH_SIZE.labels("stream-test")._value.get() == before


def test_a_finished_stream_is_not_cancelled():
    gen = StandInGeneration(["a", "b"])
    payloads = sse_payloads(b"".join(stream(gen)))
    assert payloads[-1] == "[DONE]" and json.loads(payloads[-2])["choices"][0]["finish_reason"] == "length"
    assert not gen.cancelled
