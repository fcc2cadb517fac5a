-- Manifest v2: each chunk's BLAKE3 chaining value, concatenated (32 bytes a
-- chunk), so a download resumed after a restart still verifies each chunk
-- and builds the whole-file hash in one pass. Empty for a v1 manifest.
ALTER TABLE local_files ADD COLUMN chunk_chaining_values BLOB NOT NULL DEFAULT x'';
