"""The auth function: registration, the OAuth 2.0 token and revocation endpoints, JWKS.

``/token`` and ``/revoke`` answer errors in the OAuth shape (see ``functions/auth/errors.py``);
every other route uses the platform's ``{"error": {"code", "message"}}``.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

import functions_framework
import pydantic

from shared.config import env_int
from shared.errors import PlatformError, ValidationError
from shared.http import App, Request, Response
from shared.http.app import validation_details
from shared.security import bearer_authenticator

from functions.auth.errors import OAuthError, as_oauth_error
from functions.auth.runtime import LazyRuntime
from functions.auth.schemas import RegisteredUser, RegisterRequest, RevokeRequest, TokenRequest, TokenResponse, UserInfo

runtime = LazyRuntime()
app = App(
    "auth",
    max_body_bytes=env_int("AUTH_MAX_BODY_BYTES", 16 * 1024),
    authenticator=lambda request: bearer_authenticator(runtime().verifier)(request),
)
app.readiness_check(lambda: (runtime() is not None, {}))

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1
JWKS_MAX_AGE = 300


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def _oauth_body(request: Request, model: type[pydantic.BaseModel]) -> Any:
    """Read a form (RFC 6749 §4.3.2) or JSON body into ``model``; any failure is an OAuth error."""
    data = request.form() if request.content_type == "application/x-www-form-urlencoded" else request.json()
    if not isinstance(data, dict):
        raise OAuthError("the request body must be a form or a JSON object")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError("the request is invalid", details=validation_details(exc)) from None


def oauth_endpoint(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    def wrapped(request: Request) -> Any:
        try:
            return handler(request)
        except PlatformError as err:
            raise as_oauth_error(err) from None

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


@app.route("/register", methods=["POST"], body=RegisterRequest)
def register(request: Request) -> tuple[RegisteredUser, int]:
    body: RegisterRequest = request.body
    user = runtime().service.register(body.email, body.password, body.display_name)
    return RegisteredUser(id=user.id, email=user.email, display_name=user.display_name, roles=list(user.roles), created_at=_iso(user.created_at)), 201


@app.route("/token", methods=["POST"])
@oauth_endpoint
def token(request: Request) -> Response:
    """RFC 6749 token endpoint: ``grant_type=password`` or ``refresh_token``; form or JSON."""
    body: TokenRequest = _oauth_body(request, TokenRequest)
    service = runtime().service
    if body.grant_type == "password":
        issued = service.password_grant(body.username or "", body.password or "", body.scope, request.client_ip)
    elif body.grant_type == "refresh_token":
        issued = service.refresh_grant(body.refresh_token or "", body.scope)
    else:
        raise OAuthError(f"grant_type {body.grant_type!r} is not supported", code="unsupported_grant_type")
    payload = TokenResponse(
        access_token=issued.access_token, expires_in=issued.expires_in, refresh_token=issued.refresh_token, scope=issued.scope
    )
    return Response(payload.model_dump(exclude_none=True), headers=NO_STORE)


@app.route("/revoke", methods=["POST"])
@oauth_endpoint
def revoke(request: Request) -> Response:
    """RFC 7009 revocation. Possession of the token is the authority to revoke it: a refresh
    token (revokes its whole family and the access tokens it issued) or an access token (its
    ``jti`` is refused everywhere until it expires). No bearer header is needed, since a public
    client has no other credential; unknown or invalid tokens still get 200 (§2.2)."""
    body: RevokeRequest = _oauth_body(request, RevokeRequest)
    runtime().service.revoke(body.token, body.token_type_hint)
    return Response(None, status=200, headers=NO_STORE)


@app.route("/.well-known/jwks.json")
def jwks(request: Request) -> Response:
    return Response(runtime().keys.jwks(), headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})


@app.route("/userinfo", auth="user")
def userinfo(request: Request) -> UserInfo:
    principal = request.principal
    return UserInfo(sub=principal.sub, email=principal.email, roles=list(principal.roles))


@functions_framework.http
def auth(flask_request):  # the FUNCTION_TARGET
    return app.handle(flask_request)
