-- jobq embedded store, schema version 1.
-- One row per job not yet forgotten. Times are microseconds since the Unix
-- epoch (UTC); ids are UUIDs as 16-byte blobs.
--
-- Rows are keyed by `seq`, the job's arrival number, which jobq assigns in
-- increasing order: new rows go to the end of the table instead of random
-- pages of a UUID index, so a commit writes few pages. Nothing is looked up
-- by id on disk (the in-memory index has every job), so `id` has no index,
-- and idempotency keys are kept unique in memory.
CREATE TABLE jobs (
    seq         INTEGER PRIMARY KEY,
    id          BLOB    NOT NULL,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('pending','running','completed','failed','cancelled')),
    attempts    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    ended_at    INTEGER,
    lease_id    BLOB,
    result      BLOB,
    error       TEXT,
    idem_key    TEXT,
    idem_fp     BLOB
);
-- Start-up returns running jobs to pending without scanning the table.
CREATE INDEX jobs_running ON jobs (status) WHERE status = 'running';

-- The input of jobs that have not ended, apart from the job rows so that
-- loading the jobs at start-up does not read every payload. Same `seq`.
CREATE TABLE inputs (
    seq         INTEGER PRIMARY KEY,
    payload     BLOB    NOT NULL,
    headers     BLOB    NOT NULL              -- JSON object text
);
