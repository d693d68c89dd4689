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
//! | `seckill:{id}:decided`        | hash    | request id -> `<outcome code>:<user id>`       |
//! | `seckill:{id}:outcomes`       | hash    | outcome code -> requests decided so           |
//! | `seckill:{id}:success`        | string  | number of successful purchases                 |
//! | `seckill:{id}:logs`           | list    | `SeckillRecord` JSON waiting for log_worker    |
//! | `seckill:{id}:logs:workers`   | set     | ids of the log_workers that hold records       |
//! | `seckill:{id}:logs:processing:<worker>` | list | records that worker took but has not yet stored |
//! | `seckill:{id}:logs:lease:<worker>` | string | present while that worker is alive (PX TTL) |
//! | `seckill:{id}:logs:dead`      | list    | records log_worker could not decode            |
//!
//! log_worker moves records with the reliable-queue pattern ([`LogQueue`]): `LMOVE logs ->
//! its own processing list`, insert into PostgreSQL, then `LREM` them from that list. Each
//! worker keeps a lease alive; the records of a worker whose lease lapsed (it died) are
//! claimed by a live worker in one atomic script and inserted again (the insert is
//! idempotent). A worker never takes records from a worker whose lease is alive, so several
//! workers on one activity neither insert each other's batches nor strand them.

use crate::common::{Decision, SeckillOutcome, SeckillRecord, SeckillRequest};
use crate::config::RedisConfig;
use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, Script};
use std::time::Duration;

/// The atomic purchase of one request (`src/redis_state/purchase.lua`; `make bench-server`
/// loads the same file into redis-benchmark). Return codes: 0 SUCCESS, 1 SOLD_OUT,
/// 3 ALREADY_BOUGHT, 10 + that for a request id decided before, -1 the activity was never
/// initialised (no stock key).
const SECKILL_SCRIPT: &str = include_str!("redis_state/purchase.lua");

/// The purchase of a batch of requests in one call (`src/redis_state/purchase_batch.lua`):
/// for each request, in order, exactly what [`SECKILL_SCRIPT`] does for one (the property
/// test in tests/redis_state.rs compares every outcome and every key). Set lookups and
/// writes are made once per batch (SMISMEMBER, one SADD, one RPUSH, the counters once), what
/// the batch itself adds is tracked in the script, and the record is built there, so the
/// caller sends only what a record needs. Return: a code per request (as SECKILL_SCRIPT), or
/// -1 for the whole batch when the activity was never initialised.
const SECKILL_BATCH_SCRIPT: &str = include_str!("redis_state/purchase_batch.lua");

/// Moves up to ARGV[1] records from the queue to a worker's processing list in one round trip
/// (three commands, whatever the count).
const TAKE_LOGS_SCRIPT: &str = r#"
local taken = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #taken == 0 then
  return taken
end
for first = 1, #taken, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(taken, first, math.min(first + 999, #taken)))
end
redis.call('LTRIM', KEYS[1], #taken, -1)
return taken
"#;

/// Takes stored records off a worker's processing list, copying ARGV[1] of them (the
/// undecodable ones, given first in ARGV after the count) to the dead-letter list. The
/// records of a batch are the list's head, in order (a worker takes into its own list and
/// stores batch after batch): then one LTRIM does it; otherwise each is removed by value.
/// KEYS: 1 processing list, 2 dead-letter list. ARGV: 1 dead count, then dead records,
/// then the others.
const LEAVE_PROCESSING_SCRIPT: &str = r#"
local dead = tonumber(ARGV[1])
local records = #ARGV - 1
for first = 2, dead + 1, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 999, dead + 1)))
end
local head = redis.call('LRANGE', KEYS[1], 0, records - 1)
local wanted = {}
for i = 2, #ARGV do
  wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + 1
end
local is_head = #head == records
for _, record in ipairs(head) do
  if not wanted[record] or wanted[record] == 0 then
    is_head = false
    break
  end
  wanted[record] = wanted[record] - 1
end
if is_head then
  redis.call('LTRIM', KEYS[1], records, -1)
