-- Accounts, signing keys, refresh tokens and per-username login failures.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    disabled      BIGINT NOT NULL DEFAULT 0, -- 0 or 1: sqlx Any cannot decode SQLite booleans
    created_at_ms BIGINT NOT NULL
);

-- Ed25519 keys that sign access tokens; the newest signs, all verify.
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    private_key_der BLOB NOT NULL,
    created_at_ms   BIGINT NOT NULL
);

-- Refresh tokens, stored as a BLAKE3 hash only. A family is one login and
-- every token rotated from it; reuse of a rotated token revokes the family.
CREATE TABLE refresh_tokens (
    token_hash    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id     TEXT NOT NULL,
    access_jti    TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    rotated       BIGINT NOT NULL DEFAULT 0 -- 0 or 1
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Login attempts per username in the current window (known usernames or
-- not, so throttling reveals nothing about which accounts exist).
CREATE TABLE login_attempts (
    username        TEXT PRIMARY KEY,
    window_start_ms BIGINT NOT NULL,
    attempts        BIGINT NOT NULL
);
CREATE INDEX login_attempts_window ON login_attempts (window_start_ms);

-- One row whose update serialises changes that could remove the last admin.
CREATE TABLE admin_guard (
    id      BIGINT PRIMARY KEY,
    touched BIGINT NOT NULL
);
INSERT INTO admin_guard (id, touched) VALUES (1, 0);
