-- RFC 7591 / 7592 dynamic registrations: the registration access token (SHA-256) that lets a client
-- read, replace and delete its own registration, and the metadata it registered, echoed back as
-- RFC 7591 §3.2.1 says. The client itself is an ordinary oauth_clients row.
CREATE TABLE oauth_client_registrations (
    client_id  TEXT PRIMARY KEY REFERENCES oauth_clients (id) ON DELETE CASCADE,
    token_hash BYTEA NOT NULL UNIQUE,
    metadata   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
