-- Keys for HTTP message signatures (RFC 9421). `key_material` is, for hmac-sha256, the secret sealed
-- with AES-256-GCM under the master key (it must be recoverable to verify); for ed25519 the raw 32-byte
-- public key. `owner_id` is NULL for keys an administrator made for no user.
CREATE TABLE signature_keys (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    alg          TEXT NOT NULL,
    key_material BLOB NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX signature_keys_owner ON signature_keys (owner_id, id);
CREATE INDEX signature_keys_revoked ON signature_keys (revoked_at) WHERE revoked_at IS NOT NULL;
