-- RFC 9126 pushed authorization requests: the parameters a client pushed, looked up by the SHA-256 of
-- the request_uri's random part and its client. A request is good for 60 s until its first use at
-- /oauth2/authorize (opened_at), which gives the person time to log in and consent (a reload reads it
-- again, as RFC 9126 §4 allows); issuing a code or the user's denial spends it (used_at), once.
CREATE TABLE oauth_par_requests (
    request_hash BLOB PRIMARY KEY,
    client_id    TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    params       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    opened_at    BIGINT,
    used_at      BIGINT
);
CREATE INDEX oauth_par_requests_expiry ON oauth_par_requests (expires_at);

-- RFC 9449 DPoP: the JWK thumbprint a token is bound to. A public client's refresh tokens are bound for
-- their family's life (§5); opaque access tokens keep their binding here (JWTs carry cnf.jkt).
ALTER TABLE refresh_families ADD COLUMN dpop_jkt TEXT;
ALTER TABLE oauth_access_tokens ADD COLUMN dpop_jkt TEXT;
