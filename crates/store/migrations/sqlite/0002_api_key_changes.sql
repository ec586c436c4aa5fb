-- Lets every node find the API keys changed (patched, revoked, rolled) since it last looked, so a
-- revocation made on one node is honoured by the others within a second.
CREATE INDEX api_keys_updated ON api_keys (updated_at);