else
  for i = 2, #ARGV do
    redis.call('LREM', KEYS[1], 1, ARGV[i])
  end
end
return records
"#;

/// Renews a worker's lease, unless its records were claimed meanwhile (it is no longer in
/// the workers set). KEYS: 1 workers, 2 lease. ARGV: 1 worker id, 2 lease in ms.
/// Returns 1 when renewed, 0 when the worker lost its records.
const RENEW_LEASE_SCRIPT: &str = r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
"#;

/// Moves every record of a worker whose lease lapsed to the claiming worker's processing
/// list and forgets that worker. KEYS: 1 workers, 2 its lease, 3 its list, 4 the claimer's
/// list. ARGV: 1 its id. Returns the records moved, or -1 when its lease is alive.
const CLAIM_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local moved = 0
while redis.call('LMOVE', KEYS[3], KEYS[4], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
redis.call('SREM', KEYS[1], ARGV[1])
return moved
"#;

/// Forgets a worker that holds nothing. KEYS: 1 workers, 2 its lease, 3 its list.
/// ARGV: 1 its id. Returns the records it still holds (0 when it was forgotten).
const UNREGISTER_SCRIPT: &str = r#"
local held = redis.call('LLEN', KEYS[3])
if held == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
return held
"#;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStateError {
    #[error("invalid Redis configuration (redis.url): {0}")]
    Config(String),
    #[error("no Redis connection available")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("activity {0} is not initialised in Redis (no stock key); start server_kafka without --keep-state first")]
    NotInitialised(u64),
    #[error("unexpected reply from the seckill script: {0}")]
    UnexpectedReply(i64),
    #[error("the batch purchase script answered {answers} codes for {requests} requests")]
    BatchReply { requests: usize, answers: usize },
    #[error("cannot encode the purchase record")]
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
    activity_id: u64,
    pub stock: String,
    pub initial_stock: String,
    pub over: String,
    pub buyers: String,
    /// Request id -> `<outcome code>:<user id>`: every request decided, once.
    pub decided: String,
    /// Outcome code -> how many request ids were decided so.
    pub outcome_counts: String,
    pub success: String,
    pub logs: String,
    /// The ids of the log_workers that may hold records.
    pub log_workers: String,
    /// The single processing list of versions before per-worker lists; still recovered.
    pub legacy_processing: String,
    pub dead: String,
}

impl ActivityKeys {
    pub fn new(activity_id: u64) -> Self {
        let key = |name: &str| format!("seckill:{{{activity_id}}}:{name}");
        Self {
            activity_id,
            stock: key("stock"),
            initial_stock: key("initial_stock"),
            over: key("over"),
            buyers: key("buyers"),
            decided: key("decided"),
            outcome_counts: key("outcomes"),
            success: key("success"),
            logs: key("logs"),
            log_workers: key("logs:workers"),
            legacy_processing: key("logs:processing"),
            dead: key("logs:dead"),
        }
    }

    /// The records `worker` took and has not yet stored.
    pub fn processing(&self, worker: &str) -> String {
        format!("seckill:{{{}}}:logs:processing:{worker}", self.activity_id)
    }

    /// Present while `worker` is alive.
    pub fn lease(&self, worker: &str) -> String {
        format!("seckill:{{{}}}:logs:lease:{worker}", self.activity_id)
    }

