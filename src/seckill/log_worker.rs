//! log_worker's engine: moves purchase records from Redis to PostgreSQL without losing or
//! doubling any, even when killed at any point.
//!
//! Reliable queue: records are moved atomically from the activity's log list to its
//! processing list, inserted in one multi-row `INSERT ... ON CONFLICT DO NOTHING`, and only
//! then removed from the processing list. A worker killed between the move and the removal
//! leaves its records in the processing list; the next start inserts them again, and the
//! UNIQUE(activity_id, user_id) constraint turns the replay into a no-op.

use crate::backoff::{self, RetryError};
use crate::common::SeckillRecord;
use crate::config::Config;
use crate::postgres::{self, PostgresError};
use crate::redis_state::{RedisState, RedisStateError};
use crate::shutdown::Shutdown;
use sqlx::PgPool;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogWorkerError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] PostgresError),
    #[error("Redis: {0}")]
    Redis(#[from] RedisStateError),
    #[error("stopped while {0} was unreachable")]
    Interrupted(&'static str),
}

/// What a run of log_worker did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWorkerSummary {
    pub activity_id: u64,
    /// Records found in the processing list at start (left by a crashed worker).
    pub recovered: u64,
    /// Rows written.
    pub inserted: u64,
    /// Records whose row already existed (replays after a crash).
    pub already_stored: u64,
    /// Undecodable records moved to the dead-letter list.
    pub malformed: u64,
    pub batches: u64,
    pub elapsed: Duration,
    /// From the start of the first batch to the end of the last: the busy part of the run.
    pub active: Duration,
    first_batch_started: Option<Instant>,
}

impl LogWorkerSummary {
    pub fn rows_per_sec(&self) -> f64 {
        self.inserted as f64 / self.active.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for LogWorkerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log_worker summary (activity {}): inserted={} already_stored={} recovered={} malformed={} batches={} busy={:.2}s elapsed={:.2}s rate={:.0} rows/s",
            self.activity_id,
            self.inserted,
            self.already_stored,
            self.recovered,
            self.malformed,
            self.batches,
            self.active.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.rows_per_sec()
        )
    }
}

const INSERT_RECORDS: &str = "
    INSERT INTO seckill_records
        (request_id, activity_id, user_id, request_initiation_time, processed_time, cost_ms)
    SELECT request_id, activity_id, user_id,
           to_timestamp(initiated_ms / 1000.0), to_timestamp(processed_ms / 1000.0), cost_ms
    FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
        AS batch(request_id, activity_id, user_id, initiated_ms, processed_ms, cost_ms)
    ON CONFLICT (activity_id, user_id) DO NOTHING";

/// Runs log_worker until `shutdown` (finishing the batch in hand) or, with `drain`, until
/// the queue is empty.
pub async fn run_log_worker(
    config: &Config,
    shutdown: Shutdown,
) -> Result<LogWorkerSummary, LogWorkerError> {
    let started = Instant::now();
    let activity_id = config.seckill.activity_id;
    let settings = &config.log_worker;
    let mut summary = LogWorkerSummary {
        activity_id,
        ..LogWorkerSummary::default()
    };

    let pool = retry(
        "PostgreSQL",
        &shutdown,
        || postgres::connect(&config.postgres),
        PostgresError::is_transient,
    )
    .await?;
    retry(
        "PostgreSQL",
        &shutdown,
        || postgres::migrate(&pool),
        PostgresError::is_transient,
    )
    .await?;
    let redis = RedisState::connect(&config.redis)?;
    tracing::info!(
        activity_id,
        batch_size = settings.batch_size,
        drain = settings.drain,
        "log_worker started"
    );

    // Whatever a crashed worker took but did not finish.
    let left_over = retry(
        "Redis",
        &shutdown,
        || redis.processing_log_records(activity_id),
        RedisStateError::is_transient,
    )
    .await?;
    if !left_over.is_empty() {
        tracing::warn!(
            records = left_over.len(),
            "recovering records a previous worker left in processing"
        );
        summary.recovered = left_over.len() as u64;
        for chunk in left_over.chunks(settings.batch_size) {
            store(&pool, &redis, activity_id, chunk, &shutdown, &mut summary).await?;
        }
    }

    let flush_interval = Duration::from_millis(settings.flush_interval_ms);
    let mut stop = shutdown.clone();
    while !shutdown.is_triggered() {
        let batch = tokio::select! {
            batch = take_batch(&redis, activity_id, settings.batch_size, flush_interval, &shutdown) => batch?,
            _ = stop.wait() => break,
        };
        if batch.is_empty() {
            if settings.drain {
                let snapshot = retry(
                    "Redis",
                    &shutdown,
                    || redis.snapshot(activity_id),
                    RedisStateError::is_transient,
                )
                .await?;
                if snapshot.queued_records == 0 && snapshot.processing_records == 0 {
                    tracing::info!("queue drained");
                    break;
                }
            }
            continue;
        }
        // Once taken, a batch is stored even if shutdown comes meanwhile.
        store(&pool, &redis, activity_id, &batch, &shutdown, &mut summary).await?;
    }
    summary.elapsed = started.elapsed();
    tracing::info!(
        inserted = summary.inserted,
        already_stored = summary.already_stored,
        batches = summary.batches,
        "log_worker stopped"
    );
    Ok(summary)
}

