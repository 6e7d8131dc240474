"""Field types that several functions' wire models share."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field


def _not_blank(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


#: A person's display name: trimmed, not blank, at most 100 characters.
DisplayName = Annotated[str, Field(max_length=100), AfterValidator(_not_blank)]
