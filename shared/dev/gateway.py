"""The dev gateway: OpenFaaS routes in front of the functions' own HTTP servers.

- ``/function/NAME[/path]``: reverse proxy, any method; query and headers pass through, the
  response is streamed chunk by chunk (SSE arrives as it is produced, never buffered or
  compressed here), upstream connections are pooled and kept alive.
- ``/async-function/NAME[/path]``: answers 202 with ``X-Call-Id`` at once and queues the call on
  the Kafka topic ``gateway.async``; ``shared.dev.queue_worker`` runs it (a separate process, so a
  queued call survives a restart of either).
- ``/system/functions``, ``/system/function/NAME`` (what faas-cli lists), ``/healthz``,
  ``/metrics`` (``gateway_function_invocation_total``, ``gateway_functions_seconds``).

Run: ``python -m shared.dev.gateway [--port 8080] [--stack stack.yml] [--registry var/run/functions.json]``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from yarl import URL

from shared.dev import kafka_io
from shared.dev.logs import setup_logging
from shared.dev.registry import FunctionRegistry
from shared.stack import Stack, load_stack

log = logging.getLogger("shared.dev.gateway")

# RFC 9110 §7.6.1 hop-by-hop fields, plus the ones the client library recomputes.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)
RESPONSE_DROP = frozenset(h for h in HOP_BY_HOP if h not in ("content-length",))

STACK_KEY = web.AppKey("stack", Stack)
REGISTRY_KEY = web.AppKey("registry", FunctionRegistry)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
METRICS_KEY = web.AppKey("metrics", object)
QUEUE_KEY = web.AppKey("queue", object)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


class GatewayMetrics:
    """OpenFaaS gateway metric names, on a private registry (tests run several gateways)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "gateway_function_invocation_total", "Function invocations by status code",
            ("function_name", "code"), registry=self.registry,
        )
        self.seconds = Histogram(
            "gateway_functions_seconds", "Function invocation time, headers to last byte",
            ("function_name",), registry=self.registry,
        )
        self.count_by_function: dict[str, int] = {}

    def observe(self, function: str, code: int, seconds: float) -> None:
        self.invocations.labels(function, str(code)).inc()
        self.seconds.labels(function).observe(seconds)
        self.count_by_function[function] = self.count_by_function.get(function, 0) + 1


class AsyncQueue:
    """Produces queued calls to Kafka; the blocking kafka-python producer lives in a thread."""

    def __init__(self, servers: str | None, topic: str = kafka_io.ASYNC_TOPIC) -> None:
        self.servers = servers
        self.topic = topic
        self._producer = None

    def _send(self, key: bytes, value: bytes) -> None:
        if self._producer is None:
            self._producer = kafka_io.producer(self.servers)
        # Wait for the broker's ack: the 202 promises the call is durable.
        self._producer.send(self.topic, value=value, key=key).get(timeout=10)

    async def put(self, key: bytes, value: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._send, key, value)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


def _resolve(request: web.Request) -> tuple[str, str] | web.Response:
    """(function name, upstream base URL) or the error response to send."""
    name = request.match_info["name"]
    url = request.app[REGISTRY_KEY].url(name)
    if url:
        return name, url
    if request.app[STACK_KEY].get(name) is None:
        return error_response(404, "function_not_found", f"no function named {name!r}")
    return error_response(503, "function_unavailable", f"function {name!r} is not running",
                          {"Retry-After": "1"})


def _tail(request: web.Request, prefix: str) -> str:
    """The path after ``/<prefix>/NAME``, still percent-encoded, always starting with ``/``."""
    raw = request.rel_url.raw_path
    head = f"/{prefix}/{request.match_info['name']}"
    rest = raw[len(head):] if raw.startswith(head) else "/"
    return rest if rest.startswith("/") else "/" + rest


