"""SQL for auth's two tables, over the shared ``Database`` interface (SQLite or PostgreSQL)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.storage.relational import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str
    password_hash: str
    display_name: str | None
    roles: tuple[str, ...]
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "UserRecord":
        return cls(
            id=row["id"],
            email=row["email"],
            password_hash=row["password_hash"],
            display_name=row["display_name"],
            roles=tuple(role for role in row["roles"].split(",") if role),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
        )


@dataclass(frozen=True)
class RefreshRecord:
    token_hash: str
    family_id: str
    user_id: str
    scope: str | None
    issued_at: float
    expires_at: float
    rotated_at: float | None
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RefreshRecord":
        return cls(**{field: row[field] for field in cls.__dataclass_fields__})


class SqlAuthStore:
    """Users' credentials and refresh-token families."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def migrate(self) -> list[str]:
        return self.db.migrate("auth", MIGRATIONS_DIR)

    # -- users -------------------------------------------------------------------------------
    def insert_user(self, user: UserRecord) -> None:
        """Raises ``ConflictError`` when the email is taken (unique constraint)."""
        self.db.execute(
            "INSERT INTO auth_users (id, email, password_hash, display_name, roles, created_at, updated_at)"
            " VALUES (:id, :email, :password_hash, :display_name, :roles, :created_at, :updated_at)",
            {**user.__dict__, "roles": ",".join(user.roles)},
        )

    def user_by_email(self, email: str) -> UserRecord | None:
        row = self.db.fetch_one("SELECT * FROM auth_users WHERE email = :email", {"email": email})
        return UserRecord.from_row(row) if row else None

    def user_by_id(self, user_id: str) -> UserRecord | None:
        row = self.db.fetch_one("SELECT * FROM auth_users WHERE id = :id", {"id": user_id})
        return UserRecord.from_row(row) if row else None

    def update_password_hash(self, user_id: str, password_hash: str, now: float) -> None:
        self.db.execute(
            "UPDATE auth_users SET password_hash = :hash, updated_at = :now WHERE id = :id",
            {"hash": password_hash, "now": now, "id": user_id},
        )

    # -- refresh tokens ----------------------------------------------------------------------
    def insert_refresh(self, record: RefreshRecord, access_jti: str, access_expires_at: float) -> None:
        self.db.execute(
            "INSERT INTO auth_refresh_tokens (token_hash, family_id, user_id, scope, issued_at, expires_at,"
            " rotated_at, revoked_at, access_jti, access_expires_at) VALUES (:token_hash, :family_id, :user_id,"
            " :scope, :issued_at, :expires_at, NULL, NULL, :access_jti, :access_expires_at)",
            {**record.__dict__, "access_jti": access_jti, "access_expires_at": access_expires_at},
        )

    def refresh_by_hash(self, token_hash: str) -> RefreshRecord | None:
        row = self.db.fetch_one("SELECT * FROM auth_refresh_tokens WHERE token_hash = :h", {"h": token_hash})
        return RefreshRecord.from_row(row) if row else None

    def mark_rotated(self, token_hash: str, now: float) -> bool:
        """Claim a refresh token for rotation; ``False`` when it was already used or revoked
        (the conditional UPDATE makes two concurrent uses race safely: only one wins)."""
        return (
            self.db.execute(
                "UPDATE auth_refresh_tokens SET rotated_at = :now"
                " WHERE token_hash = :h AND rotated_at IS NULL AND revoked_at IS NULL",
                {"now": now, "h": token_hash},
            )
            == 1
        )

    def revoke_family(self, family_id: str, now: float) -> list[tuple[str, float]]:
        """Revoke every token of a family; returns the (jti, exp) of access tokens it issued."""
        self.db.execute(
            "UPDATE auth_refresh_tokens SET revoked_at = :now WHERE family_id = :f AND revoked_at IS NULL",
            {"now": now, "f": family_id},
        )
        rows = self.db.fetch_all(
            "SELECT access_jti, access_expires_at FROM auth_refresh_tokens"
            " WHERE family_id = :f AND access_jti IS NOT NULL AND access_expires_at > :now",
            {"f": family_id, "now": now},
        )
        return [(row["access_jti"], float(row["access_expires_at"])) for row in rows]
