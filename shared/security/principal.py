"""Who is calling: the verified claims of an access token."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, built only from a token whose signature and claims were verified."""

    sub: str
    email: str | None
    roles: tuple[str, ...]
    jti: str
    expires_at: float
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> "Principal":
        roles = claims.get("roles") or ()
        if isinstance(roles, str):
            roles = roles.split()
        return cls(
            sub=str(claims["sub"]),
            email=claims.get("email"),
            roles=tuple(str(role) for role in roles),
            jti=str(claims["jti"]),
            expires_at=float(claims["exp"]),
            claims=dict(claims),
        )
