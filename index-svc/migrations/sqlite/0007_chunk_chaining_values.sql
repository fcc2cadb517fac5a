-- Manifest v2: each chunk's BLAKE3 chaining value, 32 bytes each in order
-- (see Manifest.chunk_chaining_values in index.proto). NULL for manifests
-- published without them (v1), which keep working.
ALTER TABLE files ADD COLUMN chunk_chaining_values BLOB;
