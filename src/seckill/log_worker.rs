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
//!   them again, and the UNIQUE(activity_id, request_id) constraint turns the replay into a
//!   no-op. A worker whose lease is alive is never claimed from, so several workers on one
//!   activity do not insert each other's batches.
//!
//! Serving every activity (no `seckill.activity_id`), the activities come from PostgreSQL's
//! `activities` and the Redis registry, read again every `activities_refresh_ms`; each
//! insert loop sweeps them all, taking what each queue holds (no blocking wait: on a cluster
//! a blocking command would hold up the shared connection); a queue found empty is looked at
//! again after 10 ms, doubling up to 2 s while it stays empty. It registers in an
//! activity's queue (with a lease) the first time it takes from it.
//!
//! In sales with a payment window the same list carries order and payment events (queued by
//! the scripts that reserve, pay and expire): each batch's events are written to the
//! `orders` table (an upsert that never moves a state back) and published to
//! `seckill.order_events_topic` before the batch leaves the processing list, so an event is
//! published at least once, whichever process died when.

use crate::backoff::{self, RetryError};
use crate::common::SeckillRecord;
use crate::config::{Config, KafkaConfig, LogWorkerConfig, PostgresConfig, RedisConfig};
use crate::postgres::{self, PostgresError};
use crate::redis_state::{LogQueue, RedisState, RedisStateError};
use crate::report::Report;
use crate::seckill::activities::KnownError;
use crate::seckill::orders::publisher::{EventPublisher, PublishError};
use crate::seckill::orders::store::OrderChanges;
use crate::seckill::orders::OrderEvent;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
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
    #[error("cannot list the activities")]
    Activities(#[from] KnownError),
    #[error(transparent)]
    Publish(#[from] PublishError),
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
    /// The one activity served, or none: see `listed`.
    pub activity_id: Option<u64>,
    /// How many activities `log_worker.activity_ids` named; 0: every activity.
    pub listed: usize,
    /// Records taken over from workers that died (their lease lapsed), and records found in
    /// this worker's own list after a take whose reply was lost.
    pub recovered: u64,
    /// Rows written.
    pub inserted: u64,
    /// Records whose row already existed (replays after a crash).
    pub already_stored: u64,
    /// Undecodable records moved to the dead-letter list.
    pub malformed: u64,
    /// Order and payment events published (a batch published again counts again).
    pub events: u64,
    /// Order rows inserted or moved on (reserved, paid, expired).
    pub order_rows: u64,
    pub batches: u64,
    pub elapsed: Duration,
    /// From the start of the first batch to the end of the last: the busy part of the run.
    pub active: Duration,
    first_batch_started: Option<Instant>,
}

impl LogWorkerError {
    /// Redis unreachable or busy for now (a master down, a failover).
    fn is_transient_redis(&self) -> bool {
        matches!(self, Self::Redis(error) if error.is_transient())
    }
}

impl LogWorkerSummary {
    /// Adds what one insert loop did.
    fn add(&mut self, other: LogWorkerSummary) {
        self.recovered += other.recovered;
        self.inserted += other.inserted;
        self.already_stored += other.already_stored;
        self.malformed += other.malformed;
        self.events += other.events;
        self.order_rows += other.order_rows;
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
            "log_worker summary ({}): inserted={} already_stored={} recovered={} malformed={} batches={} busy={:.2}s elapsed={:.2}s rate={:.0} rows/s",
            match (self.activity_id, self.listed) {
                (Some(id), _) => format!("activity {id}"),
                (None, 0) => "every activity".to_string(),
                (None, 1) => "1 listed activity".to_string(),
                (None, listed) => format!("{listed} activities"),
            },
            self.inserted,
            self.already_stored,
            self.recovered,
            self.malformed,
            self.batches,
            self.active.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.rows_per_sec()
        )?;
        if self.events + self.order_rows > 0 {
            write!(f, " events={} order_rows={}", self.events, self.order_rows)?;
        }
        Ok(())
    }
}

