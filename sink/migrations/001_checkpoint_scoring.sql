-- 001_checkpoint_scoring: the columns and tables the checkpoint-scoring sink writes.
--
-- Safe on a live (Supabase) database:
--   * purely additive: CREATE ... IF NOT EXISTS and ADD COLUMN IF NOT EXISTS only. Nothing is
--     dropped, renamed or retyped; a column or table that already exists is left as it is
--     (in the platform's legacy tables local_training_metrics.job_id may be uuid, and stays so);
--   * idempotent: running it again, or again after a partial failure, is a no-op;
--   * cheap: ADD COLUMN without a default changes only the catalog (no table rewrite). It
--     still takes a brief ACCESS EXCLUSIVE lock, so lock_timeout makes it give up (and be
--     rerun) rather than queue behind a long transaction while the dashboard's reads queue
--     behind it.
-- It runs in one transaction (`ckpt-pipeline migrate`, `supabase db push`, or the SQL editor).
-- The index on local_training_metrics is in 002_indexes.sql: it is built CONCURRENTLY,
-- which cannot run inside a transaction.
-- On Supabase, tables created here have row level security off: enable it and add the
-- policies the dashboard needs (the sink uses the service role, which bypasses RLS).
--
-- The ADD COLUMN lists mirror sink/rows.py JOB_COLUMNS and METRIC_COLUMNS with their types;
-- tests/test_writers.py fails if they drift apart.

-- Give up on a lock after 5 s, unless the caller already chose a limit (as
-- `ckpt-pipeline migrate` does); transaction-scoped, so it ends with this migration.
SELECT set_config('lock_timeout', '5s', true) WHERE current_setting('lock_timeout') = '0';

CREATE TABLE IF NOT EXISTS local_training_jobs (
    id uuid PRIMARY KEY,
    user_id uuid,
    model_name text NOT NULL DEFAULT '',
    dataset_path text,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    job_token text,
    config jsonb,
    error_message text,
    started_at timestamptz,
    completed_at timestamptz,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz,
    metadata jsonb DEFAULT '{}'::jsonb
);

ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS status text;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS current_step integer;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS current_epoch double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS total_steps integer;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS total_epochs double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS progress double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS loss double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS eval_loss double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS learning_rate double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS grad_norm double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS perplexity double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS train_perplexity double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_eval_loss double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_epoch double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_step integer;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_checkpoint_score double precision;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_checkpoint_step integer;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_checkpoint_epoch integer;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_checkpoint_path text;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS epochs_without_improvement integer;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS loss_trend text;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS error_message text;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS started_at timestamptz;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS completed_at timestamptz;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS updated_at timestamptz;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS scoring_version bigint;
ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS best_score_breakdown jsonb;

CREATE TABLE IF NOT EXISTS local_training_metrics (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    step integer NOT NULL
);

ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS job_id text;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS step integer;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS epoch double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS train_loss double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS eval_loss double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS learning_rate double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS grad_norm double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS perplexity double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS train_perplexity double precision;
ALTER TABLE local_training_metrics ADD COLUMN IF NOT EXISTS "timestamp" timestamptz;
