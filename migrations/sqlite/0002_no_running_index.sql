-- jobq embedded store, schema version 2.
-- Start-up reads every job row anyway and returns running jobs to pending
-- in memory (a row says `running` until the job's next change is written),
-- so the partial index on running jobs only cost every hand-out and
-- completion an index write.
DROP INDEX IF EXISTS jobs_running;
