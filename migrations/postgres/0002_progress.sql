-- jobq on PostgreSQL, schema version 2: progress events (partial output a
-- worker streams to the job's waiting clients), kept so that a client on any
-- node receives them in order and can resume after the last one it saw.

-- The number of the job's last progress event (events count from 1).
alter table jobq_jobs add column progress_seq bigint not null default 0;

-- The newest events of each job (older ones are trimmed); forgotten with
-- their job.
create table jobq_progress (
    job_id uuid   not null references jobq_jobs (id) on delete cascade,
    seq    bigint not null,
    data   bytea  not null,
    primary key (job_id, seq)
);
