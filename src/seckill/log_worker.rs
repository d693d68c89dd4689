//! log_worker's engine: moves purchase records from Redis to PostgreSQL without losing or
//! doubling any, even when killed at any point.
//!
//! Reliable queue ([`LogQueue`]): records are moved atomically from the activity's log list
//! to this worker's processing list, inserted in one multi-row `INSERT ... ON CONFLICT DO
//! NOTHING`, and only then removed from the processing list. What a worker holds is never
//! stranded:
//! - a take whose reply was lost (Redis restarted, connection dropped) is followed by
//!   reading back this worker's own processing list, which holds whatever the take moved;
//! - a worker killed between the move and the removal leaves its records in its list; once
//!   its lease lapses, a live worker claims them (at start and every half lease) and inserts
//!   them again, and the UNIQUE(activity_id, user_id) constraint turns the replay into a
//!   no-op. A worker whose lease is alive is never claimed from, so several workers on one
//!   activity do not insert each other's batches.

use crate::backoff::{self, RetryError};
use crate::common::SeckillRecord;
use crate::config::Config;
use crate::postgres::{self, PostgresError};
use crate::redis_state::{LogQueue, RedisState, RedisStateError};
use crate::report::Report;
use sqlx::PgPool;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogWorkerError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
    /// Shutdown came while a service was being retried; the source is its last error.
    #[error("stopped while {service} was unreachable")]
    Interrupted {
        service: &'static str,
        source: Box<LogWorkerError>,
    },
}

/// What a run of log_worker did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWorkerSummary {
    pub activity_id: u64,
    /// Records taken over from workers that died (their lease lapsed), and records found in
    /// this worker's own list after a take whose reply was lost.
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
    /// Adds what one insert loop did.
    fn add(&mut self, other: LogWorkerSummary) {
        self.recovered += other.recovered;
        self.inserted += other.inserted;
        self.already_stored += other.already_stored;
        self.malformed += other.malformed;
        self.batches += other.batches;
        if let Some(first) = other.first_batch_started {
            let earliest = self
                .first_batch_started
                .map_or(first, |mine| mine.min(first));
            self.first_batch_started = Some(earliest);
            let ended = first + other.active;
            self.active = self.active.max(ended.saturating_duration_since(earliest));
        }
    }

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
    shutdown: CancellationToken,
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
    let base_id = worker_id();
    tracing::info!(
        activity_id,
        worker = %base_id,
        loops = settings.concurrency,
        batch_size = settings.batch_size,
        drain = settings.drain,
        "log_worker started"
    );
    // Each loop is a worker of its own (own processing list and lease), so PostgreSQL
    // inserts of several batches overlap; they share the process's pools.
    let loops = (0..settings.concurrency).map(|index| {
        let queue = redis.log_queue(activity_id, format!("{base_id}-{index}"));
        run_loop(queue, &pool, config, &shutdown)
    });
    for result in futures::future::join_all(loops).await {
        summary.add(result?);
    }
    summary.elapsed = started.elapsed();
    tracing::info!(
        inserted = summary.inserted,
        already_stored = summary.already_stored,
        recovered = summary.recovered,
        batches = summary.batches,
        "log_worker stopped"
    );
    Ok(summary)
}

/// One insert loop under its own worker id: registers, keeps its lease, runs, and on a clean
/// stop leaves the workers set.
async fn run_loop(
    queue: LogQueue,
    pool: &PgPool,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<LogWorkerSummary, LogWorkerError> {
    let settings = &config.log_worker;
    let lease = Duration::from_millis(settings.lease_ms);
    retry(
        "Redis",
        shutdown,
        || queue.register(lease),
        RedisStateError::is_transient,
    )
    .await?;
    let lost = Arc::new(AtomicBool::new(false));
    let keeper = tokio::spawn(keep_lease(queue.clone(), lease, lost.clone()));
    let worker = Worker {
        pool,
        queue: &queue,
        lost: &lost,
        shutdown,
        batch_size: settings.batch_size,
        activity_id: config.seckill.activity_id,
    };
    let mut summary = LogWorkerSummary::default();
    let result = worker.run(settings, lease, &mut summary).await;
    keeper.abort();
    if result.is_ok() {
        // A clean stop holds nothing: leave, so nobody waits for this worker's lease.
        match queue.unregister().await {
            Ok(0) => {}
            Ok(held) => tracing::warn!(
                held,
                worker = queue.worker(),
                "stopping with records taken; another worker claims them once the lease lapses"
            ),
            Err(error) => {
                tracing::warn!(error = %Report(&error), "could not unregister; the lease lapses by itself")
            }
        }
    }
    result.map(|()| summary)
}

/// A unique id for this run of log_worker: host, process and a random part.
fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(40)
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Renews the lease every third of its length; notes when the records were claimed away
/// (the lease lapsed while Redis was unreachable longer than a lease).
async fn keep_lease(queue: LogQueue, lease: Duration, lost: Arc<AtomicBool>) {
    let mut ticker = tokio::time::interval(lease / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match queue.renew(lease).await {
            Ok(true) => {}
            Ok(false) => {
                if !lost.swap(true, Ordering::SeqCst) {
                    tracing::warn!(event = "recover", "this worker's lease lapsed and its records were claimed; registering again");
                }
            }
            Err(error) => {
                tracing::debug!(error = %Report(&error), "lease renewal failed; retrying")
            }
        }
    }
}

/// One worker's loop and what it needs.
struct Worker<'a> {
    pool: &'a PgPool,
    queue: &'a LogQueue,
    lost: &'a AtomicBool,
    shutdown: &'a CancellationToken,
    batch_size: usize,
    activity_id: u64,
}

