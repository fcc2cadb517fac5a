-- The index gets a database of its own (auth-svc uses POSTGRES_DB, p2p_auth):
-- each service keeps its own migration history.
CREATE DATABASE p2p_index OWNER p2p;
