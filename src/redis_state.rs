//! The flash-sale state in Redis and the one Lua script that changes it.
//!
//! Every key of an activity carries the activity id as a hash tag (`seckill:{42}:stock`), so
//! all of them live in one Redis Cluster slot and the script may touch them atomically.
//!
//! | key                           | type    | meaning                                        |
//! |-------------------------------|---------|------------------------------------------------|
//! | `seckill:{id}:stock`          | string  | remaining stock                                |
//! | `seckill:{id}:initial_stock`  | string  | stock set by `init_state`                      |
//! | `seckill:{id}:over`           | string  | "1" once the stock reached 0                   |
//! | `seckill:{id}:buyers`         | set     | user ids with a purchase                       |
//! | `seckill:{id}:requests`       | set     | request ids already processed (dedupe)         |
//! | `seckill:{id}:success`        | string  | number of successful purchases                 |
//! | `seckill:{id}:logs`           | list    | `SeckillRecord` JSON waiting for log_worker    |
//! | `seckill:{id}:logs:processing`| list    | records log_worker took but has not yet stored |
//! | `seckill:{id}:logs:dead`      | list    | records log_worker could not decode            |
//!
//! log_worker moves records with the reliable-queue pattern: `LMOVE logs -> processing`,
//! insert into PostgreSQL, then `LREM` them from processing; records a crashed worker left in
//! processing are inserted again at start (the insert is idempotent).

use crate::common::{SeckillOutcome, SeckillRecord, SeckillRequest};
use crate::config::RedisConfig;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, Script};
use std::time::Duration;

/// The atomic purchase. Return codes: 0 SUCCESS, 1 SOLD_OUT, 2 DUPLICATE, 3 ALREADY_BOUGHT,
/// -1 the activity was never initialised (no stock key).
const SECKILL_SCRIPT: &str = r#"
-- KEYS: 1 stock, 2 over, 3 buyers, 4 requests, 5 success, 6 logs
-- ARGV: 1 request_id, 2 user_id, 3 record JSON
local stock = redis.call('GET', KEYS[1])
if not stock then
  return -1
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then
  return 2
end
if redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then
  return 3
end
if tonumber(stock) <= 0 then
  redis.call('SET', KEYS[2], '1')
  return 1
end
local remaining = redis.call('DECR', KEYS[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('INCR', KEYS[5])
redis.call('RPUSH', KEYS[6], ARGV[3])
if remaining <= 0 then
  redis.call('SET', KEYS[2], '1')
end
return 0
"#;

/// Moves up to ARGV[1] records from the queue to the processing list in one round trip.
const TAKE_LOGS_SCRIPT: &str = r#"
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local record = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not record then
    break
  end
  taken[#taken + 1] = record
end
return taken
"#;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStateError {
    #[error("invalid Redis configuration (redis.url): {0}")]
    Config(String),
    #[error("no Redis connection available: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("activity {0} is not initialised in Redis (no stock key); start server_kafka without --keep-state first")]
    NotInitialised(u64),
    #[error("unexpected reply from the seckill script: {0}")]
    UnexpectedReply(i64),
    #[error("cannot encode the purchase record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl RedisStateError {
    /// Whether the same call may succeed later (connection trouble, timeouts, a busy or
    /// loading server), so the caller should back off and retry rather than give up.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || matches!(
                        error.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::ClusterDown
                                | redis::ServerErrorKind::MasterDown
                        )
                    )
            }
            _ => false,
        }
    }
}

/// The Redis keys of one activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityKeys {
    pub stock: String,
    pub initial_stock: String,
    pub over: String,
    pub buyers: String,
    pub requests: String,
    pub success: String,
    pub logs: String,
    pub processing: String,
    pub dead: String,
}

impl ActivityKeys {
    pub fn new(activity_id: u64) -> Self {
        let key = |name: &str| format!("seckill:{{{activity_id}}}:{name}");
        Self {
            stock: key("stock"),
            initial_stock: key("initial_stock"),
            over: key("over"),
            buyers: key("buyers"),
            requests: key("requests"),
            success: key("success"),
            logs: key("logs"),
            processing: key("logs:processing"),
            dead: key("logs:dead"),
        }
    }

