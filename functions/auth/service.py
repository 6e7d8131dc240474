"""Auth's logic: registration, the two OAuth grants, revocation. Adapters and clock injected."""
from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import argon2

from shared.config import env_int, env_list, env_str
from shared.errors import ConflictError, RateLimitedError, UnauthorizedError
from shared.security import RevocationList, TokenVerifier
from shared.security.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER

from functions.auth.errors import OAuthError, invalid_grant
from functions.auth.keys import KeyRing
from functions.auth.schemas import normalise_email, valid_scope
from functions.auth.store import RefreshRecord, SqlAuthStore, UserRecord

log = logging.getLogger("functions.auth")

USER_ROLE, ADMIN_ROLE = "user", "admin"


@dataclass(frozen=True)
class AuthSettings:
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    access_ttl: int = 900
    refresh_ttl: int = 30 * 24 * 3600
    admin_emails: frozenset[str] = frozenset()
    max_failures_per_account: int = 5
    max_failures_per_ip: int = 20
    failure_window: int = 900
    argon2_time_cost: int = argon2.DEFAULT_TIME_COST
    argon2_memory_kib: int = argon2.DEFAULT_MEMORY_COST
    argon2_parallelism: int = argon2.DEFAULT_PARALLELISM

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AuthSettings":
        return cls(
            issuer=env_str("AUTH_ISSUER", DEFAULT_ISSUER, environ=environ),
            audience=env_str("AUTH_AUDIENCE", DEFAULT_AUDIENCE, environ=environ),
            access_ttl=env_int("AUTH_ACCESS_TTL_SECONDS", 900, environ=environ),
            refresh_ttl=env_int("AUTH_REFRESH_TTL_SECONDS", 30 * 24 * 3600, environ=environ),
            admin_emails=frozenset(normalise_email(e) for e in env_list("AUTH_ADMIN_EMAILS", environ=environ)),
            max_failures_per_account=env_int("AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", 5, environ=environ),
            max_failures_per_ip=env_int("AUTH_LOGIN_MAX_FAILURES_PER_IP", 20, environ=environ),
            failure_window=env_int("AUTH_LOGIN_FAILURE_WINDOW_SECONDS", 900, environ=environ),
            argon2_time_cost=env_int("AUTH_ARGON2_TIME_COST", argon2.DEFAULT_TIME_COST, environ=environ),
            argon2_memory_kib=env_int("AUTH_ARGON2_MEMORY_KIB", argon2.DEFAULT_MEMORY_COST, environ=environ),
            argon2_parallelism=env_int("AUTH_ARGON2_PARALLELISM", argon2.DEFAULT_PARALLELISM, environ=environ),
        )

    def password_hasher(self) -> argon2.PasswordHasher:
        return argon2.PasswordHasher(
            time_cost=self.argon2_time_cost,
            memory_cost=self.argon2_memory_kib,
            parallelism=self.argon2_parallelism,
            type=argon2.Type.ID,
        )


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int
    scope: str | None


def hash_refresh_token(token: str) -> str:
    # A refresh token is 256 random bits, so a fast unsalted hash is enough (no dictionary to try).
    return hashlib.sha256(token.encode()).hexdigest()


class LoginThrottle:
    """Failed password logins counted per account and per client IP in the shared cache."""

    def __init__(self, cache: Any, settings: AuthSettings) -> None:
        self._cache = cache
        self._limits = (
            ("account", settings.max_failures_per_account),
            ("ip", settings.max_failures_per_ip),
        )
        self._window = settings.failure_window

    @staticmethod
    def _key(kind: str, value: str) -> str:
        return f"login-failures:{kind}:{value}"

    def check(self, account: str, ip: str) -> None:
        for (kind, limit), value in zip(self._limits, (account, ip)):
            key = self._key(kind, value)
            raw = self._cache.get(key)
            if raw is not None and int(raw) >= limit:
                retry_after = self._cache.ttl(key) or self._window
                raise RateLimitedError(
                    f"too many failed logins for this {'account' if kind == 'account' else 'address'}; try again later",
                    retry_after=retry_after,
                )

    def record_failure(self, account: str, ip: str) -> None:
        for (kind, _), value in zip(self._limits, (account, ip)):
            self._cache.incr(self._key(kind, value), 1, ttl=self._window)

    def reset_account(self, account: str) -> None:
        self._cache.delete(self._key("account", account))


