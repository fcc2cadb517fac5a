-- Login throttling counts failures only, per (username, client address)
-- and per client address, instead of every attempt per username (see
-- auth-svc/src/throttle.rs). Usernames are stored whether or not an account
-- has them, so throttling reveals nothing about which accounts exist.
DROP TABLE login_attempts;

CREATE TABLE login_failures (
    username        TEXT NOT NULL,
    address         TEXT NOT NULL, -- IPv4 address or IPv6 /64
    failures        BIGINT NOT NULL,
    last_failure_ms BIGINT NOT NULL,
    PRIMARY KEY (username, address)
);
CREATE INDEX login_failures_last ON login_failures (last_failure_ms);

CREATE TABLE address_login_failures (
    address         TEXT PRIMARY KEY,
    failures        BIGINT NOT NULL,
    last_failure_ms BIGINT NOT NULL
);
CREATE INDEX address_login_failures_last ON address_login_failures (last_failure_ms);
