-- The clients that redeemed a code in a browser session, so that its logout can tell each of them
-- (OpenID Connect Back-Channel Logout), refresh token or not. Rows of ended sessions are purged.
CREATE TABLE oauth_session_clients (
    session_id TEXT NOT NULL,
    client_id  TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, client_id)
);
