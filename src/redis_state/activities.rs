//! An activity's live state in Redis: written when the sale is created ("pre-warmed"), or
//! reset by the quick path (`server_kafka --initial-stock`), changed mid-sale (add stock,
//! end now), rebuilt after it was lost (restore), and read back in one round trip
//! ([`ActivitySnapshot`]). Each change is one script on the activity's slot, so it is atomic
//! with the purchases.

use super::keys::{DECIDED_MARKER, META_ENDS_AT, META_LIMIT, META_PAYMENT_WINDOW, META_STARTS_AT};
use super::purchase::{
    decision_of, OUTCOME_ALREADY_BOUGHT, OUTCOME_ENDED, OUTCOME_NOT_STARTED, OUTCOME_SOLD_OUT,
};
use super::{ActivityKeys, RedisState, RedisStateError, ACTIVITY_REGISTRY};
use crate::common::SeckillOutcome;
use std::fmt;

/// What the live state of a sale holds of its definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveActivity {
    pub activity_id: u64,
    /// Stock at creation.
    pub stock: u64,
    /// Opens then (ms since the epoch, Redis's clock); 0: open from the start.
    pub starts_at_ms: i64,
    /// Ends then; 0: no end.
    pub ends_at_ms: i64,
    /// Purchases one user may hold.
    pub per_user_limit: u32,
    /// Time to pay for a purchase (ms) before it expires and its unit goes back on sale;
    /// 0: a purchase is final.
    pub payment_window_ms: u64,
}

impl LiveActivity {
    /// A sale open now, without end, one purchase per user: what the quick path makes.
    pub fn open(activity_id: u64, stock: u64) -> Self {
        Self {
            activity_id,
            stock,
            starts_at_ms: 0,
            ends_at_ms: 0,
            per_user_limit: 1,
            payment_window_ms: 0,
        }
    }
}

/// Where a sale stands, by Redis's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleState {
    /// No live state in Redis.
    Missing,
    NotStarted,
    Open,
    SoldOut,
    Ended,
}

impl SaleState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotStarted => "not_started",
            Self::Open => "open",
            Self::SoldOut => "sold_out",
            Self::Ended => "ended",
        }
    }
}

impl fmt::Display for SaleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one activity, read in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActivitySnapshot {
    pub initial_stock: Option<i64>,
    /// Stock added since creation.
    pub added_stock: i64,
    /// Remaining; `None` when the activity has no live state.
    pub stock: Option<i64>,
    pub success: i64,
    pub over: bool,
    /// Users holding at least one purchase.
    pub buyers: u64,
    /// Distinct request ids the script has decided (every answer except TIMEOUT).
    pub requests_seen: u64,
    /// Request ids decided so (SUCCESS: `success`).
    pub sold_out: u64,
    pub already_bought: u64,
    pub not_started: u64,
    pub ended: u64,
    pub queued_records: u64,
    /// Records taken by log_workers and not yet stored, over every worker's list.
    pub processing_records: u64,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub per_user_limit: u32,
    /// 0: purchases are final.
    pub payment_window_ms: u64,
    /// Orders by state (sales with a payment window).
    pub reserved: i64,
    pub paid: i64,
    pub expired: i64,
    /// Live reservations waiting in the deadlines set (= `reserved`).
    pub deadlines: u64,
    /// Payments applied, by answer (in `PaymentAnswer::ALL` order).
    pub payments: [u64; 4],
    /// Redis's clock when this was read.
    pub redis_time_ms: i64,
}

impl ActivitySnapshot {
    /// Where the sale stands at the time of the snapshot.
    pub fn state(&self) -> SaleState {
        match self.stock {
            None => SaleState::Missing,
            Some(_) if self.redis_time_ms < self.starts_at_ms => SaleState::NotStarted,
            Some(_) if self.ends_at_ms > 0 && self.redis_time_ms >= self.ends_at_ms => {
                SaleState::Ended
            }
            Some(stock) if stock <= 0 => SaleState::SoldOut,
            Some(_) => SaleState::Open,
        }
    }

    /// Stock the sale had in all: initial plus added.
    pub fn total_stock(&self) -> i64 {
        self.initial_stock.unwrap_or(0) + self.added_stock
    }

    /// Units held by buyers: reserved + paid with a payment window, else every purchase.
    pub fn held_units(&self) -> i64 {
        if self.payment_window_ms > 0 {
            self.reserved + self.paid
        } else {
            self.success
        }
    }
}

/// How a restore ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The sale is live again with this remaining stock.
    Restored { remaining: i64 },
    /// The sale has live state: nothing was changed.
    StateExists,
    /// Records wait in the log list, not yet in PostgreSQL: store them first.
    RecordsQueued,
}