def _forward_headers(request: web.Request, call_id: str) -> CIMultiDict:
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
    peer = request.remote or ""
    previous = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    headers["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    headers["X-Call-Id"] = call_id
    headers.setdefault("X-Request-Id", call_id)
    return headers


async def proxy(request: web.Request) -> web.StreamResponse:
    resolved = _resolve(request)
    if isinstance(resolved, web.Response):
        return resolved
    name, base = resolved
    call_id = request.headers.get("X-Call-Id") or uuid.uuid4().hex
    query = request.rel_url.raw_query_string
    target = URL(base + _tail(request, "function") + (f"?{query}" if query else ""), encoded=True)
    body = await request.read() if request.body_exists else None
    metrics: GatewayMetrics = request.app[METRICS_KEY]
    started = time.perf_counter()
    status = 502
    response: web.StreamResponse | None = None
    try:
        async with request.app[SESSION_KEY].request(
            request.method, target, headers=_forward_headers(request, call_id), data=body,
            allow_redirects=False,
        ) as upstream:
            status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in RESPONSE_DROP:
                    response.headers.add(key, value)
            response.headers["X-Call-Id"] = call_id
            await response.prepare(request)
            # iter_any: hand each chunk on as soon as it is read (an SSE event is not held back
            # waiting for a buffer to fill).
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        if response is not None and response.prepared:
            # Headers are gone already: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.close()
            return response
        if isinstance(exc, asyncio.TimeoutError):
            status = 504
            return error_response(504, "gateway_timeout", f"function {name!r} did not answer in time")
        status = 502
        return error_response(502, "bad_gateway", f"function {name!r} is unreachable: {exc.__class__.__name__}")
    finally:
        metrics.observe(name, status, time.perf_counter() - started)


async def enqueue(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.app[STACK_KEY].get(name) is None and request.app[REGISTRY_KEY].url(name) is None:
        return error_response(404, "function_not_found", f"no function named {name!r}")
    queue: AsyncQueue = request.app[QUEUE_KEY]
    if not queue.servers:
        return error_response(503, "queue_unavailable", "KAFKA_BOOTSTRAP_SERVERS is not set",
                              {"Retry-After": "5"})
    call_id = request.headers.get("X-Call-Id") or uuid.uuid4().hex
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["X-Forwarded-For"] = request.remote or ""
    record = {
        "callId": call_id,
        "function": name,
        "method": request.method,
        "path": _tail(request, "async-function"),
        "query": request.rel_url.raw_query_string,
        "headers": headers,
        "body": base64.b64encode(await request.read()).decode(),
        "queuedAt": time.time(),
    }
    try:
        await queue.put(name.encode(), json.dumps(record).encode())
    except Exception as exc:  # kafka-python raises a wide family; all mean "not queued"
        log.warning("queueing %s failed: %s", call_id, exc)
        return error_response(503, "queue_unavailable", "the async queue is unavailable",
                              {"Retry-After": "5"})
    request.app[METRICS_KEY].observe(name, 202, 0.0)
    return web.Response(status=202, headers={"X-Call-Id": call_id})


def _describe(app: web.Application, name: str) -> dict[str, Any]:
    spec = app[STACK_KEY].get(name)
    url = app[REGISTRY_KEY].url(name)
    replicas = 1 if url else 0
    return {
        "name": name,
        "image": spec.image if spec else "",
        "namespace": "openfaas-fn",
        "envProcess": f"functions-framework --target {spec.target}" if spec else "",
        "envVars": dict(spec.environment) if spec else {},
        "labels": dict(spec.labels) if spec else {},
        "annotations": dict(spec.annotations) if spec else {},
        "secrets": list(spec.secrets) if spec else [],
        "replicas": replicas,
        "availableReplicas": replicas,
        "invocationCount": app[METRICS_KEY].count_by_function.get(name, 0),
        "url": url or "",
    }


async def list_functions(request: web.Request) -> web.Response:
    return web.json_response([_describe(request.app, n) for n in request.app[STACK_KEY].names])


async def describe_function(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if request.app[STACK_KEY].get(name) is None:
        return error_response(404, "function_not_found", f"no function named {name!r}")
    return web.json_response(_describe(request.app, name))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(stack: Stack, registry: FunctionRegistry, kafka_servers: str | None = None,
              read_timeout: float = 300.0, async_topic: str = kafka_io.ASYNC_TOPIC) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STACK_KEY] = stack
    app[REGISTRY_KEY] = registry
    app[METRICS_KEY] = GatewayMetrics()
    app[QUEUE_KEY] = AsyncQueue(kafka_io.bootstrap_servers(kafka_servers), async_topic)

    async def session_context(app: web.Application):
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60,
                                         enable_cleanup_closed=True)
        # No total timeout: a token stream may legitimately last minutes; sock_read bounds silence.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=read_timeout)
        app[SESSION_KEY] = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"), cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await app[SESSION_KEY].close()
        app[QUEUE_KEY].close()

    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/function/{name}", proxy)
    app.router.add_route("*", "/function/{name}/{tail:.*}", proxy)
    app.router.add_route("*", "/async-function/{name}", enqueue)
    app.router.add_route("*", "/async-function/{name}/{tail:.*}", enqueue)
    app.router.add_get("/system/functions", list_functions)
    app.router.add_get("/system/function/{name}", describe_function)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")))
    parser.add_argument("--stack", default=None, help="stack file (default: $STACK_FILE or stack.yml)")
    parser.add_argument("--registry", default=os.environ.get("GATEWAY_REGISTRY_FILE"),
                        help="JSON file name → URL written by the supervisor")
    parser.add_argument("--read-timeout", type=float,
                        default=float(os.environ.get("GATEWAY_READ_TIMEOUT", "300")))
    parser.add_argument("--topic", default=os.environ.get("GATEWAY_ASYNC_TOPIC", kafka_io.ASYNC_TOPIC),
                        help="Kafka topic of queued /async-function calls")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        import uvloop  # optional: ~2x less per-request overhead on the proxy path

        uvloop.install()
    except ImportError:
        pass
    app = build_app(load_stack(args.stack), FunctionRegistry(args.registry), read_timeout=args.read_timeout,
                    async_topic=args.topic)
    log.info("gateway listening on http://%s:%d", args.host, args.port)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None,
                handle_signals=True, shutdown_timeout=5)


if __name__ == "__main__":
    main()
