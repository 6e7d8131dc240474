"""Response values a handler may return besides plain JSON-able objects."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


@dataclass
class Response:
    """A complete response. ``body`` is JSON-encoded unless it is ``bytes``/``str``."""

    body: Any = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass
class StreamingResponse:
    """A response whose body is produced while it is sent (SSE, NDJSON). Never buffered."""

    chunks: Iterable[bytes | str]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "text/event-stream"


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event; ``data`` is sent as-is when a string, else as compact JSON."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()
