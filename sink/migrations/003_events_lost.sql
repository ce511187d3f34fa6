-- 003_events_lost: how many events the job's producers dropped and reported (events_lost).
--
-- A producer drops events only when it can neither send nor keep them (its memory queue is
-- full while Redis is unreachable and its spool disk is full or failing); it then reports
-- the count, and the row says how many events the checkpoint pick was computed without.
--
-- Safe on a live (Supabase) database, like 001: additive and idempotent (ADD COLUMN IF NOT
-- EXISTS), and cheap: since PostgreSQL 11 a constant DEFAULT is stored in the catalog, so
-- NOT NULL DEFAULT 0 fills the existing rows without rewriting the table. The brief ACCESS
-- EXCLUSIVE lock is bounded by lock_timeout, as in 001. It runs in one transaction.
--
-- The column mirrors sink/rows.py JOB_COLUMNS (events_lost, integer, default 0);
-- tests/test_writers.py fails if they drift apart.

SELECT set_config('lock_timeout', '5s', true) WHERE current_setting('lock_timeout') = '0';

ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS events_lost integer NOT NULL DEFAULT 0;
