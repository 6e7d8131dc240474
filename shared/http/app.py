"""Routing, validation, auth and error mapping for a function, independent of the server.

``App.dispatch`` is pure request → (status, headers, body); ``App.handle`` is the thin
functions-framework (Flask) adapter around it. Routes use werkzeug's rule syntax
(``/conversations/<conversation_id>``).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import pydantic
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from shared import metrics
from shared.errors import (
    ForbiddenError,
    MethodNotAllowedError,
    NotFoundError,
    PlatformError,
    ValidationError,
)
from shared.http.request import Request
from shared.http.responses import Response, StreamingResponse

log = logging.getLogger("shared.http")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
ErrorBody = Callable[[PlatformError], dict]
ReadinessCheck = Callable[[], "tuple[bool, dict] | bool"]


@dataclass(frozen=True)
class Route:
    path: str
    methods: tuple[str, ...]
    handler: Callable[[Request], Any]
    body: type[pydantic.BaseModel] | None = None
    body_format: str = "json"  # "json" | "form" | "json_or_form"
    query: type[pydantic.BaseModel] | None = None
    auth: str | None = None  # None | "user" | "admin"


@dataclass
class Result:
    """A dispatched response, still independent of the server that sends it."""

    status: int
    headers: dict[str, str]
    body: bytes | Iterable[bytes]
    content_type: str | None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [_to_jsonable(item) for item in value]
    return value


def validation_details(exc: pydantic.ValidationError) -> list[dict]:
    """Field errors without the offending input (it may be a password)."""
    return [
        {"field": ".".join(str(part) for part in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


class App:
    """A function's HTTP surface: its routes plus ``/_/health``, ``/_/ready`` and ``/metrics``."""

    def __init__(
        self,
        name: str,
        *,
        max_body_bytes: int | None = None,
        error_body: ErrorBody | None = None,
        authenticator: Callable[[Request], Any] | None = None,
    ) -> None:
        self.name = name
        self.max_body_bytes = max_body_bytes or int(
            os.environ.get("HTTP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
        )
        self.error_body: ErrorBody = error_body or (lambda err: err.to_body())
        self._authenticator = authenticator
        self._routes: dict[str, Route] = {}
        self._map = Map(strict_slashes=False, merge_slashes=True)
        self._readiness: list[ReadinessCheck] = []
        self._add(Route("/_/health", ("GET",), self._health))
        self._add(Route("/_/ready", ("GET",), self._ready))
        self._add(Route("/metrics", ("GET",), self._metrics))

    # -- declaration ---------------------------------------------------------------------
    def route(
        self,
        path: str,
        methods: Sequence[str] = ("GET",),
        *,
        body: type[pydantic.BaseModel] | None = None,
        body_format: str = "json",
        query: type[pydantic.BaseModel] | None = None,
        auth: str | None = None,
    ) -> Callable[[Callable[[Request], Any]], Callable[[Request], Any]]:
        def register(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
            self._add(Route(path, tuple(m.upper() for m in methods), handler, body, body_format, query, auth))
            return handler

        return register

    def readiness_check(self, check: ReadinessCheck) -> ReadinessCheck:
        """Register a check for ``/_/ready``; it returns ``ok`` or ``(ok, details)``."""
        self._readiness.append(check)
        return check

    def _add(self, route: Route) -> None:
        endpoint = f"{len(self._routes)}:{route.path}"
        self._routes[endpoint] = route
        self._map.add(Rule(route.path, endpoint=endpoint, methods=list(route.methods)))

    # -- dispatch ------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Result:
        started = time.perf_counter()
        route_label = "unmatched"
        try:
            route, params = self._match(request)
            route_label = route.path
            request.params = params
            self._prepare(route, request)
            result = self._to_result(route.handler(request))
        except PlatformError as err:
            result = self._error_result(err)
        except Exception:  # the one place a bug becomes a generic 500
            log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request.request_id)
            result = self._error_result(PlatformError("internal server error"))
        result.headers.setdefault("X-Request-Id", request.request_id)
        metrics.HTTP_REQUESTS.labels(self.name, route_label, request.method, str(result.status)).inc()
        metrics.HTTP_SECONDS.labels(self.name, route_label).observe(time.perf_counter() - started)
        return result

    def _match(self, request: Request) -> tuple[Route, dict[str, str]]:
        adapter = self._map.bind("function", "/")
        try:
            endpoint, params = adapter.match(request.path, method=request.method)
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            raise MethodNotAllowedError(
                f"{request.method} is not allowed on {request.path}", headers={"Allow": allowed}
            ) from None
        except NotFound:
            raise NotFoundError(f"no route for {request.method} {request.path}") from None
        return self._routes[endpoint], params

    def _prepare(self, route: Route, request: Request) -> None:
        if route.auth:
            request.principal = self._authenticate(request)
            if route.auth == "admin" and not getattr(request.principal, "is_admin", False):
                raise ForbiddenError("this operation requires the admin role")
        if route.query is not None:
            request.query_model = self._validate(route.query, dict(request.query))  # type: ignore[attr-defined]
        if route.body is not None:
            request.body = self._validate(route.body, self._read_body(route, request))

    def _authenticate(self, request: Request) -> Any:
        if self._authenticator is None:
            from shared.security import authenticate_request  # lazy: only functions with auth need it

            self._authenticator = authenticate_request
        return self._authenticator(request)

    @staticmethod
    def _read_body(route: Route, request: Request) -> Any:
        if route.body_format == "form" or (
            route.body_format == "json_or_form" and request.content_type == "application/x-www-form-urlencoded"
        ):
            return request.form()
        return request.json()

    @staticmethod
    def _validate(model: type[pydantic.BaseModel], data: Any) -> pydantic.BaseModel:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError("the request is invalid", details=validation_details(exc)) from None

    def _to_result(self, value: Any) -> Result:
        status, headers = 200, {}
        if isinstance(value, tuple):
            value, status, *rest = value
            headers = dict(rest[0]) if rest else {}
        if isinstance(value, StreamingResponse):
            return Result(
                value.status,
                {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **value.headers},
                (chunk.encode() if isinstance(chunk, str) else chunk for chunk in value.chunks),
                value.content_type,
            )
        if isinstance(value, Response):
            headers.update(value.headers)
            if isinstance(value.body, (bytes, str)):
                body = value.body.encode() if isinstance(value.body, str) else value.body
                return Result(value.status, headers, body, value.content_type or "text/plain; charset=utf-8")
            if value.body is None:
                return Result(value.status, headers, b"", value.content_type)
            return Result(value.status, headers, _json_bytes(_to_jsonable(value.body)), value.content_type or "application/json")
        if value is None:
            return Result(204 if status == 200 else status, headers, b"", None)
        return Result(status, headers, _json_bytes(_to_jsonable(value)), "application/json")

    def _error_result(self, err: PlatformError) -> Result:
        return Result(err.status, dict(err.headers), _json_bytes(self.error_body(err)), "application/json")

    # -- built-in routes -----------------------------------------------------------------
    def _health(self, request: Request) -> dict:
        return {"status": "ok", "function": self.name}

    def _ready(self, request: Request) -> Response:
        details: dict[str, Any] = {}
        ready = True
        for check in self._readiness:
            try:
                outcome = check()
            except Exception as exc:  # a failing check means "not ready", not a 500
                log.warning("readiness check failed: %s", exc)
                outcome = (False, {"reason": type(exc).__name__})
            ok, info = outcome if isinstance(outcome, tuple) else (bool(outcome), {})
            ready = ready and ok
            details.update(info)
        body = {"ready": ready, "function": self.name, **details}
        return Response(body, status=200 if ready else 503, headers={} if ready else {"Retry-After": "1"})

    def _metrics(self, request: Request) -> Response:
        payload, content_type = metrics.render_latest()
        return Response(payload, content_type=content_type)

    # -- functions-framework (Flask) adapter ---------------------------------------------
    def handle(self, flask_request: Any) -> Any:
        """Entry point for ``@functions_framework.http``: Flask request in, Flask response out."""
        import flask

        request = Request(
            method=flask_request.method,
            path=flask_request.path,
            headers=flask_request.headers,
            query=flask_request.args,
            read_body=lambda limit: flask_request.stream.read(limit),
            max_body_bytes=self.max_body_bytes,
            request_id=flask_request.headers.get("X-Request-Id") or uuid.uuid4().hex,
            remote_addr=flask_request.remote_addr,
        )
        result = self.dispatch(request)
        body = result.body
        if not isinstance(body, (bytes, bytearray)):
            body = _stream(body)
            response = flask.Response(body, status=result.status, headers=result.headers, content_type=result.content_type, direct_passthrough=True)
        else:
            response = flask.Response(body, status=result.status, headers=result.headers, content_type=result.content_type)
        return response


def _stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield chunks; a client that goes away closes the underlying generator (GeneratorExit)."""
    iterator = iter(chunks)
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
