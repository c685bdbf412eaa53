-- jobq embedded store, schema version 3.
-- Small inputs (payload and headers together at most 1 KiB) are kept in the
-- job row itself: one row insert per submit instead of two, one page fewer
-- per commit. Larger ones stay in `inputs`, so that loading the job rows at
-- start-up does not read big payloads. Both columns are NULL when the input
-- is in `inputs`, and are emptied (NULL) when the job ends.
ALTER TABLE jobs ADD COLUMN payload BLOB;
ALTER TABLE jobs ADD COLUMN headers BLOB;
