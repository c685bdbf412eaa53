-- jobq on PostgreSQL, schema version 1: one row per job.
-- Times are bigint microseconds since the Unix epoch (UTC), taken from the
-- clock of the node that made the change (nodes need synchronised clocks).

create table jobq_jobs (
    id               uuid    primary key,
    -- Arrival order: the tie-breaker between equal priorities. A retried or
    -- rescued job keeps its seq, so it keeps its place in the queue.
    seq              bigint  generated always as identity,
    queue            text    not null,
    payload          bytea   not null,
    -- The submit request's filtered headers, as the JSON object text the
    -- server produced (kept as bytes so they reach workers byte for byte).
    headers          bytea   not null,
    priority         integer not null,
    status           text    not null
        check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
    attempts         integer not null default 0,
    created_at       bigint  not null,
    started_at       bigint,
    ended_at         bigint,
    lease_id         uuid,
    lease_expires_at bigint,
    result           bytea,
    error            text,
    idem_key         text    unique,
    idem_fingerprint bytea
);

-- Hand-out order inside a queue: highest priority, then oldest.
create index jobq_jobs_pending on jobq_jobs (queue, priority desc, seq)
    where status = 'pending';
-- The rescuer's scan of expired leases.
create index jobq_jobs_leases on jobq_jobs (lease_expires_at)
    where status = 'running';
-- Purging after --result-ttl.
create index jobq_jobs_ended on jobq_jobs (ended_at)
    where status in ('completed', 'failed', 'cancelled');
-- Listing, newest first.
create index jobq_jobs_created on jobq_jobs (created_at desc, seq desc);
