-- The index: peers with their lease and load, files with their manifest,
-- holdings (which peer has which chunks), reports against sources, and the
-- change log WatchFiles streams from. Times are Unix milliseconds.

CREATE TABLE peers (
    peer_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    advertise_addr TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    registered_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    active_uploads BIGINT NOT NULL,
    max_uploads BIGINT NOT NULL,
    upload_rate_bps BIGINT NOT NULL,
    max_upload_rate_bps BIGINT NOT NULL,
    uploaded_bytes_last_60s BIGINT NOT NULL,
    free_disk_bytes BIGINT NOT NULL,
    UNIQUE (user_id, advertise_addr)
);
CREATE INDEX peers_last_seen ON peers (last_seen_ms);

CREATE TABLE files (
    file_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    mime_type TEXT NOT NULL,
    chunk_size_bytes BIGINT NOT NULL,
    chunk_count BIGINT NOT NULL,
    chunk_hashes BYTEA NOT NULL,
    file_hash BYTEA NOT NULL,
    owner_id TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL
);
CREATE INDEX files_listing ON files (added_at_ms DESC, file_id);

CREATE TABLE holdings (
    file_id TEXT NOT NULL REFERENCES files (file_id) ON DELETE CASCADE,
    peer_id TEXT NOT NULL REFERENCES peers (peer_id) ON DELETE CASCADE,
    complete BIGINT NOT NULL,
    bitfield BYTEA NOT NULL,
    chunks_held BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (file_id, peer_id)
);
CREATE INDEX holdings_peer ON holdings (peer_id);

CREATE TABLE source_reports (
    report_id BIGSERIAL PRIMARY KEY,
    source_peer_id TEXT NOT NULL,
    reporter_peer_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    reported_at_ms BIGINT NOT NULL
);
CREATE INDEX source_reports_recent ON source_reports (source_peer_id, reported_at_ms);
CREATE INDEX source_reports_age ON source_reports (reported_at_ms);

CREATE TABLE file_events (
    seq BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    file_id TEXT NOT NULL,
    name TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX file_events_age ON file_events (at_ms);