const INSERT_RECORDS: &str = "
    INSERT INTO seckill_records
        (request_id, activity_id, user_id, request_initiation_time, processed_time, cost_ms)
    SELECT request_id, activity_id, user_id,
           to_timestamp(initiated_ms / 1000.0), to_timestamp(processed_ms / 1000.0), cost_ms
    FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
        AS batch(request_id, activity_id, user_id, initiated_ms, processed_ms, cost_ms)
    ON CONFLICT (activity_id, request_id) DO NOTHING";

/// What log_worker reads of the configuration.
#[derive(Debug, Clone)]
pub struct LogWorkerSettings {
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    /// Where order events go (`seckill.order_events_topic`).
    pub kafka: KafkaConfig,
    pub order_events_topic: String,
    /// The one activity to serve; `None`: the `worker.activity_ids`, or every activity
    /// when that is empty.
    pub activity_id: Option<u64>,
    pub worker: LogWorkerConfig,
}

impl From<&Config> for LogWorkerSettings {
    fn from(config: &Config) -> Self {
        Self {
            redis: config.redis.clone(),
            postgres: config.postgres.clone(),
            kafka: config.kafka.clone(),
            order_events_topic: config.seckill.order_events_topic.clone(),
            activity_id: config.seckill.activity_id,
            worker: config.log_worker.clone(),
        }
    }
}

/// The activities the insert loops serve, kept current by [`watch_activities`] when serving
/// every activity.
type ActivityList = Arc<std::sync::RwLock<Vec<u64>>>;

