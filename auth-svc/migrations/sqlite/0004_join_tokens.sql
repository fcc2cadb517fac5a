-- Join tokens (EnrollmentService): an admin's credential for an unattended
-- machine, bound to one account, good for `uses` agent certificates until
-- it expires or is revoked. Only a BLAKE3 hash of the secret is stored.
CREATE TABLE join_tokens (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL UNIQUE,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    uses          BIGINT NOT NULL,
    uses_left     BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked       BIGINT NOT NULL DEFAULT 0, -- 0 or 1
    description   TEXT NOT NULL,
    created_by    TEXT NOT NULL, -- the admin's username
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX join_tokens_user ON join_tokens (user_id);
CREATE INDEX join_tokens_created ON join_tokens (created_at_ms);
