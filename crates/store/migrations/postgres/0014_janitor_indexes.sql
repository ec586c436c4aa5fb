-- The janitor's deletes find their rows by index. Each picks rows by an OR of conditions; without an
-- index for every arm the planner scans the whole table on every batch (measured with EXPLAIN on a
-- store of 1,000,000 sessions, API keys and refresh families: `SCAN`). The partial indexes hold only
-- the rows where the column is set (revoked, rolled, expiring), so they stay small and cost the
-- writes that set them, nothing else.
CREATE INDEX refresh_families_revoked ON refresh_families (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX api_keys_expires ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX api_keys_revoked ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX api_keys_grace ON api_keys (grace_until) WHERE grace_until IS NOT NULL;
-- Idle sessions: every session has a last_seen_at, moved by the batched activity writes.
CREATE INDEX sessions_last_seen ON sessions (last_seen_at);