/// Runs log_worker until `shutdown` (finishing the batch in hand) or, with `drain`, until
/// every queue is empty.
pub async fn run_log_worker(
    settings: &LogWorkerSettings,
    shutdown: CancellationToken,
) -> Result<LogWorkerSummary, LogWorkerError> {
    let started = Instant::now();
    let worker_settings = &settings.worker;
    let mut summary = LogWorkerSummary {
        activity_id: settings.activity_id,
        listed: settings.worker.activity_ids.len(),
        ..LogWorkerSummary::default()
    };

    let pool = retry(
        "PostgreSQL",
        &shutdown,
        || postgres::connect(&settings.postgres),
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
    let redis = RedisState::connect(&settings.redis)?;
    let activities: ActivityList = Arc::new(std::sync::RwLock::new(Vec::new()));
    let listed = &worker_settings.activity_ids;
    let watcher = match settings.activity_id {
        Some(activity_id) => {
            if let Ok(mut list) = activities.write() {
                list.push(activity_id);
            }
            None
        }
        None if !listed.is_empty() => {
            if let Ok(mut list) = activities.write() {
                *list = listed.clone();
            }
            None
        }
        None => {
            let known = retry(
                "PostgreSQL and Redis",
                &shutdown,
                || crate::seckill::activities::known_activities(&pool, &redis),
                KnownError::is_transient,
            )
            .await?;
            if let Ok(mut list) = activities.write() {
                *list = known;
            }
            Some(tokio::spawn(watch_activities(
                pool.clone(),
                redis.clone(),
                activities.clone(),
                Duration::from_millis(worker_settings.activities_refresh_ms),
                shutdown.clone(),
            )))
        }
    };
    let base_id = worker_id();
    tracing::info!(
        activity_id = settings.activity_id.map_or_else(|| "every".to_string(), |id| id.to_string()),
        listed = worker_settings.activity_ids.len(),
        activities = activities.read().map(|list| list.len()).unwrap_or(0),
        worker = %base_id,
        loops = worker_settings.concurrency,
        batch_size = worker_settings.batch_size,
        drain = worker_settings.drain,
        "log_worker started"
    );
    // Each loop is a worker of its own (own processing lists and leases), so PostgreSQL
    // inserts of several batches overlap; they share the process's pools.
    let events = EventPublisher::new(settings.kafka.clone(), settings.order_events_topic.clone());
    let loops = (0..worker_settings.concurrency).map(|index| {
        let worker = Worker {
            redis: &redis,
            worker: format!("{base_id}-{index}"),
            pool: &pool,
            queues: Arc::new(std::sync::Mutex::new(Vec::new())),
            events: &events,
            activities: &activities,
            shutdown: &shutdown,
            batch_size: worker_settings.batch_size,
            single: settings.activity_id.is_some(),
        };
        run_loop(worker, worker_settings)
    });
    let results = futures::future::join_all(loops).await;
    events.close().await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    for result in results {
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

/// Reads the activities again every `every` (new sales are served within that).
async fn watch_activities(
    pool: PgPool,
    redis: RedisState,
    activities: ActivityList,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        match crate::seckill::activities::known_activities(&pool, &redis).await {
            Ok(known) => {
                if let Ok(mut list) = activities.write() {
                    if *list != known {
                        tracing::info!(activities = known.len(), "the activities changed");
                        *list = known;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(event = "retry", error = %Report(&error), "reading the activities failed; keeping the last list")
            }
        }
    }
}

/// One insert loop under its own worker id: takes records from each activity's queue
/// (registering with a lease in each the first time), keeps the leases, and on a clean stop
/// leaves every workers set.
async fn run_loop(
    worker: Worker<'_>,
    settings: &LogWorkerConfig,
) -> Result<LogWorkerSummary, LogWorkerError> {
    let lease = Duration::from_millis(settings.lease_ms);
    let keeper = tokio::spawn(keep_leases(worker.queues.clone(), lease));
    let mut summary = LogWorkerSummary::default();
    let result = worker.run(settings, lease, &mut summary).await;
    keeper.abort();
    if result.is_ok() {
        // A clean stop holds nothing: leave, so nobody waits for this worker's leases.
        for held in worker.held_queues() {
            match held.queue.unregister().await {
                Ok(0) => {}
                Ok(records) => tracing::warn!(
                    records,
                    worker = held.queue.worker(),
                    "stopping with records taken; another worker claims them once the lease lapses"
                ),
                Err(error) => {
                    tracing::warn!(error = %Report(&error), "could not unregister; the lease lapses by itself")
                }
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

/// One activity's queue as this worker holds it, and whether its records were claimed away.
#[derive(Clone)]
struct HeldQueue {
    activity_id: u64,
    queue: LogQueue,
    lost: Arc<AtomicBool>,
    /// A take or an acknowledgement failed (serving every activity): this worker's list may
    /// hold records it does not know of; read it back before the next take.
    reread: Arc<AtomicBool>,
    /// Being left (idle): its lease is no longer renewed.
    released: Arc<AtomicBool>,
}

/// The queues a worker registered in, shared with its lease keeper.
type Queues = Arc<std::sync::Mutex<Vec<HeldQueue>>>;

/// Renews every lease of the worker every third of its length; notes when an activity's
/// records were claimed away (the lease lapsed while Redis was unreachable longer than a
/// lease).
async fn keep_leases(queues: Queues, lease: Duration) {
    let mut ticker = tokio::time::interval(lease / 3);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let held: Vec<HeldQueue> = queues.lock().map(|q| q.clone()).unwrap_or_default();
        for held in held {
            if held.released.load(Ordering::SeqCst) {
                continue;
            }
            match held.queue.renew(lease).await {
                Ok(true) => {}
                // Left meanwhile (idle): not lost.
                Ok(false) if held.released.load(Ordering::SeqCst) => {}
                Ok(false) => {
                    if !held.lost.swap(true, Ordering::SeqCst) {
                        tracing::warn!(event = "recover", activity_id = held.activity_id, "this worker's lease lapsed and its records were claimed; registering again");
                    }
                }
                Err(error) => {
                    tracing::debug!(error = %Report(&error), "lease renewal failed; retrying")
                }
            }
        }
    }
}

/// Serving every activity, a queue found empty is looked at again after 10 ms, doubling up
/// to 2 s while it stays empty: many quiet sales cost little, a busy one is taken from at
/// every sweep.
const IDLE_FIRST: Duration = Duration::from_millis(10);
const IDLE_LONGEST: Duration = Duration::from_secs(2);
/// The first wait before an activity whose Redis did not answer is tried again.
const UNREACHABLE_FIRST: Duration = Duration::from_millis(100);

/// Per activity: when to look at its queue again, and the current wait (an idle or
/// unreachable queue is looked at less and less often).
type Due = HashMap<u64, (Instant, Duration)>;

/// An activity whose Redis did not answer waits 100 ms, doubling up to 2 s; said at the
/// first and at the longest wait.
fn back_off_unreachable(due: &mut Due, activity_id: u64, error: &LogWorkerError) {
    let idle = due
        .get(&activity_id)
        .map_or(Duration::ZERO, |(_, idle)| *idle);
    let idle = (idle * 2).clamp(UNREACHABLE_FIRST, IDLE_LONGEST);
    if idle == UNREACHABLE_FIRST || idle == IDLE_LONGEST {
        tracing::warn!(event = "retry", activity_id, error = %Report(error), "this activity's Redis is unreachable; serving the others and trying it again");
    }
    due.insert(activity_id, (Instant::now() + idle, idle));
}

/// Serving every activity: the activities whose Redis did not answer a probe (on a
/// cluster, the sales of a master that is down). They are not probed one by one, which
/// would cost a timed-out call per sale and sweep, and storm the cluster client with slot
/// refreshes: one of them is probed at a time, after 100 ms doubling to 2 s, and when it
/// answers they are all probed again.
#[derive(Default)]
struct Unreachable {
    ids: std::collections::BTreeSet<u64>,
    next: Option<Instant>,
    wait: Duration,
    rotor: usize,
}

impl Unreachable {
    /// The one set-aside activity to probe now, if it is time.
    fn canary(&mut self, now: Instant) -> Option<u64> {
        if self.ids.is_empty() || self.next.is_some_and(|next| next > now) {
            return None;
        }
        self.rotor = self.rotor.wrapping_add(1);
        self.ids.iter().nth(self.rotor % self.ids.len()).copied()
    }

    fn add(&mut self, ids: impl IntoIterator<Item = u64>, error: &RedisStateError) {
        let before = self.ids.len();
        self.ids.extend(ids);
        if before == 0 && !self.ids.is_empty() {
            tracing::warn!(event = "retry", activities = self.ids.len(), error = %Report(error), "Redis did not answer for some activities; serving the others and probing one of these at a time");
            self.back_off();
        }
    }

    fn back_off(&mut self) {
        self.wait = (self.wait * 2).clamp(UNREACHABLE_FIRST, IDLE_LONGEST);
        self.next = Some(Instant::now() + self.wait);
    }

    /// The probed one answered: every set-aside activity is probed again.
    fn answered(&mut self) {
        tracing::info!(
            activities = self.ids.len(),
            "Redis answers again; probing the activities set aside"
        );
        *self = Self::default();
    }
}

/// One worker's loop and what it needs.
struct Worker<'a> {
    redis: &'a RedisState,
    worker: String,
    pool: &'a PgPool,
    queues: Queues,
    /// Publishes the order events of the batches.
    events: &'a EventPublisher,
    activities: &'a ActivityList,
    shutdown: &'a CancellationToken,
    batch_size: usize,
    /// Serving one activity: takes wait for records (a blocking move on a single node).
    single: bool,
}

impl Worker<'_> {
    fn held_queues(&self) -> Vec<HeldQueue> {
        self.queues.lock().map(|q| q.clone()).unwrap_or_default()
    }

    /// This worker's queue of `activity_id`, when it joined it.
    fn joined(&self, activity_id: u64) -> Option<HeldQueue> {
        self.queues
            .lock()
            .ok()
            .and_then(|q| q.iter().find(|h| h.activity_id == activity_id).cloned())
    }

    /// This worker's queue of `activity_id`: registered (with a lease) the first time, when
    /// it also takes over what dead workers left there.
    async fn queue_of(
        &self,
        activity_id: u64,
        lease: Duration,
        summary: &mut LogWorkerSummary,
    ) -> Result<HeldQueue, LogWorkerError> {
        if let Some(held) = self.joined(activity_id) {
            return Ok(held);
        }
        let held = HeldQueue {
            activity_id,
            queue: self.redis.log_queue(activity_id, self.worker.clone()),
            lost: Arc::new(AtomicBool::new(false)),
            reread: Arc::new(AtomicBool::new(false)),
            released: Arc::new(AtomicBool::new(false)),
        };

        self.retry_redis(|| held.queue.register(lease)).await?;
        if let Ok(mut queues) = self.queues.lock() {
            queues.push(held.clone());
        }
        // Whatever dead workers took but did not finish.
        self.recover(&held, summary).await?;
        Ok(held)
    }

    /// Serving every activity: which of the due queues this worker has not joined have
    /// work (found in one round trip per node instead of one per activity); the others wait
    /// for their next turn (idle ones less and less often) without being joined. Activities
    /// whose Redis did not answer are set aside in `unreachable` and only one of them is
    /// probed at a time.
    async fn probe_unjoined(
        &self,
        activities: &[u64],
        due: &mut Due,
        unreachable: &mut Unreachable,
    ) -> Result<HashSet<u64>, LogWorkerError> {
        let now = Instant::now();
        let mut unjoined: Vec<u64> = activities
            .iter()
            .copied()
            .filter(|id| due.get(id).is_none_or(|(next, _)| *next <= now))
            .filter(|id| !unreachable.ids.contains(id))
            .filter(|&id| self.joined(id).is_none())
            .collect();
        let canary = unreachable.canary(now);
        unjoined.extend(canary);
        if unjoined.is_empty() {
            return Ok(HashSet::new());
        }
        let probe = match self.redis.probe_queues(&unjoined).await {
            Ok(probe) => probe,
            Err(error) if error.is_transient() => {
                if canary.is_some() {
                    unreachable.back_off();
                }
                unreachable.add(unjoined, &error);
                return Ok(HashSet::new());
            }
            Err(error) => return Err(error.into()),
        };
        let probed = Instant::now();
        for &id in &probe.idle {
            let idle = due.get(&id).map_or(Duration::ZERO, |(_, idle)| *idle);
            let idle = (idle * 2).clamp(IDLE_FIRST, IDLE_LONGEST);
            due.insert(id, (probed + idle, idle));
        }
        if let Some(canary) = canary {
            if probe.unreachable.iter().any(|(id, _)| *id == canary) {
                unreachable.back_off();
            } else {
                unreachable.answered();
            }
        }
        if let Some((_, error)) = probe.unreachable.first() {
            unreachable.add(probe.unreachable.iter().map(|(id, _)| *id), error);
        }
        Ok(probe.with_work.into_iter().collect())
    }

    /// Serving every activity, leaves the queue of an activity that stayed idle (its lease
    /// no longer renewed), so a worker holds leases only in the sales with work. It joins
    /// again when records come. A queue still holding records stays joined.
    async fn leave_idle(&self, activity_id: u64) {
        let Some(held) = self.joined(activity_id) else {
            return;
        };
        held.released.store(true, Ordering::SeqCst);
        match held.queue.unregister().await {
            Ok(0) => {
                if let Ok(mut queues) = self.queues.lock() {
                    queues.retain(|h| h.activity_id != activity_id);
                }
            }
            Ok(_) => held.released.store(false, Ordering::SeqCst),
            Err(error) => {
                held.released.store(false, Ordering::SeqCst);
                tracing::debug!(activity_id, error = %Report(&error), "leaving an idle queue failed; trying again later");
            }
        }
    }

    async fn run(
        &self,
        settings: &LogWorkerConfig,
        lease: Duration,
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        let claim_every = lease / 2;
        let mut next_claim = Instant::now() + claim_every;
        let flush_interval = Duration::from_millis(settings.flush_interval_ms);
        let mut due = Due::new();
        let mut unreachable = Unreachable::default();
        let stop = self.shutdown.clone();
        while !self.shutdown.is_cancelled() {
            let activities: Vec<u64> = self
                .activities
                .read()
                .map(|l| l.clone())
                .unwrap_or_default();
            if Instant::now() >= next_claim {
                for held in self.held_queues() {
                    match self.recover(&held, summary).await {
                        Ok(()) => {}
                        // Claimed at the next round.
                        Err(error) if !self.single && error.is_transient_redis() => {}
                        Err(error) => return Err(error),
                    }
                }
                next_claim = Instant::now() + claim_every;
            }
            let with_work = if self.single {
                HashSet::new()
            } else {
                self.probe_unjoined(&activities, &mut due, &mut unreachable)
                    .await?
            };
            let mut took = false;
            for &activity_id in &activities {
                if self.shutdown.is_cancelled() {
                    break;
                }
                let (next, idle) = due
                    .get(&activity_id)
                    .copied()
                    .unwrap_or((Instant::now(), Duration::ZERO));
                if !self.single
                    && (next > Instant::now()
                        || (!with_work.contains(&activity_id)
                            && self.joined(activity_id).is_none()))
                {
                    continue;
                }
                let wait = if self.single {
                    flush_interval
                } else {
                    Duration::ZERO
                };
                let served = tokio::select! {
                    served = self.serve(activity_id, lease, wait, summary) => served,
                    _ = stop.cancelled() => break,
                };
                match served {
                    Ok(true) => {
                        took = true;
                        due.insert(activity_id, (Instant::now(), Duration::ZERO));
                    }
                    Ok(false) => {
                        let idle = (idle * 2).clamp(IDLE_FIRST, IDLE_LONGEST);
                        if !self.single && idle == IDLE_LONGEST {
                            self.leave_idle(activity_id).await;
                        }
                        due.insert(activity_id, (Instant::now() + idle, idle));
                    }
                    // Serving every activity, one unreachable (its master down) waits; the
                    // others go on.
                    Err(error) if !self.single && error.is_transient_redis() => {
                        back_off_unreachable(&mut due, activity_id, &error);
                    }
                    Err(error) => return Err(error),
                }
            }
            if took {
                continue;
            }
            if settings.drain {
                let mut left = (0_u64, 0_u64);
                for &activity_id in &activities {
                    match self.retry_redis(|| self.redis.snapshot(activity_id)).await {
                        Ok(snapshot) => {
                            left.0 += snapshot.queued_records;
                            left.1 += snapshot.processing_records;
                        }
                        // Not known to be drained.
                        Err(error) if error.is_transient_redis() => left.0 += 1,
                        Err(error) => return Err(error),
                    }
                }
                if left == (0, 0) {
                    tracing::info!("queues drained");
                    break;
                }
                // Records held by a dead worker: claim them as soon as its lease lapses.
                if left.0 == 0 {
                    next_claim = next_claim.min(Instant::now() + flush_interval);
                }
                // Records queued: look at every queue again now.
                due.clear();
            }
            if !self.single || activities.is_empty() {
                let next = due
                    .values()
                    .map(|(next, _)| *next)
                    .min()
                    .unwrap_or_else(|| Instant::now() + IDLE_FIRST)
                    .min(next_claim)
                    .min(unreachable.next.unwrap_or(next_claim))
                    .max(Instant::now() + Duration::from_millis(1));
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
        Ok(())
    }

    /// One activity's turn: registers the first time, stores what this worker's list holds
    /// after a lost lease or a failed take, then takes a batch and stores it. `true`: it
    /// stored a batch.
    async fn serve(
        &self,
        activity_id: u64,
        lease: Duration,
        wait: Duration,
        summary: &mut LogWorkerSummary,
    ) -> Result<bool, LogWorkerError> {
        let held = self.queue_of(activity_id, lease, summary).await?;
        if held.lost.load(Ordering::SeqCst) {
            self.retry_redis(|| held.queue.register(lease)).await?;
            held.lost.store(false, Ordering::SeqCst);
            // What is still in this worker's list was not claimed: store it now.
            held.reread.store(true, Ordering::SeqCst);
        }
        if held.reread.load(Ordering::SeqCst) {
            let records = self.retry_redis(|| held.queue.held()).await?;
            held.reread.store(false, Ordering::SeqCst);
            self.store_all(&held, &records, summary).await?;
        }
        let batch = self.take_batch(&held, wait, summary).await?;
        if batch.is_empty() {
            return Ok(false);
        }
        // Once taken, a batch is stored even if shutdown comes meanwhile.
        self.store(&held, &batch, summary).await?;
        Ok(true)
    }

    /// Claims the records of `held`'s activity's workers whose lease lapsed and stores them.
    async fn recover(
        &self,
        held: &HeldQueue,
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        let claimed = self.retry_redis(|| held.queue.claim_abandoned()).await?;
        if claimed == 0 {
            return Ok(());
        }
        let records = self.retry_redis(|| held.queue.held()).await?;
        summary.recovered += records.len() as u64;
        self.store_all(held, &records, summary).await
    }

    async fn store_all(
        &self,
        held: &HeldQueue,
        records: &[String],
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        for chunk in records.chunks(self.batch_size) {
            self.store(held, chunk, summary).await?;
        }
        Ok(())
    }

    /// Serving one activity, Redis is retried with backoff until it answers (or shutdown);
    /// serving every activity, once: the sweep moves on and comes back to that activity.
    async fn retry_redis<T, F, Fut>(&self, mut operation: F) -> Result<T, LogWorkerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RedisStateError>>,
    {
        if !self.single {
            return Ok(operation().await?);
        }
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
        held: &HeldQueue,
        flush_interval: Duration,
        summary: &mut LogWorkerSummary,
    ) -> Result<Vec<String>, LogWorkerError> {
        let mut batch = Vec::new();
        let mut deadline = None;
        while batch.len() < self.batch_size {
            let wait = match deadline {
                // Serving every activity: what is there now, no waiting.
                _ if flush_interval.is_zero() => Duration::ZERO,
                None => flush_interval,
                Some(deadline) => {
                    match Instant::checked_duration_since(&deadline, Instant::now()) {
                        Some(left) => left,
                        None => break,
                    }
                }
            };
            match held.queue.take(self.batch_size - batch.len(), wait).await {
                Ok(more) if more.is_empty() => break,
                Ok(more) => {
                    batch.extend(more);
                    deadline.get_or_insert_with(|| Instant::now() + flush_interval);
                }
                // Serving every activity: the list is read back at this activity's next turn.
                Err(error) if error.is_transient() && !self.single => {
                    held.reread.store(true, Ordering::SeqCst);
                    return Err(error.into());
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(event = "retry", error = %Report(&error), "taking records failed; reading back what this worker holds once Redis answers");
                    let records = self.retry_redis(|| held.queue.held()).await?;
                    let unseen = records.len().saturating_sub(batch.len()) as u64;
                    if unseen > 0 {
                        tracing::warn!(
                            event = "recover",
                            records = unseen,
                            "records moved by a take whose reply was lost"
                        );
                        summary.recovered += unseen;
                    }
                    return Ok(records);
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
        held: &HeldQueue,
        batch: &[String],
        summary: &mut LogWorkerSummary,
    ) -> Result<(), LogWorkerError> {
        let (pool, activity_id, shutdown) = (self.pool, held.activity_id, self.shutdown);
        if held.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        let mut columns = Columns::with_capacity(batch.len());
        let mut malformed = Vec::new();
        let mut orders = OrderChanges::default();
        let mut events: Vec<(u64, &str)> = Vec::new();
        for raw in batch {
            if OrderEvent::is_event(raw.as_bytes()) {
                match OrderEvent::from_json(raw.as_bytes()) {
                    Ok(event) if event.activity_id == activity_id => {
                        orders.changed(&event);
                        events.push((event.user_id, raw.as_str()));
                    }
                    Ok(event) => {
                        tracing::error!(
                            event_activity = event.activity_id,
                            activity_id,
                            "order event of another activity in this activity's list"
                        );
                        malformed.push(raw.clone());
                    }
                    Err(error) => {
                        tracing::error!(event = "dlq", error = %Report(&error), "undecodable order event moved to the dead-letter list");
                        malformed.push(raw.clone());
                    }
                }
                continue;
            }
            match SeckillRecord::from_json(raw.as_bytes()) {
                Ok(record) if record.activity_id == activity_id => {
                    orders.reserved(&record);
                    columns.push(record);
                }
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
        let order_rows = if orders.is_empty() {
            0
        } else {
            retry(
                "PostgreSQL",
                shutdown,
                || orders.upsert(pool),
                PostgresError::is_transient,
            )
            .await?
        };
        self.events.publish(&events, shutdown).await?;
        summary.events += events.len() as u64;
        summary.order_rows += order_rows;
        if let Err(error) = self.retry_redis(|| held.queue.ack(batch, &malformed)).await {
            // Stored but still listed: stored again (a no-op) at the next read back.
            held.reread.store(true, Ordering::SeqCst);
            return Err(error);
        }
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
