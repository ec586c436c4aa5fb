-- Replay protection's fallback while Redis cannot be reached, so that a nonce (RFC 9421 signature,
-- DPoP proof, client assertion) used on one node is still refused on every other. Keyed by SHA-256 of
-- (key id, replay key); a row lives as long as what carried the nonce could verify, and the janitor
-- deletes it after. Unused while Redis answers (and on one node, which keeps its own cache).
CREATE TABLE replay_nonces (
    id BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX replay_nonces_expires ON replay_nonces (expires_at);
