"""The ``inference`` function speaks the OpenAI API well enough for the official SDK, unmodified.

Everything runs against a real functions-framework process, the real engine and the real model.
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai import OpenAI

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(inference_server) -> OpenAI:
    return OpenAI(base_url=f"{inference_server.url}/v1", api_key="not-checked", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(inference_server) -> httpx.Client:
    with httpx.Client(base_url=inference_server.url, timeout=120) as session:
        yield session


def metric(http: httpx.Client, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when it has not been recorded yet)."""
    pattern = re.compile(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", re.M)
    total = 0.0
    for found in pattern.finditer(http.get("/metrics").text):
        present = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if all(present.get(k) == v for k, v in labels.items()):
            total += float(found.group(2))
    return total


# -- readiness and models ------------------------------------------------------------------
def test_ready_shows_what_is_served(http):
    body = http.get("/_/ready").json()
    assert body["ready"] is True
    assert body["model"] == MODEL and body["variant"] == "int8"
    assert body["provider"] == "CPUExecutionProvider"


def test_models_lists_and_retrieves_the_served_model(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.created > 0


def test_models_and_readiness_show_the_execution_provider(http):
    card = http.get(f"/v1/models/{MODEL}").json()
    ready = http.get("/_/ready").json()
    assert card["provider"] == ready["provider"] == "CPUExecutionProvider"  # no GPU on this machine
    assert card["variant"] == ready["variant"] == "int8"


def test_retrieving_an_unknown_model_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-17")
    assert caught.value.code == "model_not_found"


# -- generation ------------------------------------------------------------------------------
def test_capital_of_france_answer_mentions_paris(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 40
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_yields_the_same_text_and_usage_when_asked(client):
    whole = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}
        )
    )
    content_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.id == usage_chunk.id and chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.usage is None for chunk in content_chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in content_chunks)
    assert text == whole.choices[0].message.content
    assert content_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage_chunk.choices == []
    assert usage_chunk.usage.model_dump() == whole.usage.model_dump()