    fn fixed(&self) -> [&str; 11] {
        [
            &self.stock,
            &self.initial_stock,
            &self.over,
            &self.buyers,
            &self.decided,
            &self.outcome_counts,
            &self.success,
            &self.logs,
            &self.log_workers,
            &self.legacy_processing,
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
    /// Distinct request ids the script has decided (every answer except TIMEOUT).
    pub requests_seen: u64,
    /// Request ids decided SOLD_OUT and ALREADY_BOUGHT (SUCCESS: `success`).
    pub sold_out: u64,
    pub already_bought: u64,
    pub queued_records: u64,
    /// Records taken by log_workers and not yet stored, over every worker's list.
    pub processing_records: u64,
}

/// Creates a connection pool from the `redis:` section.
pub fn create_pool(config: &RedisConfig) -> Result<Pool, RedisStateError> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)));
    let manager = Manager::new_with_config(config.url.expose(), connection).map_err(|error| {
        RedisStateError::Config(format!(
            "{error}{}",
            crate::secret::url_parse_hint(config.url.expose())
        ))
    })?;
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
    batch_script: Script,
    take_logs_script: Script,
    leave_processing_script: Script,
    renew_lease_script: Script,
    claim_script: Script,
    unregister_script: Script,
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
            batch_script: Script::new(SECKILL_BATCH_SCRIPT),
            take_logs_script: Script::new(TAKE_LOGS_SCRIPT),
            leave_processing_script: Script::new(LEAVE_PROCESSING_SCRIPT),
            renew_lease_script: Script::new(RENEW_LEASE_SCRIPT),
            claim_script: Script::new(CLAIM_SCRIPT),
            unregister_script: Script::new(UNREGISTER_SCRIPT),
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
    /// processed request ids, the over flag, the record lists and the log_workers'
    /// registrations cleared, in one transaction. Records still queued from an earlier run are dropped with the rest of
    /// that run's state; callers drain log_worker first when they need them.
    pub async fn init_state(&self, activity_id: u64, stock: u64) -> Result<(), RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&keys.log_workers)
            .query_async(&mut *connection)
            .await?;
        let worker_keys: Vec<String> = workers
            .iter()
            .flat_map(|worker| [keys.processing(worker), keys.lease(worker)])
            .collect();
        let mut reset = redis::pipe();
        reset.atomic().del(&keys.fixed()[..]).ignore();
        if !worker_keys.is_empty() {
            reset.del(&worker_keys).ignore();
        }
        reset
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

    /// Processes one request atomically: a request id decided before gets that decision
    /// again (flagged as a repeat); otherwise one purchase per user, check and take stock,
    /// count the success, set the over flag at 0, queue `record` for log_worker and remember
    /// the decision, all in one script call.
    pub async fn run_seckill_script(
        &self,
        request: &SeckillRequest,
        record: &SeckillRecord,
    ) -> Result<Decision, RedisStateError> {
        let keys = ActivityKeys::new(request.activity_id);
        let record_json = record.to_json()?;
        let mut connection = self.pool.get().await?;
        let code: i64 = self
            .seckill_script
            .key(&keys.stock)
            .key(&keys.over)
            .key(&keys.buyers)
            .key(&keys.decided)
            .key(&keys.success)
            .key(&keys.logs)
            .key(&keys.outcome_counts)
            .arg(&request.request_id)
            .arg(request.user_id)
            .arg(record_json)
            .invoke_async(&mut *connection)
            .await?;
        match code {
            -1 => Err(RedisStateError::NotInitialised(request.activity_id)),
            code => decision_of(code),
        }
    }

    /// The hash of the single-request purchase script, for `EVALSHA` from other tools
    /// (`make bench-server` drives it with redis-benchmark).
    pub fn seckill_script_hash(&self) -> &str {
        self.seckill_script.get_hash()
    }

    /// Loads the single-request purchase script into Redis (for `EVALSHA` by hash).
    pub async fn load_seckill_script(&self) -> Result<(), RedisStateError> {
        let mut connection = self.pool.get().await?;
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SECKILL_SCRIPT)
            .query_async(&mut *connection)
            .await?;
        Ok(())
    }

    /// Runs the purchase of every request in `batch` in one script call and returns their
    /// outcomes, in order. Each request gets exactly the outcome
    /// [`RedisState::run_seckill_script`] would give it in the same order.
    pub async fn run_purchase_batch(
        &self,
        batch: &PurchaseBatch,
    ) -> Result<Vec<Decision>, RedisStateError> {
        if batch.requests == 0 {
            return Ok(Vec::new());
        }
        let mut connection = self.pool.get().await?;
        let reply = match batch.command.query_async(&mut *connection).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis restarted or SCRIPT FLUSH: load the script and send the call again.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(SECKILL_BATCH_SCRIPT)
                    .query_async(&mut *connection)
                    .await?;
                batch.command.query_async(&mut *connection).await?
            }
            other => other?,
        };
        let codes = match reply {
            redis::Value::Int(-1) => {
                return Err(RedisStateError::NotInitialised(batch.activity_id))
            }
            redis::Value::Int(other) => return Err(RedisStateError::UnexpectedReply(other)),
            redis::Value::Array(codes) => codes,
            _ => return Err(RedisStateError::UnexpectedReply(i64::MIN)),
        };
        if codes.len() != batch.requests {
            return Err(RedisStateError::BatchReply {
                requests: batch.requests,
                answers: codes.len(),
            });
        }
        codes
            .into_iter()
            .map(|code| match code {
                redis::Value::Int(code) => decision_of(code),
                _ => Err(RedisStateError::UnexpectedReply(i64::MIN)),
            })
            .collect()
    }

    /// An empty batch for `activity_id`, to fill with [`PurchaseBatch::push`].
    pub fn purchase_batch(&self, activity_id: u64) -> PurchaseBatch {
        PurchaseBatch::new(activity_id, self.batch_script.get_hash())
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
            Vec<String>,
            (Option<u64>, Option<u64>),
        );
        let (
            initial_stock,
            stock,
            success,
            over,
            buyers,
            requests_seen,
            queued,
            legacy,
            workers,
            (sold_out, already_bought),
        ): Reply = redis::pipe()
            .get(&keys.initial_stock)
            .get(&keys.stock)
            .get(&keys.success)
            .exists(&keys.over)
            .scard(&keys.buyers)
            .hlen(&keys.decided)
            .llen(&keys.logs)
            .llen(&keys.legacy_processing)
            .smembers(&keys.log_workers)
            .cmd("HMGET")
            .arg(&keys.outcome_counts)
            .arg(OUTCOME_SOLD_OUT)
            .arg(OUTCOME_ALREADY_BOUGHT)
            .query_async(&mut *connection)
            .await?;
        let mut processing = legacy;
        if !workers.is_empty() {
            let mut lengths = redis::pipe();
            for worker in &workers {
                lengths.llen(keys.processing(worker));
            }
            let held: Vec<u64> = lengths.query_async(&mut *connection).await?;
            processing += held.iter().sum::<u64>();
        }
        Ok(ActivitySnapshot {
            initial_stock,
            stock,
            success: success.unwrap_or(0),
            over,
            buyers,
            requests_seen,
            sold_out: sold_out.unwrap_or(0),
            already_bought: already_bought.unwrap_or(0),
            queued_records: queued,
            processing_records: processing,
        })
    }

    /// The requests of `user_id` this activity has decided, with their outcomes, sorted by
    /// request id, and whether the user is a buyer. Scans the whole decided hash (HSCAN):
    /// for looking one user up, not for a hot path.
    pub async fn user_decisions(
        &self,
        activity_id: u64,
        user_id: u64,
    ) -> Result<(Vec<(String, SeckillOutcome)>, bool), RedisStateError> {
        let keys = ActivityKeys::new(activity_id);
        let mut connection = self.pool.get().await?;
        let suffix = format!(":{user_id}");
        let mut decisions = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, entries): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&keys.decided)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut *connection)
                .await?;
            for (request_id, value) in entries {
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
        let buyer: bool = redis::cmd("SISMEMBER")
            .arg(&keys.buyers)
            .arg(user_id)
            .query_async(&mut *connection)
            .await?;
        Ok((decisions, buyer))
    }

    /// The reliable log queue of an activity as seen by one log_worker.
    pub fn log_queue(&self, activity_id: u64, worker: impl Into<String>) -> LogQueue {
        let keys = ActivityKeys::new(activity_id);
        let worker = worker.into();
        LogQueue {
            state: self.clone(),
            processing: keys.processing(&worker),
            lease: keys.lease(&worker),
            keys,
            worker,
        }
    }
}

