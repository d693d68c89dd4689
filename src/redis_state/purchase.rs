//! The atomic purchase: one request (`scripts/purchase.lua`; `make bench-server` drives the
//! same file with redis-benchmark) or a batch of one activity's requests in one call
//! (`scripts/purchase_batch.lua`, which gives every request exactly what the single-request
//! script would, in order: the property test in tests/redis_state.rs compares outcomes and
//! keys). Per request: a request id decided before gets its first outcome again (flagged as
//! a repeat); otherwise the window by Redis's clock (NOT_STARTED, ENDED), the per-user limit
//! (ALREADY_BOUGHT), the stock (SOLD_OUT), or SUCCESS: stock taken, the user's holdings and
//! the success counter up, the record queued for log_worker, all in the one call. The
//! decision is kept per request id, and the count of its outcome goes up.

use super::{ActivityKeys, RedisState, RedisStateError};
use crate::common::{Decision, SeckillOutcome, SeckillRecord, SeckillRequest};

/// The scripts' outcome codes (also the fields of the outcome counts hash).
pub const OUTCOME_SUCCESS: i64 = 0;
pub const OUTCOME_SOLD_OUT: i64 = 1;
pub const OUTCOME_ALREADY_BOUGHT: i64 = 3;
pub const OUTCOME_NOT_STARTED: i64 = 4;
pub const OUTCOME_ENDED: i64 = 5;
/// Added to the code of a request id decided before.
const REPEAT: i64 = 10;
/// The whole call: the activity has no live state.
const NO_STATE: i64 = -1;
/// The single-request script: the sale has a payment window (only batches reserve).
const WINDOWED: i64 = -3;

/// The outcome a script code stands for.
pub fn decision_of(code: i64) -> Result<Decision, RedisStateError> {
    let (first, repeat) = if code >= REPEAT {
        (code - REPEAT, true)
    } else {
        (code, false)
    };
    let outcome = match first {
        OUTCOME_SUCCESS => SeckillOutcome::Success,
        OUTCOME_SOLD_OUT => SeckillOutcome::SoldOut,
        OUTCOME_ALREADY_BOUGHT => SeckillOutcome::AlreadyBought,
        OUTCOME_NOT_STARTED => SeckillOutcome::NotStarted,
        OUTCOME_ENDED => SeckillOutcome::Ended,
        _ => return Err(RedisStateError::UnexpectedReply(code)),
    };
    Ok(Decision { outcome, repeat })
}

/// What a batch call decided: each request's decision, in order, and Redis's clock then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchDecisions {
    /// Redis's `TIME` during the call, in ms since the epoch: when the requests were decided.
    pub decided_at_ms: i64,
    pub decisions: Vec<Decision>,
    /// In a sale with a payment window, each request's deadline to pay (ms since the epoch,
    /// Redis's clock; 0 unless its outcome is SUCCESS); empty otherwise.
    pub pay_by: Vec<i64>,
}

impl BatchDecisions {
    /// The deadline to pay of the `index`th request's reservation, if it is one.
    pub fn pay_by(&self, index: usize) -> Option<i64> {
        self.pay_by.get(index).copied().filter(|&pay_by| pay_by > 0)
    }
}

/// The requests of one purchase script call (one activity), encoded straight into the
/// command as they are added (no per-request allocation). Reuse it with
/// [`PurchaseBatch::start`].
pub struct PurchaseBatch {
    activity_id: u64,
    hash: String,
    keys: ActivityKeys,
    command: redis::Cmd,
    requests: usize,
}

impl PurchaseBatch {
    fn new(activity_id: u64, hash: &str) -> Self {
        let mut batch = Self {
            activity_id,
            hash: hash.to_string(),
            keys: ActivityKeys::new(activity_id),
            command: redis::Cmd::with_capacity(64, 4096),
            requests: 0,
        };
        batch.start(0);
        batch
    }

    /// Empties the batch for requests processed at `processed_time` (ms since the epoch).
    pub fn start(&mut self, processed_time: i64) {
        let keys = &self.keys;
        self.command.clear();
        self.command
            .arg("EVALSHA")
            .arg(&self.hash)
            .arg(11)
            .arg(&keys.stock)
            .arg(&keys.over)
            .arg(&keys.holdings)
            .arg(&keys.decided)
            .arg(&keys.success)
            .arg(&keys.logs)
            .arg(&keys.outcome_counts)
            .arg(&keys.meta)
            .arg(&keys.orders)
            .arg(&keys.deadlines)
            .arg(&keys.order_counts)
            .arg(self.activity_id)
            .arg(processed_time);
        self.requests = 0;
    }

    /// Adds a request of this batch's activity; `cost_ms` goes into its record.
    pub fn push(
        &mut self,
        request_id: &str,
        user_id: u64,
        request_initiation_time: i64,
        cost_ms: u64,
    ) {
        self.command
            .arg(request_id)
            .arg(user_id)
            .arg(request_initiation_time)
            .arg(cost_ms);
        self.requests += 1;
    }

    pub fn activity_id(&self) -> u64 {
        self.activity_id
    }

    pub fn len(&self) -> usize {
        self.requests
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }
}

