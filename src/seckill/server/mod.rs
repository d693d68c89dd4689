//! server_kafka's engine: a consumer group whose members fill batches of requests from their
//! message stream and run the purchase of a whole batch in one atomic Lua call, several
//! calls in flight per member, storing offsets only behind fully processed batches.
//!
//! Per message: decode (malformed -> dead-letter topic), skip requests of other activities
//! (another group serves them), answer TIMEOUT for requests older than `timeout_ms` when
//! their batch is sent, else add them to the batch's script call ([`consumer`]). Redis being
//! unreachable is retried with backoff until it answers or shutdown; an abandoned batch's
//! offsets are never stored, so its messages are delivered again.
//!
//! `/ready` (telemetry) answers 200 once the state is prepared and every consumer has its
//! assignment; static membership (`server_kafka.instance_id`) lets a restarted server take
//! its partitions back without a rebalance on Apache Kafka.

mod consumer;

use crate::backoff::{retry, RetryError};
use crate::common::{SeckillOutcome, SeckillResult};
use crate::config::Config;
use crate::kafka::broker::BrokerKind;
use crate::kafka::sink::{
    BytesSerializer, KafkaSink, MessageSerializer, SerializeError, SinkConfig, SinkError,
};
use crate::kafka::KafkaError;
use crate::redis_state::{ActivitySnapshot, RedisState, RedisStateError};
use crate::report::Report;
use hdrhistogram::Histogram;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Header of a dead-letter message that says why it was rejected.
pub const DLQ_ERROR_HEADER: &str = "seckill.error";
/// Header of a dead-letter message that says where it was read: `topic/partition/offset`.
pub const DLQ_SOURCE_HEADER: &str = "seckill.source";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("dead-letter topic")]
    DeadLetter(#[from] SinkError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
    #[error("cannot create the latency histogram")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("a consumer task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl From<rdkafka::error::KafkaError> for ServerError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// Counters shared by the consumer tasks and the status line.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Milliseconds since the run started: first message received, last one finished.
    first_received_ms: AtomicU64,
    last_finished_ms: AtomicU64,
    success: AtomicU64,
    sold_out: AtomicU64,
    already_bought: AtomicU64,
    /// Requests whose id was decided before, answered with that first outcome again.
    repeated: AtomicU64,
    timeout: AtomicU64,
    malformed: AtomicU64,
    other_activity: AtomicU64,
}

impl ServerCounters {
    /// Adds `count` answers of `outcome`.
    fn add(&self, outcome: SeckillOutcome, count: u64) {
        let counter = match outcome {
            SeckillOutcome::Success => &self.success,
            SeckillOutcome::SoldOut => &self.sold_out,
            SeckillOutcome::AlreadyBought => &self.already_bought,
            SeckillOutcome::Timeout => &self.timeout,
        };
        counter.fetch_add(count, Ordering::Relaxed);
    }

    /// A message was received at `at` (the first call marks the start of the busy window).
    fn received(&self, started: Instant, at: Instant) {
        let since_start = at.saturating_duration_since(started).as_millis() as u64;
        // Only the first call changes it (0 means unset; a 0 ms start is counted as 1).
        let _ = self.first_received_ms.compare_exchange(
            0,
            since_start.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn finished(&self, started: Instant) {
        self.last_finished_ms
            .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn active(&self) -> Duration {
        let first = self.first_received_ms.load(Ordering::Relaxed);
        let last = self.last_finished_ms.load(Ordering::Relaxed);
        Duration::from_millis(last.saturating_sub(first))
    }

    pub fn snapshot(&self) -> OutcomeCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        OutcomeCounts {
            success: get(&self.success),
            sold_out: get(&self.sold_out),
            repeated: get(&self.repeated),
            already_bought: get(&self.already_bought),
            timeout: get(&self.timeout),
            malformed: get(&self.malformed),
            other_activity: get(&self.other_activity),
        }
    }
}

/// How many messages ended how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// First decisions by outcome.
    pub success: u64,
    pub sold_out: u64,
    pub already_bought: u64,
    pub timeout: u64,
    /// Requests decided before (redeliveries, duplicated sends), answered with their first
    /// outcome again.
    pub repeated: u64,
    /// Undecodable messages, sent to the dead-letter topic.
    pub malformed: u64,
    /// Valid requests for another activity, left to that activity's group.
    pub other_activity: u64,
}

impl OutcomeCounts {
    /// Messages fully handled.
    pub fn total(&self) -> u64 {
        self.success
            + self.sold_out
            + self.already_bought
            + self.repeated
            + self.timeout
            + self.malformed
            + self.other_activity
    }
}

/// Request latency (`cost_ms`: creation by the client to processing) percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50_ms: histogram.value_at_quantile(0.50),
            p95_ms: histogram.value_at_quantile(0.95),
            p99_ms: histogram.value_at_quantile(0.99),
            max_ms: histogram.max(),
        }
    }
}

