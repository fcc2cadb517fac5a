-- Signing keys rotate (AccountService/RotateSigningKey): the newest key not
-- retired signs; a retired key keeps verifying until every token it signed
-- has expired, then is deleted (see auth-svc/src/keyring.rs).
ALTER TABLE signing_keys ADD COLUMN retired_at_ms BIGINT;

-- Before rotation existed only the newest key signed.
UPDATE signing_keys SET retired_at_ms = (SELECT MAX(created_at_ms) FROM signing_keys)
WHERE created_at_ms < (SELECT MAX(created_at_ms) FROM signing_keys);
