"""Wire models of the auth function."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas import DisplayName

EMAIL_MAX = 254
PASSWORD_MIN, PASSWORD_MAX = 10, 128
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), space separated.
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$")


def normalise_email(value: str) -> str:
    """The whole address is lower-cased (not only the domain): one account per mailbox, whatever
    the case a user types, which is what users expect even though RFC 5321 allows
    case-sensitive local parts."""
    return value.strip().lower()


def _character_classes(password: str) -> int:
    return sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    email: str = Field(max_length=EMAIL_MAX + 10)
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)
    display_name: DisplayName | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = normalise_email(value)
        if len(value) > EMAIL_MAX or not _EMAIL_RE.match(value):
            raise ValueError("must be a valid email address")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        if _character_classes(value) < 2:
            raise ValueError("must mix at least two kinds of characters (lower case, upper case, digits, symbols)")
        return value

    @model_validator(mode="after")
    def _password_is_not_the_email(self) -> "RegisterRequest":
        if self.password.strip().lower() == self.email:
            raise ValueError("password must not be the email address")
        return self


class RegisteredUser(BaseModel):
    id: str
    email: str
    display_name: str | None
    roles: list[str]
    created_at: str


class TokenRequest(BaseModel):
    """RFC 6749 §4.3 (password) and §6 (refresh_token) token requests."""

    model_config = ConfigDict(extra="ignore")  # clients send client_id etc.; RFC 6749 §3.2 says ignore unknown

    grant_type: str = Field(max_length=64)  # checked by the service: unsupported_grant_type
    username: str | None = Field(default=None, max_length=EMAIL_MAX + 10)
    password: str | None = Field(default=None, max_length=PASSWORD_MAX)
    refresh_token: str | None = Field(default=None, max_length=512)
    scope: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _grant_parameters(self) -> "TokenRequest":
        if self.grant_type == "password" and (not self.username or not self.password):
            raise ValueError("the password grant requires username and password")
        if self.grant_type == "refresh_token" and not self.refresh_token:
            raise ValueError("the refresh_token grant requires refresh_token")
        return self


def valid_scope(scope: str) -> bool:
    return bool(_SCOPE_RE.match(scope))


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    refresh_token: str
    scope: str | None = None


class RevokeRequest(BaseModel):
    """RFC 7009 §2.1."""

    model_config = ConfigDict(extra="ignore")

    token: str = Field(min_length=1, max_length=8192)
    token_type_hint: str | None = Field(default=None, max_length=64)


class UserInfo(BaseModel):
    sub: str
    email: str | None
    roles: list[str]
