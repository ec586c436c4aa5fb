-- Hardening (security review):
-- * `owner_meta`: what a key's owner writes about it, kept apart from `meta`, which only
--   administrators write, so that verify never returns an owner's words as if an operator wrote them.
-- * `ratelimit_bucket`: the key whose rate-limit state this key spends. A key created by a
--   rate-limited key shares its creator's bucket, so making more keys never multiplies the rate.
-- * Users are polled by `updated_at` so that a change on one node (disable, role) reaches the others
--   within a second.
ALTER TABLE api_keys ADD COLUMN owner_meta TEXT;
ALTER TABLE api_keys ADD COLUMN ratelimit_bucket TEXT;
CREATE INDEX api_keys_rolled_to ON api_keys (rolled_to) WHERE rolled_to IS NOT NULL;
CREATE INDEX users_updated ON users (updated_at);
CREATE INDEX signing_keys_expire ON signing_keys (expire_at) WHERE expire_at IS NOT NULL;