/// What a run of server_kafka did.
#[derive(Debug, Clone)]
pub struct ServerSummary {
    pub activity_id: u64,
    pub counts: OutcomeCounts,
    pub elapsed: Duration,
    /// From the first message received to the last one finished: the busy part of the run.
    pub active: Duration,
    pub latency: LatencySummary,
    pub redis: Option<ActivitySnapshot>,
}

impl ServerSummary {
    /// Throughput while there was work (idle time before and after is not counted).
    pub fn requests_per_sec(&self) -> f64 {
        self.counts.total() as f64 / self.active.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ServerSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(f, "server_kafka summary (activity {})", self.activity_id)?;
        writeln!(
            f,
            "  processed       {} messages in {:.2} s busy ({:.0}/s), {:.2} s run",
            c.total(),
            self.active.as_secs_f64(),
            self.requests_per_sec(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  outcomes        success={} sold_out={} already_bought={} timeout={} repeated={} malformed={} other_activity={}",
            c.success, c.sold_out, c.already_bought, c.timeout, c.repeated, c.malformed, c.other_activity
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "  latency cost_ms p50={} p95={} p99={} max={} (n={})",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.count
        )?;
        match &self.redis {
            Some(s) => write!(
                f,
                "  redis           stock={} initial={} success_counter={} over={} queued_records={}",
                s.stock.map_or("none".into(), |v| v.to_string()),
                s.initial_stock.map_or("none".into(), |v| v.to_string()),
                s.success,
                s.over,
                s.queued_records + s.processing_records
            ),
            None => write!(f, "  redis           unavailable"),
        }
    }
}

/// What every consumer task shares.
struct Shared {
    started: Instant,
    config: Config,
    redis: RedisState,
    /// Malformed payloads, forwarded unchanged (a missing payload stays missing).
    dlq: KafkaSink<Option<Vec<u8>>, BytesSerializer>,
    /// Every answer, to `seckill.results_topic` (unless `publish_results` is off).
    results: Option<ResultSink>,
    counters: Arc<ServerCounters>,
    /// Consumers that hold an assignment now: all of them (the state is prepared before
    /// any starts) means ready.
    assigned: AtomicUsize,
}

impl Shared {
    /// A consumer got (`true`) or lost (`false`) its assignment.
    fn assignment_changed(&self, now_assigned: bool) {
        if now_assigned {
            self.assigned.fetch_add(1, Ordering::SeqCst);
        } else {
            self.assigned.fetch_sub(1, Ordering::SeqCst);
        }
        self.publish_readiness();
    }