class AuthService:
    def __init__(
        self,
        *,
        store: SqlAuthStore,
        keys: Callable[[], KeyRing],
        verifier: TokenVerifier,
        revocations: RevocationList,
        throttle: LoginThrottle,
        settings: AuthSettings,
        on_registered: Callable[[UserRecord], None] = lambda user: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._keys = keys
        self.verifier = verifier
        self.revocations = revocations
        self.throttle = throttle
        self.settings = settings
        self._hasher = settings.password_hasher()
        # Verified against when the account does not exist, so both cases take as long.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
        self._on_registered = on_registered
        self._clock = clock

    # -- registration ------------------------------------------------------------------------
    def register(self, email: str, password: str, display_name: str | None) -> UserRecord:
        now = self._clock()
        roles = (USER_ROLE, ADMIN_ROLE) if email in self.settings.admin_emails else (USER_ROLE,)
        user = UserRecord(
            id=str(uuid.uuid4()),
            email=email,
            password_hash=self._hasher.hash(password),
            display_name=display_name,
            roles=roles,
            created_at=now,
            updated_at=now,
        )
        try:
            self.store.insert_user(user)
        except ConflictError:
            raise ConflictError("an account with this email already exists", code="email_taken") from None
        self._on_registered(user)
        return user

    # -- token endpoint ----------------------------------------------------------------------
    def password_grant(self, username: str, password: str, scope: str | None, client_ip: str) -> IssuedTokens:
        email = normalise_email(username)
        self._check_scope(scope)
        self.throttle.check(email, client_ip)
        user = self.store.user_by_email(email)
        if not self._password_matches(user, password):
            self.throttle.record_failure(email, client_ip)
            raise invalid_grant("the username or password is incorrect")
        self.throttle.reset_account(email)
        self._upgrade_hash(user, password)
        return self._issue(user, family_id=uuid.uuid4().hex, scope=scope)

    def refresh_grant(self, refresh_token: str, scope: str | None) -> IssuedTokens:
        now = self._clock()
        token_hash = hash_refresh_token(refresh_token)
        record = self.store.refresh_by_hash(token_hash)
        if record is None or record.revoked_at is not None or record.expires_at <= now:
            raise invalid_grant("the refresh token is invalid, expired or revoked")
        if scope is not None:
            self._check_scope(scope)
            # RFC 6749 §6: a refresh may narrow the scope, never widen it.
            if not set(scope.split()) <= set((record.scope or "").split()):
                raise OAuthError("the requested scope exceeds the original grant", code="invalid_scope")
        with self.store.db.transaction():
            if record.rotated_at is None and self.store.mark_rotated(token_hash, now):
                user = self.store.user_by_id(record.user_id)
                if user is None:
                    raise invalid_grant("the account no longer exists")
                return self._issue(user, family_id=record.family_id, scope=scope if scope is not None else record.scope)
        # A rotated token came back: it leaked, or the client raced itself. Either way the
        # family is no longer trustworthy (OAuth 2.0 Security BCP §4.14.2).
        self._revoke_family(record.family_id, now)
        log.warning("refresh token reuse detected; revoked family %s of user %s", record.family_id, record.user_id)
        raise invalid_grant("the refresh token was already used; the session has been revoked")

    # -- revocation (RFC 7009) ---------------------------------------------------------------
    def revoke(self, token: str, token_type_hint: str | None) -> None:
        """Revoke a refresh token (its whole family) or an access token (its jti). Unknown or
        invalid tokens are ignored, as RFC 7009 §2.2 requires."""
        now = self._clock()
        looks_like_jwt = token.count(".") == 2
        if looks_like_jwt and token_type_hint != "refresh_token":
            self._revoke_access(token) or self._revoke_refresh(token, now)
        else:
            # The hint is only a hint (§2.1): a miss falls through to the other kind.
            self._revoke_refresh(token, now) or (looks_like_jwt and self._revoke_access(token))

    def _revoke_access(self, token: str) -> bool:
        try:
            claims = self.verifier.decode(token, verify_exp=False)
        except UnauthorizedError:
            return False
        self.revocations.revoke(str(claims["jti"]), float(claims["exp"]))
        return True

    def _revoke_refresh(self, token: str, now: float) -> bool:
        record = self.store.refresh_by_hash(hash_refresh_token(token))
        if record is None:
            return False
        self._revoke_family(record.family_id, now)
        return True

    # -- helpers -----------------------------------------------------------------------------
    def _revoke_family(self, family_id: str, now: float) -> None:
        for jti, expires_at in self.store.revoke_family(family_id, now):
            self.revocations.revoke(jti, expires_at)

    @staticmethod
    def _check_scope(scope: str | None) -> None:
        if scope is not None and not valid_scope(scope):
            raise OAuthError("the scope is malformed", code="invalid_scope")

    def _password_matches(self, user: UserRecord | None, password: str) -> bool:
        try:
            matches = self._hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        return matches and user is not None

    def _upgrade_hash(self, user: UserRecord, password: str) -> None:
        """Re-hash with the current parameters after a successful login (cost raised since)."""
        if self._hasher.check_needs_rehash(user.password_hash):
            self.store.update_password_hash(user.id, self._hasher.hash(password), self._clock())

    def _issue(self, user: UserRecord, *, family_id: str, scope: str | None) -> IssuedTokens:
        now = self._clock()
        issued_at = int(now)
        expires_at = issued_at + self.settings.access_ttl
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "sub": user.id,
            "email": user.email,
            "roles": list(user.roles),
            "jti": jti,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
        }
        if scope:
            claims["scope"] = scope
        access_token = self._keys().signing_key.sign(claims)
        refresh_token = secrets.token_urlsafe(32)
        self.store.insert_refresh(
            RefreshRecord(
                token_hash=hash_refresh_token(refresh_token),
                family_id=family_id,
                user_id=user.id,
                scope=scope,
                issued_at=now,
                expires_at=now + self.settings.refresh_ttl,
                rotated_at=None,
                revoked_at=None,
            ),
            access_jti=jti,
            access_expires_at=float(expires_at),
        )
        return IssuedTokens(access_token, refresh_token, self.settings.access_ttl, scope)
