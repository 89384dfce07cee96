-- Several providers on one database (issue 16): state that used to live in one process.

-- The version of a worker's circuit map (its ETag), bumped in the transaction of every change
-- to the worker's circuits or their routes, whichever provider made it.
ALTER TABLE workers ADD COLUMN map_version BIGINT NOT NULL DEFAULT 0;

-- Ingest health from the worker's last heartbeat: the reaper (on the leader) trusts activity
-- data only when it is fresh, and heartbeats reach any provider.
ALTER TABLE workers ADD COLUMN ingest_reported_at BIGINT;
ALTER TABLE workers ADD COLUMN ingest_redis_ok BIGINT;
ALTER TABLE workers ADD COLUMN ingest_last_flush BIGINT;

-- Circuits that recently left a worker (deleted, reclaimed, moved away), listed in its map for
-- a minute so that its authgate cuts their connections. `ended` is the wire `EndedCircuit`.
CREATE TABLE ended_circuits (
    worker_id  TEXT NOT NULL,
    circuit_id TEXT NOT NULL,
    ended      TEXT NOT NULL,
    ended_at   BIGINT NOT NULL
);
CREATE INDEX ended_circuits_worker ON ended_circuits (worker_id, ended_at);

-- Replica health as each worker's Traefik reports it (`PUT /api/worker/{id}/route-health`),
-- the last report per worker: `report` is the wire `RouteHealthReport.circuits`.
CREATE TABLE route_health (
    worker_id   TEXT PRIMARY KEY,
    report      TEXT NOT NULL,
    reported_at BIGINT NOT NULL
);
