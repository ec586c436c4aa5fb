-- OAuth 2.0 / OpenID Connect (API.md "OAuth 2.0 and OpenID Connect").
-- * `oauth_clients`: a registration as JSON (`settings`, checked by core on every write and read), the
--   SHA-256 of its secret (never the secret), and when that secret last changed.
-- * `oauth_codes`: authorization codes, stored by SHA-256, single use: one conditional UPDATE redeems
--   a code, and records which refresh family and access token it produced, so that a replay can
--   revoke them.
-- * `oauth_consents`: the scopes a user granted a client, one row per (user, client).
-- * `revoked_jtis`: access JWTs revoked before their expiry (RFC 7009), polled by every node.
-- * `oauth_access_tokens`: opaque reference tokens (`pat_…`) for clients that want them, by SHA-256.
-- * `refresh_families` gains the audiences and the authentication facts a refresh must carry on.
CREATE TABLE oauth_clients (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    settings          TEXT NOT NULL,
    secret_hash       BLOB,
    secret_changed_at BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE oauth_codes (
    code_hash      BLOB PRIMARY KEY,
    client_id      TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id     TEXT,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scope          TEXT NOT NULL,
    resources      TEXT NOT NULL,
    nonce          TEXT,
    auth_time      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    redeemed_at    BIGINT,
    replayed_at    BIGINT,
    family_id      TEXT,
    access_jti     TEXT,
    access_exp     BIGINT
);
CREATE INDEX oauth_codes_expires ON oauth_codes (expires_at);

CREATE TABLE oauth_consents (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

CREATE TABLE revoked_jtis (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX revoked_jtis_revoked ON revoked_jtis (revoked_at);
CREATE INDEX revoked_jtis_expires ON revoked_jtis (expires_at);

CREATE TABLE oauth_access_tokens (
    token_hash BLOB PRIMARY KEY,
    jti        TEXT NOT NULL,
    client_id  TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    subject    TEXT NOT NULL,
    scope      TEXT NOT NULL,
    audiences  TEXT NOT NULL,
    session_id TEXT,
    family_id  TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX oauth_access_tokens_expires ON oauth_access_tokens (expires_at);
CREATE INDEX oauth_access_tokens_family ON oauth_access_tokens (family_id) WHERE family_id IS NOT NULL;

ALTER TABLE refresh_families ADD COLUMN audiences TEXT;
ALTER TABLE refresh_families ADD COLUMN auth_time BIGINT;
CREATE INDEX refresh_families_session ON refresh_families (session_id) WHERE session_id IS NOT NULL;
