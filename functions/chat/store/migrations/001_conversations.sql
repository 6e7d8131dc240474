-- Conversations and messages of the chat function (SQLite and PostgreSQL).
-- Times are epoch seconds; error_json/usage_json hold JSON text.
CREATE TABLE chat_conversations (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    title         TEXT,
    model         TEXT,
    system_prompt TEXT,
    message_seq   INTEGER NOT NULL DEFAULT 0,
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL
);
CREATE INDEX chat_conversations_by_user_updated ON chat_conversations (user_id, updated_at, id);

CREATE TABLE chat_messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES chat_conversations (id),
    seq             INTEGER NOT NULL,
    parent_id       TEXT,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    status          TEXT NOT NULL,
    error_json      TEXT,
    request_id      TEXT UNIQUE,
    model           TEXT,
    usage_json      TEXT,
    finish_reason   TEXT,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    UNIQUE (conversation_id, seq)
);
CREATE INDEX chat_messages_by_conversation_created ON chat_messages (conversation_id, created_at);
