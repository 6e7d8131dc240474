-- Credentials and refresh tokens of the auth function. Times are epoch seconds.
CREATE TABLE auth_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name TEXT,
    roles TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Refresh tokens are stored as sha256 hex digests only. A family is one login: every rotation
-- adds a row to it, and reusing a rotated token revokes the whole family.
CREATE TABLE auth_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES auth_users (id) ON DELETE CASCADE,
    scope TEXT,
    issued_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    rotated_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    access_jti TEXT,
    access_expires_at DOUBLE PRECISION
);

CREATE INDEX auth_refresh_tokens_family ON auth_refresh_tokens (family_id);
CREATE INDEX auth_refresh_tokens_user ON auth_refresh_tokens (user_id);
