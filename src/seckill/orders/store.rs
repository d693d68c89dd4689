//! The `orders` table (migrations/20261130000002_orders.sql): one row per order of a sale
//! with a payment window, written by log_worker from the purchase records (reserved) and the
//! order events (paid, expired). The upsert never moves a state backwards: a row that is paid
//! or expired stays so, whatever arrives later, and a replayed change updates nothing; the
//! times of each change are filled once.

use super::model::{OrderEvent, OrderState};
use crate::common::SeckillRecord;
use crate::postgres::PostgresError;
use sqlx::PgPool;
use std::collections::HashMap;

/// One upsert for every change of a batch (`UNNEST`). `ON CONFLICT DO UPDATE` may touch a
/// row once per statement, so [`OrderChanges`] merges a batch's changes per order first.
const UPSERT_ORDERS: &str = "
INSERT INTO orders (activity_id, order_id, user_id, state, pay_by, reserved_at, paid_at,
                    expired_at, payment_id)
SELECT a, o, u, s, to_timestamp(p / 1000.0), to_timestamp(r / 1000.0),
       to_timestamp(pa / 1000.0), to_timestamp(e / 1000.0), pid
FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[],
            $7::bigint[], $8::bigint[], $9::text[]) AS t(a, o, u, s, p, r, pa, e, pid)
ON CONFLICT (activity_id, order_id) DO UPDATE SET
    state = CASE WHEN orders.state = 'reserved' THEN EXCLUDED.state ELSE orders.state END,
    reserved_at = COALESCE(orders.reserved_at, EXCLUDED.reserved_at),
    paid_at = COALESCE(orders.paid_at, EXCLUDED.paid_at),
    expired_at = COALESCE(orders.expired_at, EXCLUDED.expired_at),
    payment_id = COALESCE(orders.payment_id, EXCLUDED.payment_id),
    updated_at = now()
WHERE (orders.state = 'reserved' AND EXCLUDED.state <> 'reserved')
   OR (orders.reserved_at IS NULL AND EXCLUDED.reserved_at IS NOT NULL)";

/// One order's changes in a batch, merged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderChange {
    activity_id: i64,
    user_id: i64,
    state: OrderState,
    pay_by: i64,
    reserved_at: Option<i64>,
    paid_at: Option<i64>,
    expired_at: Option<i64>,
    payment_id: Option<String>,
}

/// The order changes of one batch of the log list, merged per order.
#[derive(Debug, Default)]
pub struct OrderChanges {
    changes: HashMap<(u64, String), OrderChange>,
}

