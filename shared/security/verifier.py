"""Access-token verification: signature, algorithm allow-list, claims, revocation."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import jwt

from shared.errors import UnauthorizedError
from shared.security.keysource import KeySource
from shared.security.principal import Principal
from shared.security.revocation import RevocationList
from shared.security.settings import ALLOWED_ALGORITHMS, SecuritySettings

REQUIRED_CLAIMS = ("iss", "aud", "exp", "nbf", "iat", "jti", "sub")
# pyjwt's key types per algorithm: a kid that names an RSA key cannot verify an EdDSA token.
_KEY_TYPES = {"RS256": "RSA", "EdDSA": "OKP"}


def _invalid(message: str) -> UnauthorizedError:
    return UnauthorizedError(message, code="invalid_token")


class _VerifiedCache:
    """Tokens whose signature and claims were checked a moment ago (bounded, per process)."""

    def __init__(self, seconds: float, max_entries: int = 10_000) -> None:
        self._seconds = seconds
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, now: float) -> Principal | None:
        if self._seconds <= 0:
            return None
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            cached_at, principal = entry
            if now - cached_at > self._seconds or now >= principal.expires_at:
                del self._entries[token]
                return None
            return principal

    def put(self, token: str, principal: Principal, now: float) -> None:
        if self._seconds <= 0:
            return
        with self._lock:
            self._entries[token] = (now, principal)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class TokenVerifier:
    """Turns a bearer token into a :class:`Principal` or raises ``UnauthorizedError`` (401)."""

    def __init__(
        self,
        settings: SecuritySettings,
        keys: KeySource,
        revocations: RevocationList | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._keys = keys
        self._revocations = revocations
        self._clock = clock
        self._verified = _VerifiedCache(settings.verify_cache_seconds)

    def verify(self, token: str) -> Principal:
        now = self._clock()
        principal = self._verified.get(token, now)
        if principal is None:
            principal = Principal.from_claims(self.decode(token, now=now))
            self._verified.put(token, principal, now)
        if self._revocations is not None and self._revocations.is_revoked(principal.jti):
            raise _invalid("the access token has been revoked")
        return principal

    def decode(self, token: str, *, now: float | None = None, verify_exp: bool = True) -> dict[str, Any]:
        """Verified claims of ``token`` (no revocation check). ``verify_exp=False`` serves
        revocation of tokens that may already have expired."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise _invalid("the access token is malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise _invalid(f"the token algorithm {alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the token has no key id (kid)")
        key = self._keys.key_for(kid)
        if key is None:
            raise _invalid("the token was signed by an unknown key")
        if _KEY_TYPES[alg] != key.key_type or (key.algorithm_name and key.algorithm_name != alg):
            raise _invalid("the token algorithm does not match its key")
        options = {"require": list(REQUIRED_CLAIMS), "verify_exp": verify_exp}
        try:
            # Our own clock (injectable in tests) instead of pyjwt's time.time().
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={**options, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            raise _invalid("the token is not meant for this audience") from None
        except jwt.InvalidIssuerError:
            raise _invalid("the token was not issued by the expected issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token signature is invalid") from None
        except jwt.PyJWTError:
            raise _invalid("the access token is invalid") from None
        self._check_times(claims, self._clock() if now is None else now, verify_exp)
        return claims

    def _check_times(self, claims: dict[str, Any], now: float, verify_exp: bool) -> None:
        leeway = self.settings.leeway_seconds
        try:
            exp, nbf, iat = float(claims["exp"]), float(claims["nbf"]), float(claims["iat"])
        except (TypeError, ValueError):
            raise _invalid("the token's time claims are malformed") from None
        if verify_exp and now > exp + leeway:
            raise _invalid("the access token has expired")
        if now + leeway < nbf:
            raise _invalid("the access token is not valid yet")
        if now + leeway < iat:
            raise _invalid("the access token was issued in the future")
