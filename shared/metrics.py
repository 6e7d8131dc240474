"""Prometheus metrics shared by every function (prefix ``chatfaas_``).

Each function process serves its own registry at ``/metrics``. Label names follow the OpenFaaS
gateway's (``function_name``, ``code``) so dashboards can join the two.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

PREFIX = "chatfaas"

HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests_total",
    "HTTP requests handled by a function.",
    ["function_name", "route", "method", "code"],
)
HTTP_SECONDS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to produce the response head (streams: time to first byte).",
    ["function_name", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVENTS_HANDLED = Counter(
    f"{PREFIX}_events_total",
    "Events handled by an event-triggered function.",
    ["function_name", "type", "outcome"],
)


def render_latest() -> tuple[bytes, str]:
    """The current metrics in the Prometheus text format, with its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
