-- The sales themselves: seckill_admin writes each definition here, and pre-warms its live
-- state into Redis from it (stock, window, per-user limit); `activity restore` rebuilds a
-- lost live state from it and the stored purchases. Times are the sale's window by Redis's
-- clock; `ended_at` is when `activity end` ended it (its `ends_at` became that moment).
CREATE TABLE IF NOT EXISTS activities (
    id             BIGINT      PRIMARY KEY CHECK (id >= 0),
    name           TEXT        NOT NULL DEFAULT '',
    stock          BIGINT      NOT NULL CHECK (stock >= 0),
    added_stock    BIGINT      NOT NULL DEFAULT 0 CHECK (added_stock >= 0),
    starts_at      TIMESTAMPTZ,
    ends_at        TIMESTAMPTZ,
    per_user_limit INTEGER     NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    ended_at       TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- >=: a sale ended before it started (`activity end`) has an empty window.
    CONSTRAINT activities_window CHECK (starts_at IS NULL OR ends_at IS NULL OR ends_at >= starts_at)
);

-- With a per-user limit a user may hold several purchases of a sale: a row per purchase,
-- keyed by its request id (a replayed record is still a no-op), and the limit is checked by
-- `log_worker --verify` (rows per user) and enforced by the purchase script.
ALTER TABLE seckill_records DROP CONSTRAINT IF EXISTS seckill_records_activity_user_key;
ALTER TABLE seckill_records
    ADD CONSTRAINT seckill_records_activity_request_key UNIQUE (activity_id, request_id);
CREATE INDEX IF NOT EXISTS seckill_records_activity_user ON seckill_records (activity_id, user_id);