/// Purchases written per restore call.
const RESTORE_CHUNK: usize = 1_000;

impl RedisState {
    /// The quick path: resets `activity_id` to a fresh, open sale of `stock` (one purchase
    /// per user, no end) and registers it. Records still queued from an earlier run are
    /// dropped with the rest of that run's state; callers drain log_worker first when they
    /// need them.
    pub async fn init_state(&self, activity_id: u64, stock: u64) -> Result<(), RedisStateError> {
        self.reset_activity(&LiveActivity::open(activity_id, stock))
            .await
    }

    /// Resets an activity to a fresh sale as `activity` defines it (every key of it,
    /// processing lists and leases included), in one script, and registers it.
    pub async fn reset_activity(&self, activity: &LiveActivity) -> Result<(), RedisStateError> {
        let keys = ActivityKeys::new(activity.activity_id);
        let mut connection = self.connection().await?;
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&keys.log_workers)
            .query_async(&mut connection)
            .await?;
        let mut all: Vec<String> = vec![
            keys.meta.clone(),
            keys.stock.clone(),
            keys.initial_stock.clone(),
            keys.added_stock.clone(),
            keys.success.clone(),
            keys.decided.clone(),
        ];
        for key in keys.fixed() {
            if !all.iter().any(|k| k == key) {
                all.push(key.to_string());
            }
        }
        for worker in &workers {
            all.push(keys.processing(worker));
            all.push(keys.lease(worker));
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let _: i64 = self
            .scripts
            .activity_reset
            .call(&all)
            .arg(activity.stock)
            .arg(activity.starts_at_ms)
            .arg(activity.ends_at_ms)
            .arg(activity.per_user_limit)
            .arg(activity.payment_window_ms)
            .invoke(&mut connection)
            .await?;
        self.register(activity.activity_id).await?;
        if activity.payment_window_ms > 0 {
            self.register_windowed(activity.activity_id).await?;
        }
        Ok(())
    }

    /// Pre-warms a new sale's live state and registers it. `false`: the activity has live
    /// state already, and nothing changed.
    pub async fn create_activity(&self, activity: &LiveActivity) -> Result<bool, RedisStateError> {
        let keys = ActivityKeys::new(activity.activity_id);
        let mut connection = self.connection().await?;
        let written: i64 = self
            .scripts
            .activity_create
            .call(&[
                &keys.meta,
                &keys.stock,
                &keys.initial_stock,
                &keys.added_stock,
                &keys.success,
                &keys.over,
                &keys.holdings,
                &keys.decided,
                &keys.outcome_counts,
                &keys.orders,
                &keys.deadlines,
                &keys.order_counts,
                &keys.payments,
            ])
            .arg(activity.stock)
            .arg(activity.starts_at_ms)
            .arg(activity.ends_at_ms)
            .arg(activity.per_user_limit)
            .arg(activity.payment_window_ms)
            .invoke(&mut connection)
            .await?;
        if written == 1 {
            self.register(activity.activity_id).await?;
            if activity.payment_window_ms > 0 {
                self.register_windowed(activity.activity_id).await?;
            }
        }
        Ok(written == 1)
    }

