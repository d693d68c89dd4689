-- One row per successful purchase, written by log_worker from the Redis log list.
-- UNIQUE(activity_id, user_id) backs "one purchase per user" in the database too, and makes
-- the worker's replays after a crash idempotent (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE IF NOT EXISTS seckill_records (
    id                      BIGSERIAL PRIMARY KEY,
    request_id              TEXT        NOT NULL,
    activity_id             BIGINT      NOT NULL,
    user_id                 BIGINT      NOT NULL,
    request_initiation_time TIMESTAMPTZ NOT NULL,
    processed_time          TIMESTAMPTZ NOT NULL,
    cost_ms                 BIGINT      NOT NULL,
    inserted_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT seckill_records_activity_user_key UNIQUE (activity_id, user_id)
);
