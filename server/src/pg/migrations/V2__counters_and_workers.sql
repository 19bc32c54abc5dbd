-- qd's PostgreSQL schema, version 2 (docs/BACKENDS.md): what the admin views need beyond
-- the hot path.
--
-- The `_total` counters of each queue, shared by every broker. Brokers count in memory
-- and add their counts here about once a second (one statement for all queues), so
-- adds and acks never wait on a counter row.
CREATE TABLE qd_counters (
    queue     text   PRIMARY KEY,
    added     bigint NOT NULL DEFAULT 0,
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    dead      bigint NOT NULL DEFAULT 0
);

-- The client name of the connection holding an active job, written by the broker that
-- delivered it once the lease has lasted a moment (most jobs are acked before, and cost
-- nothing). Shown only while `worker_token` is the row's current lease token, so a name
-- never outlives its lease.
ALTER TABLE qd_jobs ADD COLUMN worker text, ADD COLUMN worker_token bigint;