    fn all(&self) -> [&str; 9] {
        [
            &self.stock,
            &self.initial_stock,
            &self.over,
            &self.buyers,
            &self.requests,
            &self.success,
            &self.logs,
            &self.processing,
            &self.dead,
        ]
    }
}

/// Counters of one activity, read in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActivitySnapshot {
    pub initial_stock: Option<i64>,
    pub stock: Option<i64>,
    pub success: i64,
    pub over: bool,
    pub buyers: u64,
    /// Distinct request ids the script has seen (every answer except TIMEOUT).
    pub requests_seen: u64,
    pub queued_records: u64,
    pub processing_records: u64,
}

/// Creates a connection pool from the `redis:` section.
pub fn create_pool(config: &RedisConfig) -> Result<Pool, RedisStateError> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)));
    let manager = Manager::new_with_config(config.url.expose(), connection)
        .map_err(|error| RedisStateError::Config(error.to_string()))?;
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|error| RedisStateError::Config(error.to_string()))
}

/// Flash-sale state operations on a pooled Redis connection.
#[derive(Clone)]
pub struct RedisState {
    pool: Pool,
    seckill_script: Script,
    take_logs_script: Script,
    /// Blocking waits stay below the connection's response timeout.
    longest_block: Duration,
}

impl RedisState {
    pub fn new(pool: Pool, config: &RedisConfig) -> Self {
        // Leave a margin so a blocking pop returns before the client gives up on it.
        let longest_block =
            Duration::from_millis(config.response_timeout_ms.saturating_sub(250).max(10));
        Self {
            pool,
            seckill_script: Script::new(SECKILL_SCRIPT),
            take_logs_script: Script::new(TAKE_LOGS_SCRIPT),
            longest_block,
        }
    }

    pub fn connect(config: &RedisConfig) -> Result<Self, RedisStateError> {
        Ok(Self::new(create_pool(config)?, config))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Resets the activity: stock and initial stock set to `stock`, counters, buyers,
    /// processed request ids, the over flag and both record lists cleared, in one
    /// transaction. Records still queued from an earlier run are dropped with the rest of
    /// that run's state; callers drain log_worker first when they need them.
    pub async fn init_state(&self, activity_id: u64, stock: u64) -> Result<(), RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        redis::pipe()
            .atomic()
            .del(&keys.all()[..])
            .ignore()
            .set(&keys.stock, stock)
            .ignore()
            .set(&keys.initial_stock, stock)
            .ignore()
            .set(&keys.success, 0)
            .ignore()
            .exec_async(&mut *connection)
            .await?;
        Ok(())
    }

