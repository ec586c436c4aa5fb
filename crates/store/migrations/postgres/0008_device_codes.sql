-- RFC 8628 device authorization: one row per device_authorization request, looked up by the SHA-256 of
-- the device code (the device's secret) or of the user code (what the person types). `decision` is NULL
-- while pending, then 'approved' or 'denied'; `redeemed_at` makes the code good for one token answer.
-- `polled_fast` records whether the latest poll came sooner than `interval_s` (then slowed by 5 s).
CREATE TABLE oauth_device_codes (
    device_code_hash BYTEA PRIMARY KEY,
    user_code_hash   BYTEA NOT NULL UNIQUE,
    client_id        TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scope            TEXT NOT NULL,
    resources        TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    interval_s       BIGINT NOT NULL,
    last_polled_at   BIGINT,
    polled_fast      BIGINT NOT NULL DEFAULT 0,
    decision         TEXT,
    user_id          TEXT REFERENCES users (id) ON DELETE CASCADE,
    session_id       TEXT,
    decided_at       BIGINT,
    redeemed_at      BIGINT
);
CREATE INDEX oauth_device_codes_expiry ON oauth_device_codes (expires_at);
