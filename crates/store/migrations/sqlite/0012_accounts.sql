-- Accounts people can trust (issue 15): verified emails, emailed links for verification and password
-- reset (stored as SHA-256 only, single use), upstream identities (Google, GitHub, any OpenID
-- provider) linked to users, and the short-lived state of an upstream sign-in in flight.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;

CREATE TABLE email_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- `verify` or `reset`
    purpose    TEXT NOT NULL,
    -- The address the link was sent to: a link for an address the account no longer has does nothing.
    email_key  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX email_tokens_user ON email_tokens (user_id, purpose, created_at);
CREATE INDEX email_tokens_expires ON email_tokens (expires_at);

CREATE TABLE user_identities (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider      TEXT NOT NULL,
    subject       TEXT NOT NULL,
    email         TEXT,
    -- The upstream's tokens, sealed under the master key, only for providers that ask for them.
    sealed_tokens BLOB,
    created_at    BIGINT NOT NULL,
    last_login_at BIGINT NOT NULL,
    CONSTRAINT user_identities_subject_unique UNIQUE (provider, subject)
);
CREATE INDEX user_identities_user ON user_identities (user_id);

CREATE TABLE upstream_logins (
    state_hash   BLOB PRIMARY KEY,
    provider     TEXT NOT NULL,
    -- SHA-256 of the browser-binding cookie's value.
    browser_hash BLOB NOT NULL,
    return_to    TEXT NOT NULL,
    -- Set when a signed-in user links another identity.
    link_user_id TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX upstream_logins_expires ON upstream_logins (expires_at);