/// The requests of one purchase script call, encoded straight into the command as they are
/// added (no per-request allocation). Reuse it with [`PurchaseBatch::start`].
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
            .arg(7)
            .arg(&keys.stock)
            .arg(&keys.over)
            .arg(&keys.buyers)
            .arg(&keys.decided)
            .arg(&keys.success)
            .arg(&keys.logs)
            .arg(&keys.outcome_counts)
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

    pub fn len(&self) -> usize {
        self.requests
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }
}

/// One log_worker's side of an activity's reliable log queue: it takes records into its own
/// processing list, acknowledges them once stored, keeps a lease alive, and claims the lists
/// of workers whose lease lapsed.
#[derive(Clone)]
pub struct LogQueue {
    state: RedisState,
    keys: ActivityKeys,
    worker: String,
    processing: String,
    lease: String,
}

impl LogQueue {
    /// This worker's id (part of its keys).
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The activity's counters ([`RedisState::snapshot`]).
    pub async fn snapshot(&self) -> Result<ActivitySnapshot, RedisStateError> {
        self.state.snapshot(self.keys.activity_id).await
    }

    /// Joins the workers set and takes a lease of `lease`; call again after
    /// [`LogQueue::renew`] said the worker lost its records.
    pub async fn register(&self, lease: Duration) -> Result<(), RedisStateError> {
        let mut connection = self.state.pool.get().await?;
        redis::pipe()
            .atomic()
            .sadd(&self.keys.log_workers, &self.worker)
            .ignore()
            .pset_ex(&self.lease, 1, duration_ms(lease))
            .ignore()
            .exec_async(&mut *connection)
            .await?;
        Ok(())
    }