impl RedisState {
    /// Processes one request atomically (see the module doc), all in one script call.
    pub async fn run_seckill_script(
        &self,
        request: &SeckillRequest,
        record: &SeckillRecord,
    ) -> Result<Decision, RedisStateError> {
        let keys = ActivityKeys::new(request.activity_id);
        let record_json = record.to_json()?;
        let mut connection = self.connection().await?;
        let code: i64 = self
            .scripts
            .purchase
            .call(&[
                &keys.stock,
                &keys.over,
                &keys.holdings,
                &keys.decided,
                &keys.success,
                &keys.logs,
                &keys.outcome_counts,
                &keys.meta,
            ])
            .arg(&request.request_id)
            .arg(request.user_id)
            .arg(&record_json)
            .invoke(&mut connection)
            .await?;
        match code {
            NO_STATE => Err(RedisStateError::NotInitialised(request.activity_id)),
            WINDOWED => Err(RedisStateError::Windowed(request.activity_id)),
            code => decision_of(code),
        }
    }

    /// The hash of the single-request purchase script, for `EVALSHA` from other tools
    /// (`make bench-server` drives it with redis-benchmark).
    pub fn seckill_script_hash(&self) -> &str {
        self.scripts.purchase.hash()
    }

    /// An empty batch for `activity_id`, to fill with [`PurchaseBatch::push`].
    pub fn purchase_batch(&self, activity_id: u64) -> PurchaseBatch {
        PurchaseBatch::new(activity_id, self.scripts.purchase_batch.hash())
    }

    /// Runs the purchase of every request in `batch` in one script call and returns their
    /// decisions, in order, once they are durable: with replicas to wait for
    /// (`redis.wait_replicas`), `WAIT` follows the call on the same connection, and a wait
    /// that falls short is [`RedisStateError::NotReplicated`] (the decisions are made; they
    /// must not be published yet).
    pub async fn run_purchase_batch(
        &self,
        batch: &PurchaseBatch,
    ) -> Result<BatchDecisions, RedisStateError> {
        if batch.requests == 0 {
            return Ok(BatchDecisions::default());
        }
        let activity_id = batch.activity_id;
        let (reply, acked, needed) = self
            .eval_durable(
                activity_id,
                &batch.keys.stock,
                &batch.command,
                self.scripts.purchase_batch.source(),
            )
            .await?;
        let decided = batch_reply(reply, batch)?;
        if acked < needed {
            self.durability.forget(activity_id);
            return Err(RedisStateError::NotReplicated {
                activity_id,
                acked,
                needed,
                decided,
            });
        }
        Ok(decided)
    }

    /// Runs one script call (`command`, an `EVALSHA` of `source` on `first_key`'s slot) and,
    /// with replicas to wait for (`redis.wait_replicas`), `WAIT` behind it on the same
    /// connection. Returns the reply, the replicas that acknowledged and those needed.
    pub(crate) async fn eval_durable(
        &self,
        activity_id: u64,
        first_key: &str,
        command: &redis::Cmd,
        source: &'static str,
    ) -> Result<(redis::Value, u32, u32), RedisStateError> {
        let mut connection = self.connection().await?;
        let needed = self
            .durability
            .replicas_needed(&mut connection, activity_id, first_key)
            .await?;
        if needed == 0 {
            let reply: redis::Value = connection
                .eval_script(
                    &super::connection::ScriptCall::Command(command),
                    source,
                    first_key,
                )
                .await?;
            return Ok((reply, 0, 0));
        }
        let mut pipeline = redis::pipe();
        pipeline
            .add_command(command.clone())
            .cmd("WAIT")
            .arg(needed)
            .arg(self.durability.timeout_ms());
        let (reply, acked): (redis::Value, i64) = connection
            .eval_script(
                &super::connection::ScriptCall::Pipeline(&pipeline),
                source,
                first_key,
            )
            .await?;
        Ok((reply, u32::try_from(acked).unwrap_or(0), needed))
    }
}

/// The reply of `purchase_batch.lua`: `{time, codes...}`, or -1.
fn batch_reply(
    reply: redis::Value,
    batch: &PurchaseBatch,
) -> Result<BatchDecisions, RedisStateError> {
    let codes = match reply {
        redis::Value::Int(NO_STATE) => {
            return Err(RedisStateError::NotInitialised(batch.activity_id))
        }
        redis::Value::Int(other) => return Err(RedisStateError::UnexpectedReply(other)),
        redis::Value::Array(codes) => codes,
        _ => return Err(RedisStateError::UnexpectedReply(i64::MIN)),
    };
    let mut codes = codes.into_iter().map(|code| match code {
        redis::Value::Int(code) => Ok(code),
        _ => Err(RedisStateError::UnexpectedReply(i64::MIN)),
    });
    let decided_at_ms = codes.next().ok_or(RedisStateError::BatchReply {
        requests: batch.requests,
        answers: 0,
    })??;
    let mut codes: Vec<i64> = codes.collect::<Result<_, _>>()?;
    // In a sale with a payment window, a deadline per request follows the codes.
    let pay_by = if codes.len() == 2 * batch.requests && batch.requests > 0 {
        codes.split_off(batch.requests)
    } else {
        Vec::new()
    };
    if codes.len() != batch.requests {
        return Err(RedisStateError::BatchReply {
            requests: batch.requests,
            answers: codes.len(),
        });
    }
    let decisions = codes
        .into_iter()
        .map(decision_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BatchDecisions {
        decided_at_ms,
        decisions,
        pay_by,
    })
}
