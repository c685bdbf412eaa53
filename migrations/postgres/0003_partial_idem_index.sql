-- jobq on PostgreSQL, schema version 3: the idempotency key's unique index
-- covers only the jobs that have a key. A B-tree indexes NULLs too, so the
-- full index took an entry from every row version of every job (a job is
-- written three times: submit, hand-out, end), most of which have no key.
create unique index jobq_jobs_idem_key on jobq_jobs (idem_key) where idem_key is not null;
alter table jobq_jobs drop constraint jobq_jobs_idem_key_key;
