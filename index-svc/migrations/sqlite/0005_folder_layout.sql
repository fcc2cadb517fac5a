-- A folder's tree (services::manifest::Folder::encode: paths, sizes, file
-- hashes, empty folders); empty for a single file.
ALTER TABLE files ADD COLUMN folder_layout BLOB NOT NULL DEFAULT x'';
