-- Heartbeats rewrite last_seen_ms and the load columns of every online
-- peer about once per heartbeat interval (2,000 rows/s at 10,000 agents).
-- With no index on any of those columns and free room on each page,
-- PostgreSQL updates the row in place (a HOT update) and touches no index.
-- The only readers of last_seen_ms alone (the online gauge every 5 s and
-- ListPeers) scan the table, which at 10,000 peers costs about a millisecond.
DROP INDEX IF EXISTS peers_last_seen;
ALTER TABLE peers SET (fillfactor = 50);
ALTER TABLE holdings SET (fillfactor = 70);
