-- Sorted, filtered pages of the file list (ListFiles sort, owner and kind).
--
-- holder_count is the number of holdings that show as holders (complete,
-- or at least one chunk), whether or not the holder is online: it is
-- maintained in the same transaction as every holding change, so sorting
-- by holders reads a column instead of counting holders of every file.
-- Online counts are still computed, for the rows of one page only.
ALTER TABLE files ADD COLUMN holder_count BIGINT NOT NULL DEFAULT 0;
UPDATE files SET holder_count = (
    SELECT COUNT(*) FROM holdings h
    WHERE h.file_id = files.file_id AND (h.complete = 1 OR h.chunks_held > 0));

-- One index per order; ties are broken by file id in the same direction,
-- so either direction is one index scan (forwards or backwards).
DROP INDEX IF EXISTS files_listing;
CREATE INDEX files_by_added ON files (added_at_ms, file_id);
CREATE INDEX files_by_name ON files (name_folded, file_id);
CREATE INDEX files_by_size ON files (size_bytes, file_id);
CREATE INDEX files_by_holders ON files (holder_count, file_id);
-- "Everything Ann shared", newest first, and its count.
CREATE INDEX files_by_owner ON files (owner_name, added_at_ms, file_id);
