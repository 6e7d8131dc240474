"""The request a handler sees: framework-neutral, with a size-limited body."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping
from urllib.parse import parse_qsl

from shared.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError


class Request:
    """What a route handler gets. ``body`` is the validated model when the route declares one;
    ``principal`` is the authenticated caller when the route requires auth."""

    def __init__(
        self,
        *,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        read_body: Any,
        max_body_bytes: int,
        request_id: str,
        remote_addr: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.query = query
        self.request_id = request_id
        self.remote_addr = remote_addr
        self.params: dict[str, str] = {}
        self.body: Any = None
        self.principal: Any = None
        self._read_body = read_body
        self._max_body_bytes = max_body_bytes
        self._data: bytes | None = None

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    @property
    def client_ip(self) -> str:
        """The caller's address as seen by the nearest trusted proxy.

        A client can put anything in ``X-Forwarded-For``; only the entries appended by our own
        proxies can be trusted, so the address is taken ``TRUSTED_PROXY_HOPS`` (default 1: the
        function gateway) from the right, never the client-supplied left end."""
        forwarded = [part.strip() for part in (self.headers.get("X-Forwarded-For") or "").split(",") if part.strip()]
        hops = int(os.environ.get("TRUSTED_PROXY_HOPS", "1"))
        if forwarded and hops > 0:
            return forwarded[-min(hops, len(forwarded))]
        return self.remote_addr or "unknown"

    def data(self) -> bytes:
        """The raw body, refused with 413 when it exceeds the configured limit."""
        if self._data is None:
            length = self.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self._max_body_bytes:
                raise PayloadTooLargeError(f"request body is larger than {self._max_body_bytes} bytes")
            data = self._read_body(self._max_body_bytes + 1)
            if len(data) > self._max_body_bytes:
                raise PayloadTooLargeError(f"request body is larger than {self._max_body_bytes} bytes")
            self._data = data
        return self._data

    def json(self) -> Any:
        if self.content_type not in ("application/json", "") and not self.content_type.endswith("+json"):
            raise UnsupportedMediaTypeError("expected Content-Type: application/json")
        raw = self.data()
        if not raw.strip():
            raise BadRequestError("request body is empty; expected a JSON document", code="invalid_json")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"malformed JSON: {exc}", code="invalid_json") from None

    def form(self) -> dict[str, str]:
        if self.content_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaTypeError("expected Content-Type: application/x-www-form-urlencoded")
        try:
            return dict(parse_qsl(self.data().decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise BadRequestError("form body is not UTF-8", code="invalid_form") from None

    def bearer_token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()