    fn publish_readiness(&self) {
        let ready = self.assigned.load(Ordering::SeqCst) == self.config.server_kafka.consumers;
        crate::telemetry::set_ready(ready);
    }
}

/// Runs server_kafka until `shutdown` fires (then drains and commits) or a fatal error.
pub async fn run_server(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<ServerSummary, ServerError> {
    let started = Instant::now();
    crate::telemetry::set_ready(false);
    let activity_id = config.seckill.activity_id;
    let redis = RedisState::connect(&config.redis)?;
    prepare_state(&redis, config, shutdown.clone()).await?;

    let dlq_topic = config
        .server_kafka
        .dlq_topic
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", config.seckill.requests_topic));
    let mut dlq_config = SinkConfig::new(config.kafka.clone(), dlq_topic);
    dlq_config.client_id = "server_kafka-dlq".into();
    // Retried below, without limit and aware of shutdown; the breaker would only add
    // a second, shorter limit.
    dlq_config.retries = 0;
    dlq_config.breaker_threshold = 0;
    let dlq = KafkaSink::with_serializer(dlq_config, BytesSerializer)?;
    let results = if config.server_kafka.publish_results {
        let results = results_sink(config)?;
        // Its metadata first: a broker that creates topics on demand creates the results
        // topic now, before any client waits on it; and its producer id is ready.
        if let Err(error) = results.connect(Duration::from_secs(10)).await {
            tracing::warn!(error = %Report(&error), topic = %config.seckill.results_topic, "results topic not reachable yet");
        }
        Some(results)
    } else {
        None
    };
    let counters = Arc::new(ServerCounters::default());
    let shared = Arc::new(Shared {
        started,
        config: config.clone(),
        redis: redis.clone(),
        dlq,
        results,
        counters: counters.clone(),
        assigned: AtomicUsize::new(0),
    });
    let broker = BrokerKind::detect_for(&config.kafka, "server_kafka").await;

    // A signal or the first failing consumer stops every task.
    let stop = shutdown.child_token();

    tracing::info!(
        activity_id,
        topic = %config.seckill.requests_topic,
        group = %config.server_kafka.group_id,
        consumers = config.server_kafka.consumers,
        concurrency = config.server_kafka.concurrency,
        batch_size = config.server_kafka.batch_size,
        batch_wait_ms = config.server_kafka.batch_wait_ms,
        instance_id = config.server_kafka.instance_id.as_deref().unwrap_or(""),
        "server_kafka started"
    );
    let status = tokio::spawn(status_loop(shared.clone(), stop.clone(), started));
    let mut tasks = Vec::new();
    for index in 0..config.server_kafka.consumers {
        let shared = shared.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let result = consumer::consume(index, shared, broker, stop.clone()).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        }));
    }

    let mut latency = latency_histogram()?;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(histogram)) => {
                // Same precision and auto-resize, so adding cannot fail.
                let _ = latency.add(histogram);
            }
            Ok(Err(error)) => {
                tracing::error!(error = %Report(&error), "consumer failed");
                first_error.get_or_insert(error);
            }
            Err(join_error) => {
                first_error.get_or_insert(join_error.into());
            }
        }
    }
    crate::telemetry::set_ready(false);
    stop.cancel();
    let _ = status.await;
    // Dead-letter messages were awaited one by one; nothing should be left, and close()
    // itself logs anything that is.
    if let Err(error) = shared.dlq.close(Duration::from_secs(10)).await {
        tracing::warn!(event = "dlq", error = %Report(&error), "closing the dead-letter sink");
    }
    if let Some(results) = &shared.results {
        // Every batch waited for its results; nothing should be left.
        if let Err(error) = results.close(Duration::from_secs(10)).await {
            tracing::warn!(error = %Report(&error), "closing the results sink");
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let summary = ServerSummary {
        activity_id,
        counts: counters.snapshot(),
        elapsed: started.elapsed(),
        active: counters.active(),
        latency: LatencySummary::of(&latency),
        redis: redis.snapshot(activity_id).await.ok(),
    };
    tracing::info!(
        processed = summary.counts.total(),
        success = summary.counts.success,
        elapsed_secs = summary.elapsed.as_secs_f64(),
        "server_kafka stopped"
    );
    Ok(summary)
}

/// Writes results with [`SeckillResult::write_json`].
struct ResultJson;

impl MessageSerializer<SeckillResult> for ResultJson {
    fn serialize(&self, value: &SeckillResult, buffer: &mut Vec<u8>) -> Result<(), SerializeError> {
        value
            .write_json(buffer)
            .map_err(|error| SerializeError::new("JSON", error))
    }

    fn content_type(&self) -> &str {
        "application/json"
    }
}

/// The results sink's type.
type ResultSink = KafkaSink<SeckillResult, ResultJson>;

/// The results producer: small batches (a batch's offsets wait for its results), no
/// per-message header, idempotent; failed deliveries are published again by the caller.
fn results_sink(config: &Config) -> Result<ResultSink, SinkError> {
    let mut sink = SinkConfig::new(config.kafka.clone(), config.seckill.results_topic.clone());
    sink.client_id = "server_kafka-results".into();
    sink.linger = Duration::from_millis(5);
    sink.content_type_header = false;
    sink.breaker_threshold = 0;
    // Lets `connect` wait for the idempotent producer's id.
    sink.statistics_interval = Some(Duration::from_millis(100));
    sink.kafka
        .properties
        .0
        .entry("socket.nagle.disable".into())
        .or_insert_with(|| "true".into());
    KafkaSink::with_serializer(sink, ResultJson)
}

/// Sets the initial stock (or checks the kept state), retrying while Redis is unreachable.
async fn prepare_state(
    redis: &RedisState,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let activity_id = config.seckill.activity_id;
    let stock = config.server_kafka.initial_stock;
    let result = if config.server_kafka.keep_state {
        retry(
            "Redis",
            &shutdown,
            || redis.get_stock(activity_id),
            RedisStateError::is_transient,
        )
        .await
        .map(|kept| match kept {
            Some(stock) => {
                tracing::info!(activity_id, stock, "keeping the state in Redis");
                Ok(())
            }
            None => Err(RedisStateError::NotInitialised(activity_id)),
        })
    } else {
        retry(
            "Redis",
            &shutdown,
            || redis.init_state(activity_id, stock),
            RedisStateError::is_transient,
        )
        .await
        .map(|()| {
            tracing::info!(activity_id, stock, "activity initialised in Redis");
            Ok(())
        })
    };
    match result {
        Ok(outcome) => Ok(outcome?),
        Err(RetryError::Failed(error) | RetryError::Stopped(error)) => Err(error.into()),
    }
}

async fn status_loop(shared: Arc<Shared>, stop: CancellationToken, started: Instant) {
    let interval = Duration::from_secs(shared.config.server_kafka.status_interval_secs);
    let activity_id = shared.config.seckill.activity_id;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut previous_total = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let counts = shared.counters.snapshot();
        let rate = (counts.total() - previous_total) as f64 / interval.as_secs_f64();
        previous_total = counts.total();
        match shared.redis.snapshot(activity_id).await {
            Ok(redis) => tracing::info!(
                remaining_stock = redis.stock.unwrap_or(0),
                over = redis.over,
                success = counts.success,
                sold_out = counts.sold_out,
                repeated = counts.repeated,
                already_bought = counts.already_bought,
                timeout = counts.timeout,
                malformed = counts.malformed,
                other_activity = counts.other_activity,
                rate_per_sec = rate.round() as u64,
                uptime_secs = started.elapsed().as_secs(),
                "status"
            ),
            Err(error) => {
                tracing::warn!(error = %Report(&error), success = counts.success, rate_per_sec = rate.round() as u64, "status: Redis unreachable")
            }
        }
    }
}

/// Request latencies from 1 ms to 1 hour at 3 significant digits; longer ones are counted
/// as 1 hour rather than growing the histogram without bound.
fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 3_600_000, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_cover_the_whole_range() {
        let mut histogram = latency_histogram().unwrap();
        for cost_ms in 1..=10_000 {
            histogram.saturating_record(cost_ms);
        }
        histogram.saturating_record(7_200_000); // two hours: counted as the 1 h ceiling
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 10_001);
        assert!((4_990..=5_010).contains(&summary.p50_ms), "{summary:?}");
        assert!((9_490..=9_510).contains(&summary.p95_ms), "{summary:?}");
        assert!(
            (3_599_000..=3_601_000).contains(&summary.max_ms),
            "{summary:?}"
        );
    }
}
