"""SQL for ``users_profiles`` over the shared ``Database`` interface."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.storage.relational import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class ProfileRecord:
    id: str
    email: str | None
    display_name: str | None
    roles: tuple[str, ...]
    preferences: dict[str, Any]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ProfileRecord":
        return cls(
            id=row["id"],
            email=row["email"],
            display_name=row["display_name"],
            roles=tuple(role for role in row["roles"].split(",") if role),
            preferences=json.loads(row["preferences"]),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "roles": list(self.roles)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ProfileRecord":
        return cls(**{**data, "roles": tuple(data["roles"])})


class SqlProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def migrate(self) -> list[str]:
        return self.db.migrate("users", MIGRATIONS_DIR)

    def insert_if_absent(self, profile: ProfileRecord) -> bool:
        """Create the profile unless it exists; ``True`` when this call created it."""
        return (
            self.db.execute(
                "INSERT INTO users_profiles (id, email, display_name, roles, preferences, created_at, updated_at)"
                " VALUES (:id, :email, :display_name, :roles, :preferences, :created_at, :updated_at)"
                " ON CONFLICT (id) DO NOTHING",
                self._params(profile),
            )
            == 1
        )

    def get(self, user_id: str) -> ProfileRecord | None:
        row = self.db.fetch_one("SELECT * FROM users_profiles WHERE id = :id", {"id": user_id})
        return ProfileRecord.from_row(row) if row else None

    def update_display_name(self, user_id: str, display_name: str | None, now: float) -> None:
        self.db.execute(
            "UPDATE users_profiles SET display_name = :name, updated_at = :now WHERE id = :id",
            {"name": display_name, "now": now, "id": user_id},
        )

    def update_identity(self, user_id: str, email: str | None, roles: tuple[str, ...], now: float) -> None:
        self.db.execute(
            "UPDATE users_profiles SET email = :email, roles = :roles, updated_at = :now WHERE id = :id",
            {"email": email, "roles": ",".join(roles), "now": now, "id": user_id},
        )

    def update_preferences(self, user_id: str, preferences: dict[str, Any], now: float) -> None:
        self.db.execute(
            "UPDATE users_profiles SET preferences = :prefs, updated_at = :now WHERE id = :id",
            {"prefs": json.dumps(preferences, separators=(",", ":")), "now": now, "id": user_id},
        )

    def page(self, limit: int, after: tuple[float, str] | None) -> list[ProfileRecord]:
        """Profiles in (created_at, id) order, strictly after the ``after`` position."""
        if after is None:
            rows = self.db.fetch_all(
                "SELECT * FROM users_profiles ORDER BY created_at, id LIMIT :limit", {"limit": limit}
            )
        else:
            rows = self.db.fetch_all(
                "SELECT * FROM users_profiles WHERE created_at > :created_at"
                " OR (created_at = :created_at AND id > :id) ORDER BY created_at, id LIMIT :limit",
                {"created_at": after[0], "id": after[1], "limit": limit},
            )
        return [ProfileRecord.from_row(row) for row in rows]

    @staticmethod
    def _params(profile: ProfileRecord) -> dict[str, Any]:
        return {
            **profile.__dict__,
            "roles": ",".join(profile.roles),
            "preferences": json.dumps(profile.preferences, separators=(",", ":")),
        }
