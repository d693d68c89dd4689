-- Sales with a payment window: a purchase is a reservation until it is paid. The window is
-- part of the sale's definition; each order (its id is the purchase's request id) is a row
-- here with its state and the time of each change, written by log_worker from the events
-- the Redis scripts queue. A state never moves backwards: reserved -> paid or expired, and
-- an upsert that carries an older or equal state changes nothing (replays are harmless).
ALTER TABLE activities
    ADD COLUMN IF NOT EXISTS payment_window_ms BIGINT NOT NULL DEFAULT 0
    CHECK (payment_window_ms >= 0);

CREATE TABLE IF NOT EXISTS orders (
    activity_id BIGINT      NOT NULL,
    order_id    TEXT        NOT NULL,
    user_id     BIGINT      NOT NULL,
    state       TEXT        NOT NULL CHECK (state IN ('reserved', 'paid', 'expired')),
    pay_by      TIMESTAMPTZ NOT NULL,
    reserved_at TIMESTAMPTZ,
    paid_at     TIMESTAMPTZ,
    expired_at  TIMESTAMPTZ,
    -- The payment that paid it.
    payment_id  TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (activity_id, order_id)
);
CREATE INDEX IF NOT EXISTS orders_activity_user ON orders (activity_id, user_id);