/// Takes up to `batch_size` records, waiting at most `flush_interval` after the first one for
/// the batch to fill.
async fn take_batch(
    redis: &RedisState,
    activity_id: u64,
    batch_size: usize,
    flush_interval: Duration,
    shutdown: &Shutdown,
) -> Result<Vec<String>, LogWorkerError> {
    let take = |max: usize, wait: Duration| {
        retry(
            "Redis",
            shutdown,
            move || redis.take_log_records(activity_id, max, wait),
            RedisStateError::is_transient,
        )
    };
    let mut batch = take(batch_size, flush_interval).await?;
    if batch.is_empty() {
        return Ok(batch);
    }
    let deadline = Instant::now() + flush_interval;
    while batch.len() < batch_size {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let more = take(batch_size - batch.len(), left).await?;
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
    Ok(batch)
}

/// Inserts a batch and removes it from the processing list; undecodable records go to the
/// dead-letter list.
async fn store(
    pool: &PgPool,
    redis: &RedisState,
    activity_id: u64,
    batch: &[String],
    shutdown: &Shutdown,
    summary: &mut LogWorkerSummary,
) -> Result<(), LogWorkerError> {
    let started = Instant::now();
    let mut columns = Columns::with_capacity(batch.len());
    let mut malformed = Vec::new();
    for raw in batch {
        match SeckillRecord::from_json(raw.as_bytes()) {
            Ok(record) if record.activity_id == activity_id => columns.push(record),
            Ok(record) => {
                tracing::error!(
                    record_activity = record.activity_id,
                    activity_id,
                    "record of another activity in this activity's list"
                );
                malformed.push(raw.clone());
            }
            Err(error) => {
                tracing::error!(event = "dlq", %error, "undecodable record moved to the dead-letter list");
                malformed.push(raw.clone());
            }
        }
    }
    let inserted = if columns.len() == 0 {
        0
    } else {
        retry(
            "PostgreSQL",
            shutdown,
            || async {
                sqlx::query(INSERT_RECORDS)
                    .bind(&columns.request_id)
                    .bind(&columns.activity_id)
                    .bind(&columns.user_id)
                    .bind(&columns.initiated_ms)
                    .bind(&columns.processed_ms)
                    .bind(&columns.cost_ms)
                    .execute(pool)
                    .await
                    .map(|result| result.rows_affected())
                    .map_err(PostgresError::from)
            },
            PostgresError::is_transient,
        )
        .await?
    };
    if !malformed.is_empty() {
        retry(
            "Redis",
            shutdown,
            || redis.dead_letter_log_records(activity_id, &malformed),
            RedisStateError::is_transient,
        )
        .await?;
    }
    retry(
        "Redis",
        shutdown,
        || redis.ack_log_records(activity_id, batch),
        RedisStateError::is_transient,
    )
    .await?;
    summary.inserted += inserted;
    summary.already_stored += columns.len() as u64 - inserted;
    metrics::counter!("seckill_rows_written_total").increment(inserted);
    metrics::counter!("seckill_rows_already_stored_total")
        .increment(columns.len() as u64 - inserted);
    metrics::histogram!("seckill_batch_rows").record(columns.len() as f64);
    summary.malformed += malformed.len() as u64;
    summary.batches += 1;
    summary.active = summary.first_batch_started.get_or_insert(started).elapsed();
    Ok(())
}

/// A batch as PostgreSQL arrays, one per column (for `UNNEST`).
struct Columns {
    request_id: Vec<String>,
    activity_id: Vec<i64>,
    user_id: Vec<i64>,
    initiated_ms: Vec<i64>,
    processed_ms: Vec<i64>,
    cost_ms: Vec<i64>,
}

impl Columns {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            request_id: Vec::with_capacity(capacity),
            activity_id: Vec::with_capacity(capacity),
            user_id: Vec::with_capacity(capacity),
            initiated_ms: Vec::with_capacity(capacity),
            processed_ms: Vec::with_capacity(capacity),
            cost_ms: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, record: SeckillRecord) {
        // Ids above i64::MAX are rejected when requests are decoded; saturate defensively.
        let id = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.request_id.push(record.request_id);
        self.activity_id.push(id(record.activity_id));
        self.user_id.push(id(record.user_id));
        self.initiated_ms.push(record.request_initiation_time);
        self.processed_ms.push(record.processed_time);
        self.cost_ms.push(id(record.cost_ms));
    }

    fn len(&self) -> usize {
        self.request_id.len()
    }
}

/// [`backoff::retry`] with the error mapped into this module's error.
async fn retry<T, E, F, Fut>(
    service: &'static str,
    shutdown: &Shutdown,
    operation: F,
    is_transient: fn(&E) -> bool,
) -> Result<T, LogWorkerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display + Into<LogWorkerError>,
{
    backoff::retry(service, shutdown, operation, is_transient)
        .await
        .map_err(|error| match error {
            RetryError::Failed(error) => error.into(),
            RetryError::Stopped(_) => LogWorkerError::Interrupted(service),
        })
}