    /// Remaining stock, or `None` when the activity was never initialised.
    pub async fn get_stock(&self, activity_id: u64) -> Result<Option<i64>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        Ok(redis::cmd("GET")
            .arg(&keys.stock)
            .query_async(&mut *connection)
            .await?)
    }

    pub async fn is_activity_over(&self, activity_id: u64) -> Result<bool, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(&keys.over)
            .query_async(&mut *connection)
            .await?;
        Ok(exists)
    }

    pub async fn set_activity_over(
        &self,
        activity_id: u64,
        over: bool,
    ) -> Result<(), RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        let command = if over {
            let mut set = redis::cmd("SET");
            set.arg(&keys.over).arg("1");
            set
        } else {
            let mut del = redis::cmd("DEL");
            del.arg(&keys.over);
            del
        };
        command.exec_async(&mut *connection).await?;
        Ok(())
    }

    /// Processes one request atomically: dedupe by request id, one purchase per user,
    /// check and take stock, count the success, set the over flag at 0 and queue `record`
    /// for log_worker, all in one script call.
    pub async fn run_seckill_script(
        &self,
        request: &SeckillRequest,
        record: &SeckillRecord,
    ) -> Result<SeckillOutcome, RedisStateError> {
        let keys = ActivityKeys::new(request.activity_id);
        let record_json = record.to_json()?;
        let mut connection = self.pool.get().await?;
        let code: i64 = self
            .seckill_script
            .key(&keys.stock)
            .key(&keys.over)
            .key(&keys.buyers)
            .key(&keys.requests)
            .key(&keys.success)
            .key(&keys.logs)
            .arg(&request.request_id)
            .arg(request.user_id)
            .arg(record_json)
            .invoke_async(&mut *connection)
            .await?;
        match code {
            0 => Ok(SeckillOutcome::Success),
            1 => Ok(SeckillOutcome::SoldOut),
            2 => Ok(SeckillOutcome::Duplicate),
            3 => Ok(SeckillOutcome::AlreadyBought),
            -1 => Err(RedisStateError::NotInitialised(request.activity_id)),
            other => Err(RedisStateError::UnexpectedReply(other)),
        }
    }

    /// All counters of the activity in one round trip.
    pub async fn snapshot(&self, activity_id: u64) -> Result<ActivitySnapshot, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        type Reply = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            bool,
            u64,
            u64,
            u64,
            u64,
        );
        let (initial_stock, stock, success, over, buyers, requests_seen, queued, processing): Reply =
            redis::pipe()
                .get(&keys.initial_stock)
                .get(&keys.stock)
                .get(&keys.success)
                .exists(&keys.over)
                .scard(&keys.buyers)
                .scard(&keys.requests)
                .llen(&keys.logs)
                .llen(&keys.processing)
                .query_async(&mut *connection)
                .await?;
        Ok(ActivitySnapshot {
            initial_stock,
            stock,
            success: success.unwrap_or(0),
            over,
            buyers,
            requests_seen,
            queued_records: queued,
            processing_records: processing,
        })
    }

    /// Moves up to `max` queued records to the processing list and returns them. When the
    /// queue is empty, waits up to `wait` (capped below the response timeout) for one.
    pub async fn take_log_records(
        &self,
        activity_id: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<String>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        let mut taken: Vec<String> = self
            .take_logs_script
            .key(&keys.logs)
            .key(&keys.processing)
            .arg(max)
            .invoke_async(&mut *connection)
            .await?;
        if taken.is_empty() && !wait.is_zero() && max > 0 {
            let wait = wait.min(self.longest_block);
            let first: Option<String> = redis::cmd("BLMOVE")
                .arg(&keys.logs)
                .arg(&keys.processing)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(wait.as_secs_f64())
                .query_async(&mut *connection)
                .await?;
            if let Some(first) = first {
                taken.push(first);
                let rest: Vec<String> = self
                    .take_logs_script
                    .key(&keys.logs)
                    .key(&keys.processing)
                    .arg(max - 1)
                    .invoke_async(&mut *connection)
                    .await?;
                taken.extend(rest);
            }
        }
        Ok(taken)
    }

    /// Removes records from the processing list once they are stored.
    pub async fn ack_log_records(
        &self,
        activity_id: u64,
        records: &[String],
    ) -> Result<(), RedisStateError> {
        self.leave_processing(activity_id, records, false).await
    }

    /// Moves undecodable records from the processing list to the dead-letter list, so they
    /// are kept for inspection but no longer block the queue.
    pub async fn dead_letter_log_records(
        &self,
        activity_id: u64,
        records: &[String],
    ) -> Result<(), RedisStateError> {
        self.leave_processing(activity_id, records, true).await
    }

    /// Takes `records` off the processing list in one round trip, copying them to the
    /// dead-letter list first when `to_dead_list` (atomically, so none is in neither).
    async fn leave_processing(
        &self,
        activity_id: u64,
        records: &[String],
        to_dead_list: bool,
    ) -> Result<(), RedisStateError> {
        if records.is_empty() {
            return Ok(());
        }
        let keys = ActivityKeys::new(activity_id);
        let mut pipe = redis::pipe();
        if to_dead_list {
            pipe.atomic();
        }
        for record in records {
            if to_dead_list {
                pipe.rpush(&keys.dead, record).ignore();
            }
            pipe.lrem(&keys.processing, 1, record).ignore();
        }
        let mut connection = self.pool.get().await?;
        pipe.exec_async(&mut *connection).await?;
        Ok(())
    }

    /// Records left in the processing list (by a worker that crashed before acking them).
    pub async fn processing_log_records(
        &self,
        activity_id: u64,
    ) -> Result<Vec<String>, RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        Ok(redis::cmd("LRANGE")
            .arg(&keys.processing)
            .arg(0)
            .arg(-1)
            .query_async(&mut *connection)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = ActivityKeys::new(42);
        for key in keys.all() {
            assert!(key.starts_with("seckill:{42}:"), "{key}");
        }
        assert_eq!(keys.processing, "seckill:{42}:logs:processing");
    }
}
