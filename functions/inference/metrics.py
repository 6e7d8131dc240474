"""Inference metrics (prefix ``chatfaas_inference_``), shared by the HTTP API and the worker.

``function_name`` tells the two targets apart; ``source`` is ``http`` or ``event``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "chatfaas_inference"

REQUESTS = Counter(
    f"{PREFIX}_requests_total",
    "Generations by how they ended (stop, length, cancelled, error, rejected).",
    ["function_name", "source", "outcome"],
)
PROMPT_TOKENS = Counter(f"{PREFIX}_prompt_tokens_total", "Prompt tokens processed.", ["function_name", "model"])
TOKENS_GENERATED = Counter(f"{PREFIX}_tokens_generated_total", "Completion tokens generated.", ["function_name", "model"])
TIME_TO_FIRST_TOKEN = Histogram(
    f"{PREFIX}_time_to_first_token_seconds",
    "From submitting a prompt to its first decoded token (queueing and prefill).",
    ["function_name", "model"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
TOKENS_PER_SECOND = Histogram(
    f"{PREFIX}_tokens_per_second",
    "Decode rate of one generation, after its first token.",
    ["function_name", "model"],
    buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 400, 800),
)
BATCH_SIZE = Gauge(
    f"{PREFIX}_batch_size",
    "Generations in flight in this process: they share the engine's continuous batch (beyond max_batch they wait for a slot).",
    ["function_name"],
)
QUEUE_LAG = Histogram(
    f"{PREFIX}_queue_lag_seconds",
    "From an inference request event's time to the start of its generation.",
    ["function_name"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
MODEL_READY = Gauge(f"{PREFIX}_model_ready", "1 once the model is loaded and warmed up.", ["function_name"])
MODEL_LOAD_SECONDS = Gauge(f"{PREFIX}_model_load_seconds", "Time to fetch, load and warm up the model.", ["function_name"])


@dataclass
class GenerationTimer:
    """Observes one generation: time to first token, decode rate, tokens, batch occupancy."""

    function_name: str
    model: str
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _open: bool = True

    def __post_init__(self) -> None:
        BATCH_SIZE.labels(self.function_name).inc()

    def token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            TIME_TO_FIRST_TOKEN.labels(self.function_name, self.model).observe(self.first_token_at - self.started)

    def finish(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Records the counts; safe to call more than once (only the first counts)."""
        if not self._open:
            return
        self._open = False
        BATCH_SIZE.labels(self.function_name).dec()
        PROMPT_TOKENS.labels(self.function_name, self.model).inc(prompt_tokens)
        TOKENS_GENERATED.labels(self.function_name, self.model).inc(completion_tokens)
        if self.first_token_at is not None and completion_tokens > 1:
            elapsed = time.perf_counter() - self.first_token_at
            if elapsed > 0:
                TOKENS_PER_SECOND.labels(self.function_name, self.model).observe((completion_tokens - 1) / elapsed)
