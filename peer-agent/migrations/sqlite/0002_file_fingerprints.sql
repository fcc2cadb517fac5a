-- What each held file looked like on disk when it was recorded (size,
-- modification time in nanoseconds, inode), so the agent notices a copy the
-- user deleted, moved or edited. -1 / 0: not recorded (rows from before this
-- migration, and partial downloads, whose .part file changes as it grows).
ALTER TABLE local_files ADD COLUMN file_size_bytes BIGINT NOT NULL DEFAULT -1;
ALTER TABLE local_files ADD COLUMN file_mtime_ns BIGINT NOT NULL DEFAULT 0;
ALTER TABLE local_files ADD COLUMN file_inode BIGINT NOT NULL DEFAULT 0;
