-- RFC 9449 §10: an authorization code bound to a DPoP key (the request's `dpop_jkt`, or the key of
-- the proof sent with its pushed request); its redemption needs a proof by that key.
ALTER TABLE oauth_codes ADD COLUMN dpop_jkt TEXT;