    /// Adds `units` to a live sale's stock (a sold-out sale re-opens). Returns the remaining
    /// stock after it, or `None` when the sale has no live state.
    pub async fn add_stock(
        &self,
        activity_id: u64,
        units: u64,
    ) -> Result<Option<i64>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let remaining: i64 = self
            .scripts
            .activity_add_stock
            .call(&[&keys.stock, &keys.added_stock, &keys.over])
            .arg(units)
            .invoke(&mut connection)
            .await?;
        Ok((remaining != -1).then_some(remaining))
    }

    /// Ends a sale now (by Redis's clock), unless it ended already. Returns its end, or
    /// `None` when the sale has no live state.
    pub async fn end_activity(&self, activity_id: u64) -> Result<Option<i64>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let ends: i64 = self
            .scripts
            .activity_end
            .call(&[&keys.meta, &keys.stock])
            .invoke(&mut connection)
            .await?;
        Ok((ends != -1).then_some(ends))
    }

    /// Rebuilds a sale whose live state was lost: its definition (`activity`, with `added`
    /// stock since creation) and its purchases (`purchases`: request id and user id of each
    /// stored row), refusing while any live state exists. The sale is live again only at
    /// the last step. What cannot be rebuilt: the outcomes of requests that did not buy
    /// (SOLD_OUT, ALREADY_BOUGHT, NOT_STARTED, ENDED), so such a request delivered again is
    /// decided anew.
    pub async fn restore_activity(
        &self,
        activity: &LiveActivity,
        added: u64,
        purchases: &[(String, u64)],
    ) -> Result<RestoreOutcome, RedisStateError> {
        let keys = ActivityKeys::new(activity.activity_id);
        let mut connection = self.connection().await?;
        let begun: i64 = self
            .scripts
            .activity_restore_begin
            .call(&[
                &keys.meta,
                &keys.stock,
                &keys.logs,
                &keys.success,
                &keys.over,
                &keys.holdings,
                &keys.decided,
                &keys.outcome_counts,
                &keys.initial_stock,
                &keys.added_stock,
            ])
            .invoke(&mut connection)
            .await?;
        match begun {
            0 => return Ok(RestoreOutcome::StateExists),
            -2 => return Ok(RestoreOutcome::RecordsQueued),
            1 => {}
            other => return Err(RedisStateError::UnexpectedReply(other)),
        }
        for chunk in purchases.chunks(RESTORE_CHUNK) {
            let mut call = self
                .scripts
                .activity_restore_purchases
                .call(&[&keys.holdings, &keys.decided]);
            for (request_id, user_id) in chunk {
                call.arg(request_id).arg(user_id);
            }
            let _: i64 = call.invoke(&mut connection).await?;
        }
        let sold = purchases.len() as u64;
        let remaining: i64 = self
            .scripts
            .activity_restore_finish
            .call(&[
                &keys.meta,
                &keys.stock,
                &keys.initial_stock,
                &keys.added_stock,
                &keys.success,
                &keys.over,
                &keys.outcome_counts,
            ])
            .arg(activity.stock)
            .arg(added)
            .arg(sold)
            .arg(activity.starts_at_ms)
            .arg(activity.ends_at_ms)
            .arg(activity.per_user_limit)
            .invoke(&mut connection)
            .await?;
        self.register(activity.activity_id).await?;
        Ok(RestoreOutcome::Restored { remaining })
    }

    /// Adds `activity_id` to the registry of sales with live state.
    pub async fn register(&self, activity_id: u64) -> Result<(), RedisStateError> {
        let mut connection = self.connection().await?;
        redis::cmd("SADD")
            .arg(ACTIVITY_REGISTRY)
            .arg(activity_id)
            .exec_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Whether `activity_id` ever had live state written (it was created).
    pub async fn is_registered(&self, activity_id: u64) -> Result<bool, RedisStateError> {
        let mut connection = self.connection().await?;
        Ok(redis::cmd("SISMEMBER")
            .arg(ACTIVITY_REGISTRY)
            .arg(activity_id)
            .query_async(&mut connection)
            .await?)
    }

    /// Every activity in the registry, sorted.
    pub async fn registered_activities(&self) -> Result<Vec<u64>, RedisStateError> {
        let mut connection = self.connection().await?;
        let mut ids: Vec<u64> = redis::cmd("SMEMBERS")
            .arg(ACTIVITY_REGISTRY)
            .query_async(&mut connection)
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Remaining stock, or `None` when the activity has no live state.
    pub async fn get_stock(&self, activity_id: u64) -> Result<Option<i64>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        Ok(redis::cmd("GET")
            .arg(&keys.stock)
            .query_async(&mut connection)
            .await?)
    }

    pub async fn is_activity_over(&self, activity_id: u64) -> Result<bool, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(&keys.over)
            .query_async(&mut connection)
            .await?;
        Ok(exists)
    }

    pub async fn set_activity_over(
        &self,
        activity_id: u64,
        over: bool,
    ) -> Result<(), RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let command = if over {
            let mut set = redis::cmd("SET");
            set.arg(&keys.over).arg("1");
            set
        } else {
            let mut del = redis::cmd("DEL");
            del.arg(&keys.over);
            del
        };
        command.exec_async(&mut connection).await?;
        Ok(())
    }

    /// All figures of the activity in one round trip (two with log_workers registered),
    /// with Redis's clock.
    pub async fn snapshot(&self, activity_id: u64) -> Result<ActivitySnapshot, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let replies: Vec<redis::Value> = redis::pipe()
            .get(&keys.initial_stock)
            .get(&keys.added_stock)
            .get(&keys.stock)
            .get(&keys.success)
            .exists(&keys.over)
            .hlen(&keys.holdings)
            .hlen(&keys.decided)
            .hexists(&keys.decided, DECIDED_MARKER)
            .llen(&keys.logs)
            .llen(&keys.legacy_processing)
            .smembers(&keys.log_workers)
            .cmd("HMGET")
            .arg(&keys.outcome_counts)
            .arg(OUTCOME_SOLD_OUT)
            .arg(OUTCOME_ALREADY_BOUGHT)
            .arg(OUTCOME_NOT_STARTED)
            .arg(OUTCOME_ENDED)
            .cmd("HMGET")
            .arg(&keys.meta)
            .arg(META_STARTS_AT)
            .arg(META_ENDS_AT)
            .arg(META_LIMIT)
            .arg(META_PAYMENT_WINDOW)
            .cmd("HMGET")
            .arg(&keys.order_counts)
            .arg("reserved")
            .arg("paid")
            .arg("expired")
            .arg("payments_paid")
            .arg("payments_late")
            .arg("payments_unknown")
            .arg("payments_already_paid")
            .zcard(&keys.deadlines)
            // Keyless: it rides with the keyed commands to the activity's node.
            .cmd("TIME")
            .query_async(&mut connection)
            .await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(redis::Value::Nil);
        let initial_stock: Option<i64> = redis::from_redis_value(next())?;
        let added_stock: Option<i64> = redis::from_redis_value(next())?;
        let stock: Option<i64> = redis::from_redis_value(next())?;
        let success: Option<i64> = redis::from_redis_value(next())?;
        let over: bool = redis::from_redis_value(next())?;
        let buyers: u64 = redis::from_redis_value(next())?;
        let decided_fields: u64 = redis::from_redis_value(next())?;
        let marked: bool = redis::from_redis_value(next())?;
        let requests_seen = decided_fields - u64::from(marked);
        let queued: u64 = redis::from_redis_value(next())?;
        let legacy: u64 = redis::from_redis_value(next())?;
        let workers: Vec<String> = redis::from_redis_value(next())?;
        let counts: Vec<Option<u64>> = redis::from_redis_value(next())?;
        let (starts_at_ms, ends_at_ms, limit, window): (
            Option<i64>,
            Option<i64>,
            Option<u32>,
            Option<u64>,
        ) = redis::from_redis_value(next())?;
        let orders: Vec<Option<i64>> = redis::from_redis_value(next())?;
        let deadlines: u64 = redis::from_redis_value(next())?;
        let (seconds, micros): (i64, i64) = redis::from_redis_value(next())?;
        let mut processing = legacy;
        if !workers.is_empty() {
            let mut lengths = redis::pipe();
            for worker in &workers {
                lengths.llen(keys.processing(worker));
            }
            let held: Vec<u64> = lengths.query_async(&mut connection).await?;
            processing += held.iter().sum::<u64>();
        }
        let count = |index: usize| counts.get(index).copied().flatten().unwrap_or(0);
        let order = |index: usize| orders.get(index).copied().flatten().unwrap_or(0);
        let payment = |index: usize| u64::try_from(order(index)).unwrap_or(0);
        Ok(ActivitySnapshot {
            initial_stock,
            added_stock: added_stock.unwrap_or(0),
            stock,
            success: success.unwrap_or(0),
            over,
            buyers,
            requests_seen,
            sold_out: count(0),
            already_bought: count(1),
            not_started: count(2),
            ended: count(3),
            queued_records: queued,
            processing_records: processing,
            starts_at_ms: starts_at_ms.unwrap_or(0),
            ends_at_ms: ends_at_ms.unwrap_or(0),
            per_user_limit: limit.unwrap_or(1),
            payment_window_ms: window.unwrap_or(0),
            reserved: order(0),
            paid: order(1),
            expired: order(2),
            deadlines,
            payments: [payment(3), payment(4), payment(5), payment(6)],
            redis_time_ms: seconds * 1000 + micros / 1000,
        })
    }

    /// The requests of `user_id` this activity has decided, with their outcomes, sorted by
    /// request id, and the purchases the user holds. Scans the whole decided hash (HSCAN):
    /// for looking one user up, not for a hot path.
    pub async fn user_decisions(
        &self,
        activity_id: u64,
        user_id: u64,
    ) -> Result<(Vec<(String, SeckillOutcome)>, u64), RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let suffix = format!(":{user_id}");
        let mut decisions = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, entries): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&keys.decided)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            for (request_id, value) in entries {
                if request_id == DECIDED_MARKER {
                    continue;
                }
                if let Some(code) = value.strip_suffix(&suffix) {
                    let code: i64 = code.parse().unwrap_or(i64::MIN);
                    decisions.push((request_id, decision_of(code)?.outcome));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        decisions.sort_by(|a, b| a.0.cmp(&b.0));
        let held: Option<u64> = redis::cmd("HGET")
            .arg(&keys.holdings)
            .arg(user_id)
            .query_async(&mut connection)
            .await?;
        Ok((decisions, held.unwrap_or(0)))
    }
}
