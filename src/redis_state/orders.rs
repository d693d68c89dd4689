//! Orders in a sale with a payment window: a purchase (SUCCESS) is a reservation until it is
//! paid. Payments are applied in batches of one activity (`scripts/payment_batch.lua`) and
//! reservations past their deadline are expired in bounded slices
//! (`scripts/order_expire.lua`), both judged by Redis's clock and atomic on the activity's
//! slot, so a payment and an expiry of the same order cannot both happen: whichever script
//! runs first changes the order's state, and the other sees it. Every change queues its
//! event (JSON starting `{"kind":`) on the activity's log list, in the same script: log_worker
//! stores and publishes it, so an event survives a crash of the process that caused it.

use super::keys::{ActivityKeys, WINDOWED_REGISTRY};
use super::{BatchDecisions, RedisState, RedisStateError};
use std::fmt;

/// The answer to one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PaymentAnswer {
    /// The reservation was live: the order is paid.
    #[serde(rename = "PAID")]
    Paid,
    /// The reservation had expired (or its deadline had passed): refund it; no stock taken.
    #[serde(rename = "PAYMENT_LATE")]
    Late,
    /// No such order for this user in this sale, or the sale has no payment window.
    #[serde(rename = "PAYMENT_UNKNOWN")]
    Unknown,
    /// The order was paid already, by another payment id: refund it.
    #[serde(rename = "ALREADY_PAID")]
    AlreadyPaid,
}

impl PaymentAnswer {
    pub const ALL: [PaymentAnswer; 4] = [Self::Paid, Self::Late, Self::Unknown, Self::AlreadyPaid];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "PAID",
            Self::Late => "PAYMENT_LATE",
            Self::Unknown => "PAYMENT_UNKNOWN",
            Self::AlreadyPaid => "ALREADY_PAID",
        }
    }

    fn of_code(code: i64) -> Result<(Self, bool), RedisStateError> {
        let (first, repeat) = if code >= 10 {
            (code - 10, true)
        } else {
            (code, false)
        };
        let answer = match first {
            0 => Self::Paid,
            1 => Self::Late,
            2 => Self::Unknown,
            3 => Self::AlreadyPaid,
            _ => return Err(RedisStateError::UnexpectedReply(code)),
        };
        Ok((answer, repeat))
    }
}

impl fmt::Display for PaymentAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payments of one script call (one activity).
#[derive(Debug, Clone)]
pub struct PaymentBatch {
    activity_id: u64,
    keys: ActivityKeys,
    command: redis::Cmd,
    payments: usize,
}

impl PaymentBatch {
    pub fn activity_id(&self) -> u64 {
        self.activity_id
    }

    pub fn len(&self) -> usize {
        self.payments
    }

    pub fn is_empty(&self) -> bool {
        self.payments == 0
    }

    /// Adds a payment of `order_id` (the purchase's request id) by `user_id`.
    pub fn push(&mut self, payment_id: &str, order_id: &str, user_id: u64) {
        self.command.arg(payment_id).arg(order_id).arg(user_id);
        self.payments += 1;
    }
}

/// What a payment batch decided, in order, and Redis's clock then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentDecisions {
    pub decided_at_ms: i64,
    /// Each payment's answer, and whether its payment id had been applied before.
    pub answers: Vec<(PaymentAnswer, bool)>,
}

/// What one expiry call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpirySlice {
    pub expired: u64,
    /// The earliest deadline still waiting (ms, Redis's clock), if any.
    pub next_due_ms: Option<i64>,
    pub redis_time_ms: i64,
}

impl RedisState {
    /// An empty payment batch for `activity_id`.
    pub fn payment_batch(&self, activity_id: u64) -> PaymentBatch {
        let keys = ActivityKeys::new(activity_id);
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(self.scripts.payment_batch.hash())
            .arg(9)
            .arg(&keys.stock)
            .arg(&keys.over)
            .arg(&keys.holdings)
            .arg(&keys.meta)
            .arg(&keys.orders)
            .arg(&keys.deadlines)
            .arg(&keys.order_counts)
            .arg(&keys.payments)
            .arg(&keys.logs)
            .arg(activity_id);
        PaymentBatch {
            activity_id,
            keys,
            command,
            payments: 0,
        }
    }

    /// Applies every payment of `batch` in one script call (see the module doc) and returns
    /// the answers once they are durable (`redis.wait_replicas`, as purchases).
    pub async fn run_payment_batch(
        &self,
        batch: &PaymentBatch,
    ) -> Result<PaymentDecisions, RedisStateError> {
        if batch.payments == 0 {
            return Ok(PaymentDecisions::default());
        }
        let activity_id = batch.activity_id;
        let (reply, acked, needed) = self
            .eval_durable(
                activity_id,
                &batch.keys.stock,
                &batch.command,
                self.scripts.payment_batch.source(),
            )
            .await?;
        let codes: Vec<i64> = match reply {
            redis::Value::Int(-1) => return Err(RedisStateError::NotInitialised(activity_id)),
            other => redis::from_redis_value(other)?,
        };
        let mut codes = codes.into_iter();
        let decided_at_ms = codes.next().unwrap_or(0);
        let answers = codes
            .map(PaymentAnswer::of_code)
            .collect::<Result<Vec<_>, _>>()?;
        if answers.len() != batch.payments {
            return Err(RedisStateError::BatchReply {
                requests: batch.payments,
                answers: answers.len(),
            });
        }
        if acked < needed {
            self.durability.forget(activity_id);
            return Err(RedisStateError::NotReplicated {
                activity_id,
                acked,
                needed,
                decided: BatchDecisions::default(),
            });
        }
        Ok(PaymentDecisions {
            decided_at_ms,
            answers,
        })
    }

    /// Expires up to `most` of `activity_id`'s reservations whose deadline passed (by
    /// Redis's clock), in one call. `None`: the activity has no live state.
    pub async fn expire_due(
        &self,
        activity_id: u64,
        most: usize,
    ) -> Result<Option<ExpirySlice>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.connection().await?;
        let reply: Vec<i64> = self
            .scripts
            .order_expire
            .call(&[
                &keys.stock,
                &keys.over,
                &keys.holdings,
                &keys.orders,
                &keys.deadlines,
                &keys.order_counts,
                &keys.logs,
            ])
            .arg(activity_id)
            .arg(most.max(1))
            .invoke(&mut connection)
            .await?;
        match reply.as_slice() {
            [-1] => Ok(None),
            [expired, next_due, now] => Ok(Some(ExpirySlice {
                expired: u64::try_from(*expired).unwrap_or(0),
                next_due_ms: (*next_due >= 0).then_some(*next_due),
                redis_time_ms: *now,
            })),
            _ => Err(RedisStateError::UnexpectedReply(reply.len() as i64)),
        }
    }

    /// The activities created with a payment window, sorted.
    pub async fn windowed_activities(&self) -> Result<Vec<u64>, RedisStateError> {
        let mut connection = self.connection().await?;
        let mut ids: Vec<u64> = redis::cmd("SMEMBERS")
            .arg(WINDOWED_REGISTRY)
            .query_async(&mut connection)
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Adds `activity_id` to the activities whose reservations expire.
    pub(crate) async fn register_windowed(&self, activity_id: u64) -> Result<(), RedisStateError> {
        let mut connection = self.connection().await?;
        redis::cmd("SADD")
            .arg(WINDOWED_REGISTRY)
            .arg(activity_id)
            .exec_async(&mut connection)
            .await?;
        Ok(())
    }
}
