-- The name as the filter compares it, folded in Rust (listing::fold_name)
-- rather than with the database's LOWER, which folds ASCII only on SQLite
-- and follows the locale on PostgreSQL. Written with every new file; rows
-- from before this migration are filled in by index-svc at start-up
-- (Store::open), since SQL cannot run Rust's folding.
ALTER TABLE files ADD COLUMN name_folded TEXT;
