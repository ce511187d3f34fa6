-- ckpt:no-transaction
-- 002_indexes: the index the sink's per-step DELETE of local_training_metrics uses.
--
-- CONCURRENTLY builds it without blocking the old callbacks' inserts on a large legacy table,
-- and therefore cannot run inside a transaction: `ckpt-pipeline migrate` runs this file in
-- autocommit (the marker on the first line), and it is alone in its file so that
-- `supabase db push` runs it on its own as well. An interrupted concurrent build leaves an
-- INVALID index that IF NOT EXISTS would keep; `ckpt-pipeline migrate` drops and rebuilds it
-- (by hand: DROP INDEX CONCURRENTLY local_training_metrics_job_step_idx, then rerun this file).
-- Not UNIQUE: the legacy table may hold duplicate (job_id, step) rows, which is why the sink
-- replaces a step's rows with DELETE then INSERT instead of upserting.

CREATE INDEX CONCURRENTLY IF NOT EXISTS local_training_metrics_job_step_idx
    ON local_training_metrics (job_id, step);
