"""Wire models of the users function."""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas import DisplayName

# BCP 47-ish: a 2-3 letter language, then subtags of 2-8 letters/digits (en, fr-FR, zh-Hant-TW).
_LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class Preferences(BaseModel):
    """What ``chat`` applies to a user's conversations. ``PUT`` replaces the whole document;
    omitted fields take their defaults."""

    model_config = ConfigDict(extra="forbid")

    language: str = Field(default="en", max_length=35)
    default_model: str | None = Field(default=None, min_length=1, max_length=100)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1, le=4096)
    system_prompt: str | None = Field(default=None, max_length=4000)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if not _LANGUAGE_RE.match(value):
            raise ValueError("must be a BCP 47 language tag such as 'en' or 'fr-FR'")
        return value


class ProfilePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_name: DisplayName | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> "ProfilePatch":
        if not self.model_fields_set:
            raise ValueError("nothing to update: send at least one field (display_name)")
        return self


class Profile(BaseModel):
    id: str
    email: str | None
    display_name: str | None
    roles: list[str]
    created_at: str
    updated_at: str
    preferences: Preferences


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=512)


class ProfilePage(BaseModel):
    items: list[Profile]
    next_cursor: str | None
