"""OpenAI's error envelope, and request validation errors turned into it.

Every route of the HTTP API answers errors as ``{"error": {"message", "type", "param", "code"}}``
(the openai SDK reads ``message`` and ``code`` from it), inside SSE streams too.
"""
from __future__ import annotations

import pydantic

from shared.errors import BadRequestError, PlatformError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_CODES = {  # pydantic error types → OpenAI-style codes
    "missing": "missing_required_parameter",
    "unsupported_parameter": "unsupported_parameter",
    "unsupported_value": "unsupported_value",
}


def openai_error(err: PlatformError) -> dict:
    """The ``error`` object of the envelope."""
    kind = _TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
    return {"message": err.message, "type": kind, "param": err.param, "code": err.code}


def openai_error_body(err: PlatformError) -> dict:
    """``error_body=`` for :class:`shared.http.App`."""
    return {"error": openai_error(err)}


def _param(loc: tuple) -> str | None:
    """``("messages", 0, "content")`` → ``"messages[0].content"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def invalid_request(exc: pydantic.ValidationError) -> BadRequestError:
    """The first validation error as a 400 that names the parameter, as OpenAI does."""
    err = exc.errors(include_url=False, include_input=False)[0]
    param = (err.get("ctx") or {}).get("param") or _param(err["loc"])
    message = err["msg"] if param is None or err["msg"].startswith(f"{param}:") else f"{param}: {err['msg']}"
    return BadRequestError(message, code=_CODES.get(err["type"], "invalid_value"), param=param)