    /// Extends the lease. `false`: the worker's records were claimed by another worker (its
    /// lease had lapsed) or the activity was reset; it must register again and must not store
    /// what it holds in memory (the claimer stores it).
    pub async fn renew(&self, lease: Duration) -> Result<bool, RedisStateError> {
        let mut connection = self.state.pool.get().await?;
        let renewed: i64 = self
            .state
            .renew_lease_script
            .key(&self.keys.log_workers)
            .key(&self.lease)
            .arg(&self.worker)
            .arg(duration_ms(lease))
            .invoke_async(&mut *connection)
            .await?;
        Ok(renewed == 1)
    }

    /// Leaves the workers set when nothing is held (a clean stop). Returns the records
    /// still held; then the registration stays, and the records are claimed once the lease
    /// lapses.
    pub async fn unregister(&self) -> Result<u64, RedisStateError> {
        let mut connection = self.state.pool.get().await?;
        Ok(self
            .state
            .unregister_script
            .key(&self.keys.log_workers)
            .key(&self.lease)
            .key(&self.processing)
            .arg(&self.worker)
            .invoke_async(&mut *connection)
            .await?)
    }

    /// Moves the records of every worker whose lease lapsed (and of the legacy shared list)
    /// to this worker's processing list. Returns how many were moved.
    pub async fn claim_abandoned(&self) -> Result<u64, RedisStateError> {
        let mut connection = self.state.pool.get().await?;
        let workers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.log_workers)
            .query_async(&mut *connection)
            .await?;
        let mut victims: Vec<(String, String, String)> = workers
            .iter()
            .filter(|worker| **worker != self.worker)
            .map(|worker| {
                (
                    worker.clone(),
                    self.keys.lease(worker),
                    self.keys.processing(worker),
                )
            })
            .collect();
        // The shared list of earlier versions has no lease: always claimable.
        victims.push((
            String::new(),
            // A lease no worker has (ids are never empty).
            self.keys.lease(""),
            self.keys.legacy_processing.clone(),
        ));
        let mut claimed = 0;
        for (worker, lease, list) in victims {
            let moved: i64 = self
                .state
                .claim_script
                .key(&self.keys.log_workers)
                .key(&lease)
                .key(&list)
                .key(&self.processing)
                .arg(&worker)
                .invoke_async(&mut *connection)
                .await?;
            if moved > 0 {
                tracing::warn!(
                    event = "recover",
                    from_worker = %worker,
                    records = moved,
                    "claimed the records of a log_worker whose lease lapsed"
                );
                claimed += moved as u64;
            }
        }
        Ok(claimed)
    }

    /// Moves up to `max` queued records to this worker's processing list and returns them.
    /// When the queue is empty, waits up to `wait` (capped below the response timeout) for
    /// one. After an error the move may have happened with its reply lost:
    /// [`LogQueue::held`] then says what this worker holds.
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<String>, RedisStateError> {
        let mut connection = self.state.pool.get().await?;
        let mut taken: Vec<String> = self
            .state
            .take_logs_script
            .key(&self.keys.logs)
            .key(&self.processing)
            .arg(max)
            .invoke_async(&mut *connection)
            .await?;
        if taken.is_empty() && !wait.is_zero() && max > 0 {
            let wait = wait.min(self.state.longest_block);
            let first: Option<String> = redis::cmd("BLMOVE")
                .arg(&self.keys.logs)
                .arg(&self.processing)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(wait.as_secs_f64())
                .query_async(&mut *connection)
                .await?;
            if let Some(first) = first {
                taken.push(first);
                let rest: Vec<String> = self
                    .state
                    .take_logs_script
                    .key(&self.keys.logs)
                    .key(&self.processing)
                    .arg(max - 1)
                    .invoke_async(&mut *connection)
                    .await?;
                taken.extend(rest);
            }
        }
        Ok(taken)
    }

    /// Removes records from this worker's processing list once they are stored; `dead`
    /// (undecodable ones among them) are kept in the dead-letter list, in the same atomic
    /// step, so none is in neither.
    pub async fn ack(&self, records: &[String], dead: &[String]) -> Result<(), RedisStateError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut invocation = self.state.leave_processing_script.key(&self.processing);
        invocation.key(&self.keys.dead).arg(dead.len());
        for record in dead {
            invocation.arg(record);
        }
        for record in records.iter().filter(|record| !dead.contains(record)) {
            invocation.arg(record);
        }
        let mut connection = self.state.pool.get().await?;
        let _: i64 = invocation.invoke_async(&mut *connection).await?;
        Ok(())
    }

    /// The records this worker took and has not acknowledged: after a failed take, and
    /// after claiming another worker's records.
    pub async fn held(&self) -> Result<Vec<String>, RedisStateError> {
        let mut connection = self.state.pool.get().await?;
        Ok(redis::cmd("LRANGE")
            .arg(&self.processing)
            .arg(0)
            .arg(-1)
            .query_async(&mut *connection)
            .await?)
    }
}