def test_streaming_without_include_usage_sends_no_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=5, stream=True))
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_stream_ends_with_done(http):
    with http.stream("POST", "/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, "max_tokens": 3, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


@pytest.mark.parametrize("seed", [1234, -42])  # OpenAI seeds are int64, negative ones included
def test_the_same_seed_gives_the_same_text(client, seed):
    def sample(seed: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a short story."}], temperature=1.0, seed=seed, max_tokens=30
        )
        return reply.choices[0].message.content

    first = sample(seed)
    assert sample(seed) == first
    assert sample(987654) != first


def test_max_tokens_cuts_the_reply_with_finish_reason_length(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_max_completion_tokens_is_honoured_too(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 2


def test_a_stop_sequence_ends_the_reply_before_it(client):
    prompt = [{"role": "user", "content": "Describe Paris in three sentences."}]
    full = client.chat.completions.create(model=MODEL, messages=prompt, temperature=0, max_tokens=48).choices[0].message.content
    words = full.split()
    assert len(words) > 6, full
    stop = words[len(words) // 2]
    cut = client.chat.completions.create(model=MODEL, messages=prompt, temperature=0, max_tokens=48, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_unknown_fields_at_neutral_values_are_accepted(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=2, n=1, user="someone", logprobs=False, frequency_penalty=0,
        presence_penalty=0, extra_body={"some_future_field": {"x": 1}},
    )
    assert reply.usage.completion_tokens == 2


def test_the_developer_role_is_read_as_system(client):
    as_developer = [{"role": "developer", "content": "Answer in one word."}, *FRANCE]
    as_system = [{"role": "system", "content": "Answer in one word."}, *FRANCE]
    first = client.chat.completions.create(model=MODEL, messages=as_developer, temperature=0, max_tokens=10)
    second = client.chat.completions.create(model=MODEL, messages=as_system, temperature=0, max_tokens=10)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.prompt_tokens == second.usage.prompt_tokens


def test_content_parts_are_joined(client):
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], temperature=0, max_tokens=40)
    plain = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    assert reply.choices[0].message.content == plain.choices[0].message.content


def test_concurrent_requests_all_answer_correctly(client):
    capitals = {"Germany": "Berlin", "Japan": "Tokyo", "the United Kingdom": "London", "China": "Beijing",
                "Russia": "Moscow", "Egypt": "Cairo"}

    def ask(country: str) -> str:
        messages = [{"role": "user", "content": f"What is the capital of {country}?"}]
        return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40).choices[0].message.content

    with ThreadPoolExecutor(len(capitals)) as pool:
        answers = dict(zip(capitals, pool.map(ask, capitals)))
    for country, capital in capitals.items():
        assert capital in answers[country], (country, answers[country])


def test_a_client_that_goes_away_cancels_its_generation(inference_server, http):
    cancelled = metric(http, "chatfaas_inference_requests_total", source="http", outcome="cancelled")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": 2000, "temperature": 1.0, "seed": 7, "stream": True}
    with httpx.Client(base_url=inference_server.url, timeout=60) as own:
        with own.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
    deadline = time.monotonic() + 20
    while metric(http, "chatfaas_inference_requests_total", source="http", outcome="cancelled") <= cancelled:
        assert time.monotonic() < deadline, "the generation was not cancelled after the client left"
        time.sleep(0.2)
    assert metric(http, "chatfaas_inference_batch_size") == 0


def test_metrics_count_tokens_and_time_to_first_token(client, http):
    before = metric(http, "chatfaas_inference_tokens_generated_total", model=MODEL)
    ttft = metric(http, "chatfaas_inference_time_to_first_token_seconds_count", model=MODEL)
    client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=4)
    assert metric(http, "chatfaas_inference_tokens_generated_total", model=MODEL) == before + 4
    assert metric(http, "chatfaas_inference_time_to_first_token_seconds_count", model=MODEL) == ttft + 1


# -- bad input: always a 4xx in the OpenAI error envelope ------------------------------------
def _post(http: httpx.Client, body, **kwargs) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return http.post("/v1/chat/completions", json=body, **kwargs)
    return http.post("/v1/chat/completions", content=body, **kwargs)


def _valid(**changes):
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 4}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (_valid(messages=[]), "messages", "invalid_value"),
        (_valid(messages=_DROP), "messages", "missing_required_parameter"),
        (_valid(model=_DROP), "model", "missing_required_parameter"),
        (_valid(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role", "unsupported_value"),
        (_valid(messages=[{"role": "tool", "content": "hi"}]), "messages[0].role", "unsupported_value"),
        (_valid(messages=[{"role": "user", "content": 42}]), "messages[0].content", "invalid_value"),
        (_valid(messages=[{"role": "user", "content": None}]), "messages[0].content", "missing_required_parameter"),
        (_valid(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
        (_valid(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
         "messages[0].content", "unsupported_value"),
        (_valid(messages=["hello"]), "messages[0]", "invalid_value"),
        (_valid(max_tokens=0), "max_tokens", "invalid_value"),
        (_valid(max_tokens=-5), "max_tokens", "invalid_value"),
        (_valid(max_tokens=10_000_000), "max_tokens", "invalid_value"),
        (_valid(max_tokens="12"), "max_tokens", "invalid_value"),
        (_valid(max_tokens=1.5), "max_tokens", "invalid_value"),
        (_valid(temperature=-0.1), "temperature", "invalid_value"),
        (_valid(temperature=2.5), "temperature", "invalid_value"),
        (_valid(temperature="hot"), "temperature", "invalid_value"),
        (_valid(top_p=0), "top_p", "invalid_value"),
        (_valid(top_p=1.5), "top_p", "invalid_value"),
        (_valid(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
        (_valid(stop=["x" * 101]), "stop", "invalid_value"),
        (_valid(stop=[""]), "stop", "invalid_value"),
        (_valid(stop=[1]), "stop", "invalid_value"),
        (_valid(seed="abc"), "seed", "invalid_value"),
        (_valid(n=2), "n", "unsupported_parameter"),
        (_valid(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "unsupported_parameter"),
        (_valid(logprobs=True), "logprobs", "unsupported_parameter"),
        (_valid(frequency_penalty=0.5), "frequency_penalty", "unsupported_parameter"),
        (_valid(response_format={"type": "json_object"}), "response_format", "unsupported_parameter"),
        (_valid(stream_options={"include_usage": True}), None, "invalid_value"),
        (_valid(stream="yes"), "stream", "invalid_value"),
    ],
)
def test_invalid_requests_are_400_in_the_openai_envelope(http, body, param, code):
    response = _post(http, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["code"] == code, error
    assert error["message"]


@pytest.mark.parametrize(
    "raw",
    [b'{"model": "m", "messages": [', b"not json", b"", b'{"model": "%s", "messages": [], "temperature": NaN}' % MODEL.encode(),
     b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}' % MODEL.encode(),
     b'[1, 2, 3]', b'"a string"'],
    ids=["truncated", "garbage", "empty", "nan", "infinity", "array", "string"],
)
def test_malformed_json_is_a_400(http, raw):
    response = _post(http, raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


def test_a_huge_float_that_parses_to_infinity_is_refused(http):
    raw = json.dumps(_valid()).replace('"max_tokens": 4', '"max_tokens": 4, "temperature": 1e999')
    response = _post(http, raw.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "temperature"


def test_a_wrong_content_type_is_a_415(http):
    response = _post(http, json.dumps(_valid()).encode(), headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=FRANCE)
    assert caught.value.code == "model_not_found" and caught.value.body["param"] == "model"


@pytest.mark.parametrize("max_tokens", [None, 100])
def test_a_prompt_over_the_context_is_context_length_exceeded(client, max_tokens):
    huge = [{"role": "user", "content": "hello " * 9000}]
    extra = {} if max_tokens is None else {"max_tokens": max_tokens}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=huge, **extra)
    assert caught.value.code == "context_length_exceeded"


def test_prompt_plus_max_tokens_over_the_context_is_refused_too(client):
    long = [{"role": "user", "content": "hello " * 6000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=4000)
    assert caught.value.code == "context_length_exceeded"
    assert "in the completion" in caught.value.message


def test_the_sdk_raises_bad_request_for_n_above_one(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=FRANCE, n=3)
    assert caught.value.code == "unsupported_parameter" and caught.value.body["param"] == "n"


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405)])
def test_routing_errors_use_the_openai_envelope_too(http, method, path, status):
    response = http.request(method, path)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# -- before the model is ready ----------------------------------------------------------------
def test_health_answers_at_once_and_requests_get_503_until_ready(unready_server):
    with httpx.Client(base_url=unready_server.url, timeout=10) as http:
        assert http.get("/_/health").status_code == 200
        ready = http.get("/_/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert int(ready.headers["Retry-After"]) >= 1
        response = _post(http, _valid())
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["code"] == "model_not_ready"
        assert response.json()["error"]["type"] == "server_error"
        # Bad input is still bad input while loading.
        assert _post(http, _valid(temperature=9)).status_code == 400


# -- with INFERENCE_AUTH=user ---------------------------------------------------------------------
@pytest.mark.parametrize(("api_key", "code"), [("", "missing_token"), ("not-a-jwt", "invalid_token")])
def test_a_guarded_api_refuses_calls_without_a_valid_token(guarded_server, api_key, code):
    client = OpenAI(base_url=f"{guarded_server.url}/v1", api_key=api_key or "unused", max_retries=0, timeout=30,
                    default_headers={"Authorization": ""} if not api_key else None)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL, messages=FRANCE)
    assert caught.value.body["type"] == "authentication_error" and caught.value.code == code
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert httpx.get(f"{guarded_server.url}/_/health").status_code == 200
