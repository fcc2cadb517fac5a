-- A counter bumped whenever the set of files, or what a listing filter
-- matches in them (name, owner, kind), changes. A replica keeps the counted
-- totals of ListFiles for the generation it counted them in, so a total is
-- counted again only after such a change, through whichever replica (or
-- older binary) made it: triggers keep the counter, not the code.
CREATE TABLE files_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO files_generation (id, generation) VALUES (1, 0);

CREATE FUNCTION bump_files_generation() RETURNS trigger AS $$
BEGIN
    UPDATE files_generation SET generation = generation + 1 WHERE id = 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER files_generation_on_change
    AFTER INSERT OR DELETE OR UPDATE OF name, name_folded, owner_name, kind ON files
    FOR EACH STATEMENT EXECUTE FUNCTION bump_files_generation();
