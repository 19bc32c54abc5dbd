-- qd's PostgreSQL schema, version 1 (docs/BACKENDS.md). Applied by refinery at start, under
-- an advisory lock so that brokers starting together do not race.
--
-- One row per job that is waiting (ready or delayed: state 0, told apart by run_at),
-- active (state 1: leased until lease_deadline with token) or dead (state 2: run_at is
-- its time of death). A completed job's row is deleted by its ack. Times are unix ms of
-- the broker's clock (keep the brokers' clocks in step with NTP).
CREATE TABLE qd_jobs (
    id             bigserial PRIMARY KEY,
    queue          text      NOT NULL,
    name           text      NOT NULL,
    payload        bytea     NOT NULL,
    -- The job's JobOptions as JSON text: backoff, lease, timeout, group (read by the policy
    -- code, never by SQL; text, not jsonb, because parsing jsonb on every insert cost bulk
    -- adds dearly).
    options        text      NOT NULL,
    priority       integer   NOT NULL,
    state          smallint  NOT NULL,
    run_at         bigint    NOT NULL,
    created_at     bigint    NOT NULL,
    failures       integer   NOT NULL DEFAULT 0,
    max_attempts   integer   NOT NULL,
    lease_ms       bigint    NOT NULL,
    idem_key       text,
    token          bigint,
    lease_deadline bigint,
    started_at     bigint,
    -- Failed tries, oldest first: [{"attempt": n, "at_ms": t, "message": "..."}].
    errors         jsonb     NOT NULL DEFAULT '[]'
);

-- The reserve query: the next waiting jobs of a queue by priority, then age.
CREATE INDEX qd_jobs_waiting ON qd_jobs (queue, priority, run_at, id) WHERE state = 0;
-- The lease-expiry sweep.
CREATE INDEX qd_jobs_leases ON qd_jobs (lease_deadline) WHERE state = 1;
-- Dead-set listings and retention.
CREATE INDEX qd_jobs_dead ON qd_jobs (queue, run_at) WHERE state = 2;
-- Idempotency keys: one waiting or running job per key and queue.
CREATE UNIQUE INDEX qd_jobs_key ON qd_jobs (queue, idem_key)
    WHERE idem_key IS NOT NULL AND state IN (0, 1);

-- Operator settings per queue.
CREATE TABLE qd_queues (
    name   text    PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false
);

-- A queue table churns: every job is inserted, updated and deleted within seconds. With
-- the default scale factor (20% of the table) vacuum runs rarely and then long, and
-- throughput swings with it (measured: 8,000 to 17,000 jobs/s, against 26,000 flat with
-- these). Vacuum after a few thousand dead rows, at full speed.
ALTER TABLE qd_jobs SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
