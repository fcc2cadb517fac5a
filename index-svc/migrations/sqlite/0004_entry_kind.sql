-- Whether an entry is a single file (0) or a folder (1), and how many files
-- a folder holds. Rows from before this migration are single files.
ALTER TABLE files ADD COLUMN kind BIGINT NOT NULL DEFAULT 0;
ALTER TABLE files ADD COLUMN entry_count BIGINT NOT NULL DEFAULT 0;
