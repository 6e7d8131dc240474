-- Profiles of the users function, keyed by the auth subject (the user id). Times are epoch
-- seconds; preferences are a JSON document validated by the function.
CREATE TABLE users_profiles (
    id TEXT PRIMARY KEY,
    email TEXT,
    display_name TEXT,
    roles TEXT NOT NULL,
    preferences TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

-- Keyset pagination of the admin listing walks (created_at, id).
CREATE INDEX users_profiles_created ON users_profiles (created_at, id);