/// The scripts' outcome codes (also the fields of the outcome counts hash).
const OUTCOME_SUCCESS: i64 = 0;
const OUTCOME_SOLD_OUT: i64 = 1;
const OUTCOME_ALREADY_BOUGHT: i64 = 3;
/// Added to the code of a request id decided before.
const REPEAT: i64 = 10;

fn decision_of(code: i64) -> Result<Decision, RedisStateError> {
    let (first, repeat) = if code >= REPEAT {
        (code - REPEAT, true)
    } else {
        (code, false)
    };
    let outcome = match first {
        OUTCOME_SUCCESS => SeckillOutcome::Success,
        OUTCOME_SOLD_OUT => SeckillOutcome::SoldOut,
        OUTCOME_ALREADY_BOUGHT => SeckillOutcome::AlreadyBought,
        _ => return Err(RedisStateError::UnexpectedReply(code)),
    };
    Ok(Decision { outcome, repeat })
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = ActivityKeys::new(42);
        for key in keys
            .fixed()
            .into_iter()
            .map(str::to_string)
            .chain([keys.processing("w-1"), keys.lease("w-1")])
        {
            assert!(key.starts_with("seckill:{42}:"), "{key}");
        }
        assert_eq!(keys.processing("w-1"), "seckill:{42}:logs:processing:w-1");
    }
}
