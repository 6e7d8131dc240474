"""Chat's own metrics (prefix ``chatfaas_chat_``), beside the HTTP ones every function has."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import PREFIX

TURNS = Counter(
    f"{PREFIX}_chat_turns_total",
    "Chat turns by how the client waited (sync, stream, async) and how the wait ended.",
    ["function_name", "mode", "outcome"],
)
REPLY_SECONDS = Histogram(
    f"{PREFIX}_chat_reply_seconds",
    "From the request event to the finished reply, as seen by a waiting client.",
    ["function_name", "mode"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)


def turn_ended(mode: str, outcome: str, seconds: float | None = None) -> None:
    TURNS.labels("chat", mode, outcome).inc()
    if seconds is not None and outcome == "complete":
        REPLY_SECONDS.labels("chat", mode).observe(seconds)
