-- Heartbeats rewrite last_seen_ms of every online peer about once per
-- heartbeat interval; no index on it means no index entry to move on each.
-- Its only readers alone (the online gauge every 5 s and ListPeers) scan
-- the table, about a millisecond at 10,000 peers.
DROP INDEX IF EXISTS peers_last_seen;
