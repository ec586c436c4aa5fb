-- Foundation schema. Times are milliseconds since the Unix epoch (BIGINT); secrets we issue are stored
-- only as SHA-256 (BLOB); recoverable secrets are sealed with AES-256-GCM under the master key.

CREATE TABLE users (
    id                 TEXT PRIMARY KEY,
    email              TEXT NOT NULL,
    email_key          TEXT NOT NULL,
    name               TEXT,
    password_hash      TEXT,
    roles              TEXT NOT NULL DEFAULT '',
    disabled_at        BIGINT,
    tokens_valid_after BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    CONSTRAINT users_email_key_unique UNIQUE (email_key)
);
CREATE INDEX users_tokens_valid_after ON users (tokens_valid_after) WHERE tokens_valid_after IS NOT NULL;

CREATE TABLE refresh_families (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id      TEXT NOT NULL,
    scope          TEXT NOT NULL,
    session_id     TEXT,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX refresh_families_user ON refresh_families (user_id);
CREATE INDEX refresh_families_expires ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES refresh_families (id) ON DELETE CASCADE,
    parent_id  TEXT,
    token_hash BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    spent_at   BIGINT,
    revoked_at BIGINT,
    CONSTRAINT refresh_tokens_hash_unique UNIQUE (token_hash)
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_parent ON refresh_tokens (parent_id);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    private_key BLOB NOT NULL,
    public_jwk  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    publish_at  BIGINT NOT NULL,
    activate_at BIGINT NOT NULL,
    retire_at   BIGINT,
    expire_at   BIGINT
);

CREATE TABLE api_keys (
    id                    TEXT PRIMARY KEY,
    owner_id              TEXT REFERENCES users (id) ON DELETE CASCADE,
    prefix                TEXT NOT NULL,
    start                 TEXT NOT NULL,
    key_hash              BLOB NOT NULL,
    name                  TEXT NOT NULL,
    scopes                TEXT NOT NULL,
    meta                  TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    expires_at            BIGINT,
    revoked_at            BIGINT,
    remaining             BIGINT,
    ratelimit_limit       BIGINT,
    ratelimit_duration_ms BIGINT,
    last_used_at          BIGINT,
    rolled_to             TEXT,
    grace_until           BIGINT,
    CONSTRAINT api_keys_hash_unique UNIQUE (key_hash)
);
CREATE INDEX api_keys_owner ON api_keys (owner_id);

CREATE TABLE audit_events (
    id         TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    actor      TEXT,
    subject    TEXT,
    ip         TEXT,
    request_id TEXT,
    data       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (created_at);
CREATE INDEX audit_events_type_time ON audit_events (type, created_at);
CREATE INDEX audit_events_actor_time ON audit_events (actor, created_at);
