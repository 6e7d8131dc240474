"""The platform's small error tree, mapped to HTTP statuses in one place.

Handlers and storage backends raise these; ``shared.http`` turns them into the JSON error body
``{"error": {"code": ..., "message": ...}}`` (DESIGN §6). Anything that is not a
``PlatformError`` becomes a generic 500 with the traceback in the log only.
"""
from __future__ import annotations

from typing import Any, Mapping


class PlatformError(Exception):
    """Base of every error a client may see. ``status`` and ``code`` are part of the contract."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        details: Any = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip().splitlines()[0]
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.details = details
        self.param = param

    def to_body(self) -> dict:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class BadRequestError(PlatformError):
    """The request is malformed."""

    status, code = 400, "bad_request"


class UnauthorizedError(PlatformError):
    """Authentication is required or the credentials are invalid."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
        super().__init__(message, headers=headers, **kwargs)


class ForbiddenError(PlatformError):
    """You are not allowed to do this."""

    status, code = 403, "forbidden"


class NotFoundError(PlatformError):
    """The resource does not exist."""

    status, code = 404, "not_found"


class MethodNotAllowedError(PlatformError):
    """The method is not allowed on this resource."""

    status, code = 405, "method_not_allowed"


class ConflictError(PlatformError):
    """The request conflicts with the current state."""

    status, code = 409, "conflict"


class PayloadTooLargeError(PlatformError):
    """The request body is too large."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(PlatformError):
    """The request's content type is not supported."""

    status, code = 415, "unsupported_media_type"


class ValidationError(PlatformError):
    """The request is well-formed but invalid."""

    status, code = 422, "validation_error"


class RateLimitedError(PlatformError):
    """Too many requests."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str | None = None, *, retry_after: float = 1, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        super().__init__(message, headers=headers, **kwargs)
        self.retry_after = retry_after


class UnavailableError(PlatformError):
    """A dependency is unavailable; try again later."""

    status, code = 503, "unavailable"

    def __init__(self, message: str | None = None, *, retry_after: float = 1, **kwargs: Any) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        super().__init__(message, headers=headers, **kwargs)


class GatewayTimeoutError(PlatformError):
    """The work did not finish in time; it goes on in the background."""

    status, code = 504, "timeout"