fn id(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl OrderChanges {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// A purchase record of a sale with a payment window: the order is reserved.
    pub fn reserved(&mut self, record: &SeckillRecord) {
        let Some(pay_by) = record.pay_by else {
            return;
        };
        self.merge(
            record.activity_id,
            &record.request_id,
            OrderChange {
                activity_id: id(record.activity_id),
                user_id: id(record.user_id),
                state: OrderState::Reserved,
                pay_by,
                reserved_at: Some(record.processed_time),
                paid_at: None,
                expired_at: None,
                payment_id: None,
            },
        );
    }

    /// An order event (`kind: order`): the order is paid or expired.
    pub fn changed(&mut self, event: &OrderEvent) {
        let Some(state) = event.state else {
            return;
        };
        let at = Some(event.at);
        self.merge(
            event.activity_id,
            &event.id,
            OrderChange {
                activity_id: id(event.activity_id),
                user_id: id(event.user_id),
                state,
                pay_by: event.pay_by.unwrap_or(event.at),
                reserved_at: None,
                paid_at: at.filter(|_| state == OrderState::Paid),
                expired_at: at.filter(|_| state == OrderState::Expired),
                payment_id: event.payment_id.clone(),
            },
        );
    }

    fn merge(&mut self, activity_id: u64, order_id: &str, change: OrderChange) {
        match self.changes.get_mut(&(activity_id, order_id.to_string())) {
            None => {
                self.changes
                    .insert((activity_id, order_id.to_string()), change);
            }
            Some(known) => {
                // Reserved is the only state that moves on.
                if known.state == OrderState::Reserved {
                    known.state = change.state;
                }
                known.reserved_at = known.reserved_at.or(change.reserved_at);
                known.paid_at = known.paid_at.or(change.paid_at);
                known.expired_at = known.expired_at.or(change.expired_at);
                known.payment_id = known.payment_id.take().or(change.payment_id);
            }
        }
    }

    /// Writes the changes in one statement; returns the rows inserted or moved on.
    pub async fn upsert(&self, pool: &PgPool) -> Result<u64, PostgresError> {
        if self.changes.is_empty() {
            return Ok(0);
        }
        let count = self.changes.len();
        let mut activity = Vec::with_capacity(count);
        let mut order = Vec::with_capacity(count);
        let mut user = Vec::with_capacity(count);
        let mut state = Vec::with_capacity(count);
        let mut pay_by = Vec::with_capacity(count);
        let mut reserved_at = Vec::with_capacity(count);
        let mut paid_at = Vec::with_capacity(count);
        let mut expired_at = Vec::with_capacity(count);
        let mut payment = Vec::with_capacity(count);
        for ((_, order_id), change) in &self.changes {
            activity.push(change.activity_id);
            order.push(order_id.clone());
            user.push(change.user_id);
            state.push(change.state.as_sql());
            pay_by.push(change.pay_by);
            reserved_at.push(change.reserved_at);
            paid_at.push(change.paid_at);
            expired_at.push(change.expired_at);
            payment.push(change.payment_id.clone());
        }
        let result = sqlx::query(UPSERT_ORDERS)
            .bind(&activity)
            .bind(&order)
            .bind(&user)
            .bind(&state)
            .bind(&pay_by)
            .bind(&reserved_at)
            .bind(&paid_at)
            .bind(&expired_at)
            .bind(&payment)
            .execute(pool)
            .await?;
        Ok(result.rows_affected())
    }
}

/// A sale's order rows by state: reserved, paid, expired.
pub async fn orders_by_state(pool: &PgPool, activity_id: u64) -> Result<[i64; 3], PostgresError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM orders WHERE activity_id = $1 GROUP BY state")
            .bind(id(activity_id))
            .fetch_all(pool)
            .await?;
    let mut counts = [0; 3];
    for (state, count) in rows {
        let index = match state.as_str() {
            "reserved" => 0,
            "paid" => 1,
            _ => 2,
        };
        counts[index] = count;
    }
    Ok(counts)
}

/// Users holding more live or paid orders than `limit`.
pub async fn users_over_limit(
    pool: &PgPool,
    activity_id: u64,
    limit: u32,
) -> Result<i64, PostgresError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT user_id FROM orders
             WHERE activity_id = $1 AND state IN ('reserved', 'paid')
             GROUP BY user_id HAVING count(*) > $2) AS over_limit",
    )
    .bind(id(activity_id))
    .bind(i64::from(limit))
    .fetch_one(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seckill::orders::EventKind;

    #[test]
    fn a_batchs_changes_merge_and_never_move_back() {
        let record = SeckillRecord {
            request_id: "o-1".into(),
            user_id: 7,
            activity_id: 3,
            request_initiation_time: 1,
            processed_time: 2,
            cost_ms: 1,
            pay_by: Some(100),
        };
        let expired = OrderEvent {
            kind: EventKind::Order,
            id: "o-1".into(),
            activity_id: 3,
            user_id: 7,
            state: Some(OrderState::Expired),
            order_id: None,
            answer: None,
            at: 101,
            pay_by: Some(100),
            payment_id: None,
        };
        let mut changes = OrderChanges::default();
        changes.changed(&expired);
        changes.reserved(&record);
        assert_eq!(changes.len(), 1);
        let change = &changes.changes[&(3, "o-1".to_string())];
        assert_eq!(change.state, OrderState::Expired);
        assert_eq!(change.reserved_at, Some(2));
        assert_eq!(change.expired_at, Some(101));
        // A record without a deadline is no order.
        changes.reserved(&SeckillRecord {
            pay_by: None,
            request_id: "o-2".into(),
            ..record
        });
        assert_eq!(changes.len(), 1);
    }
}
