-- What this agent holds: files it shares from their original path, files it
-- downloaded, and partial downloads with their verified chunks.
CREATE TABLE local_files (
    file_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    size_bytes       BIGINT NOT NULL,
    mime_type        TEXT NOT NULL,
    chunk_size_bytes BIGINT NOT NULL,
    chunk_hashes     BLOB NOT NULL,
    file_hash        BLOB NOT NULL,
    -- Where chunks are read from: the user's original, our copy, or the .part file.
    path             TEXT NOT NULL,
    -- Where a partial download goes once verified; empty otherwise.
    destination      TEXT NOT NULL DEFAULT '',
    -- 'shared' (user's original, never deleted by us), 'downloaded' or 'partial'.
    kind             TEXT NOT NULL,
    -- Verified chunks, one bit per chunk (services::manifest::Bitfield layout).
    bitfield         BLOB NOT NULL,
    updated_at_ms    BIGINT NOT NULL
);
