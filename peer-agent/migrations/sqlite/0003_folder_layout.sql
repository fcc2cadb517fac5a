-- A held folder's tree (services::manifest::Folder::encode); empty for a
-- single file.
ALTER TABLE local_files ADD COLUMN folder_layout BLOB NOT NULL DEFAULT x'';