impl Worker<'_> {
    async fn run(
        &self,
        settings: &crate::config::LogWorkerConfig,
        lease: Duration,
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        // Whatever dead workers took but did not finish.
        self.recover(summary).await?;
        let claim_every = lease / 2;
        let mut next_claim = Instant::now() + claim_every;
        let flush_interval = Duration::from_millis(settings.flush_interval_ms);
        let stop = self.shutdown.clone();
        while !self.shutdown.is_cancelled() {
            if self.lost.load(Ordering::SeqCst) {
                self.retry_redis(|| self.queue.register(lease)).await?;
                self.lost.store(false, Ordering::SeqCst);
                // What is still in this worker's list was not claimed: store it now.
                let held = self.retry_redis(|| self.queue.held()).await?;
                self.store_all(&held, summary).await?;
            }
            if Instant::now() >= next_claim {
                self.recover(summary).await?;
                next_claim = Instant::now() + claim_every;
            }
            let batch = tokio::select! {
                batch = self.take_batch(flush_interval, summary) => batch?,
                _ = stop.cancelled() => break,
            };
            if batch.is_empty() {
                if settings.drain {
                    let snapshot = self.retry_redis(|| self.queue.snapshot()).await?;
                    if snapshot.queued_records == 0 && snapshot.processing_records == 0 {
                        tracing::info!("queue drained");
                        break;
                    }
                    // Records held by a dead worker: claim them as soon as its lease lapses.
                    if snapshot.queued_records == 0 {
                        next_claim = next_claim.min(Instant::now() + flush_interval);
                    }
                }
                continue;
            }
            // Once taken, a batch is stored even if shutdown comes meanwhile.
            self.store(&batch, summary).await?;
        }
        Ok(())
    }

    /// Claims the records of workers whose lease lapsed and stores them.
    async fn recover(&self, summary: &mut LogWorkerSummary) -> Result<(), LogWorkerError> {
        let claimed = self.retry_redis(|| self.queue.claim_abandoned()).await?;
        if claimed == 0 {
            return Ok(());
        }
        let held = self.retry_redis(|| self.queue.held()).await?;
        summary.recovered += held.len() as u64;
        self.store_all(&held, summary).await
    }

    async fn store_all(
        &self,
        records: &[String],
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        for chunk in records.chunks(self.batch_size) {
            self.store(chunk, summary).await?;
        }
        Ok(())
    }

    async fn retry_redis<T, F, Fut>(&self, operation: F) -> Result<T, LogWorkerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RedisStateError>>,
    {
        retry(
            "Redis",
            self.shutdown,
            operation,
            RedisStateError::is_transient,
        )
        .await
    }

    /// Takes up to `batch_size` records, waiting at most `flush_interval` after the first
    /// one for the batch to fill. When a take fails, its reply may have been lost after
    /// the move: once Redis answers again, this worker's processing list is the batch.
    async fn take_batch(
        &self,
        flush_interval: Duration,
        summary: &mut LogWorkerSummary,
    ) -> Result<Vec<String>, LogWorkerError> {
        let mut batch = Vec::new();
        let mut deadline = None;
        while batch.len() < self.batch_size {
            let wait = match deadline {
                None => flush_interval,
                Some(deadline) => {
                    match Instant::checked_duration_since(&deadline, Instant::now()) {
                        Some(left) => left,
                        None => break,
                    }
                }
            };
            match self.queue.take(self.batch_size - batch.len(), wait).await {
                Ok(more) if more.is_empty() => break,
                Ok(more) => {
                    batch.extend(more);
                    deadline.get_or_insert_with(|| Instant::now() + flush_interval);
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(event = "retry", error = %Report(&error), "taking records failed; reading back what this worker holds once Redis answers");
                    let held = self.retry_redis(|| self.queue.held()).await?;
                    let unseen = held.len().saturating_sub(batch.len()) as u64;
                    if unseen > 0 {
                        tracing::warn!(
                            event = "recover",
                            records = unseen,
                            "records moved by a take whose reply was lost"
                        );
                        summary.recovered += unseen;
                    }
                    return Ok(held);
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(batch)
    }

    /// Inserts a batch and removes it from the processing list; undecodable records go to
    /// the dead-letter list. A batch whose records were claimed by another worker (this
    /// worker's lease lapsed) is left to that worker.
    async fn store(
        &self,
        batch: &[String],
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        let (pool, activity_id, shutdown) = (self.pool, self.activity_id, self.shutdown);
        if self.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
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
                    tracing::error!(event = "dlq", error = %Report(&error), "undecodable record moved to the dead-letter list");
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
        self.retry_redis(|| self.queue.ack(batch, &malformed))
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
    shutdown: &CancellationToken,
    operation: F,
    is_transient: fn(&E) -> bool,
) -> Result<T, LogWorkerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static + Into<LogWorkerError>,
{
    backoff::retry(service, shutdown, operation, is_transient)
        .await
        .map_err(|error| match error {
            RetryError::Failed(error) => error.into(),
            RetryError::Stopped(error) => LogWorkerError::Interrupted {
                service,
                source: Box::new(error.into()),
            },
        })
}
