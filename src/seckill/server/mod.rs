//! server_kafka's engine: a consumer group over the requests topic whose members answer
//! every activity (or only `seckill.activity_id`): each member groups its messages by
//! activity, runs the purchase of a whole batch of one activity's requests in one atomic Lua
//! call (all of an activity's keys in one Redis Cluster slot), several calls in flight,
//! publishes the answers, and stores offsets only behind answered batches.
//!
//! | module       | what lives there                                                  |
//! |--------------|-------------------------------------------------------------------|
//! | [`batch`]    | per-activity batches and when each is sent                        |
//! | [`consumer`] | one member's loop: read, send, retry, answer, store offsets       |
//! | [`rebalance`]| group membership: settings (classic or KIP-848), rebalances        |
//! | [`answer`]   | results and dead letters                                          |
//! | [`counters`] | outcome counters, latency, the summary                            |
//!
//! Per message: decode (malformed -> dead-letter topic), skip requests of other activities
//! when serving one, answer TIMEOUT for requests older than `timeout_ms` when their batch is
//! sent, else add them to their activity's script call. Redis being unreachable, a replica
//! behind (`redis.wait_replicas`) or a sale's state gone is retried with backoff until it
//! answers or shutdown; an abandoned batch's offsets are never stored, so its messages are
//! delivered again.
//!
//! Beside the requests, each server runs the two halves of orders in sales with a payment
//! window ([`crate::seckill::orders`]): a payments consumer (its own group,
//! `<group_id>-payments`) and an expirer of unpaid reservations.
//!
//! `/ready` (telemetry) answers 200 once the state is prepared and every consumer has its
//! assignment; static membership (`server_kafka.instance_id`) lets a restarted server take
//! its partitions back without a rebalance on Apache Kafka.

mod answer;
mod batch;
mod consumer;
mod counters;
mod rebalance;

pub use counters::{LatencySummary, OutcomeCounts, ServerCounters, ServerSummary};

use crate::backoff::{retry, RetryError};
use crate::common::SeckillResult;
use crate::config::{Config, KafkaConfig, RedisConfig, SeckillConfig, ServerKafkaConfig};
use crate::kafka::broker::BrokerKind;
use crate::kafka::sink::{
    BytesSerializer, KafkaSink, MessageSerializer, SerializeError, SinkConfig, SinkError,
};
use crate::kafka::KafkaError;
use crate::redis_state::{LiveActivity, RedisState, RedisStateError};
use crate::report::Report;
use crate::seckill::orders::expirer::{self, ExpirerCounters, ExpirerSettings};
use crate::seckill::orders::payments::{self, PaymentCounters, PaymentSettings};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Header of a dead-letter message that says why it was rejected.
pub const DLQ_ERROR_HEADER: &str = "seckill.error";
/// Header of a dead-letter message that says where it was read: `topic/partition/offset`.
pub const DLQ_SOURCE_HEADER: &str = "seckill.source";

/// What server_kafka reads of the configuration.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub seckill: SeckillConfig,
    pub server: ServerKafkaConfig,
}

impl From<&Config> for ServerSettings {
    fn from(config: &Config) -> Self {
        Self {
            kafka: config.kafka.clone(),
            redis: config.redis.clone(),
            seckill: config.seckill.clone(),
            server: config.server_kafka.clone(),
        }
    }
}

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
    #[error("the payments consumer failed")]
    Payments(#[from] crate::seckill::orders::payments::PaymentsError),
}

impl From<rdkafka::error::KafkaError> for ServerError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// What every consumer task shares.
struct Shared {
    started: Instant,
    settings: ServerSettings,
    redis: RedisState,
    /// Malformed payloads, forwarded unchanged (a missing payload stays missing).
    dlq: KafkaSink<Option<Vec<u8>>, BytesSerializer>,
    /// Every answer, to `seckill.results_topic` (unless `publish_results` is off).
    results: Option<ResultSink>,
    counters: Arc<ServerCounters>,
    /// Consumers that hold an assignment now: all of them (the state is prepared before
    /// any starts) means ready.
    assigned: AtomicUsize,
    payments: Arc<PaymentCounters>,
    expirer: Arc<ExpirerCounters>,
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
        let ready = self.assigned.load(Ordering::SeqCst) == self.settings.server.consumers;
        crate::telemetry::set_ready(ready);
    }
}

/// Runs server_kafka until `shutdown` fires (then drains and commits) or a fatal error.
pub async fn run_server(
    settings: ServerSettings,
    shutdown: CancellationToken,
) -> Result<ServerSummary, ServerError> {
    let started = Instant::now();
    crate::telemetry::set_ready(false);
    let activity_id = settings.seckill.activity_id;
    let redis = RedisState::connect(&settings.redis)?;
    prepare_state(&redis, &settings, shutdown.clone()).await?;

    let dlq_topic = settings
        .server
        .dlq_topic
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", settings.seckill.requests_topic));
    let mut dlq_config = SinkConfig::new(settings.kafka.clone(), dlq_topic);
    dlq_config.client_id = "server_kafka-dlq".into();
    // Retried by the caller, without limit and aware of shutdown; the breaker would only add
    // a second, shorter limit.
    dlq_config.retries = 0;
    dlq_config.breaker_threshold = 0;
    let dlq = KafkaSink::with_serializer(dlq_config, BytesSerializer)?;
    let results = if settings.server.publish_results {
        let results = results_sink(&settings)?;
        // Its metadata first: a broker that creates topics on demand creates the results
        // topic now, before any client waits on it; and its producer id is ready.
        if let Err(error) = results.connect(Duration::from_secs(10)).await {
            tracing::warn!(error = %Report(&error), topic = %settings.seckill.results_topic, "results topic not reachable yet");
        }
        Some(results)
    } else {
        None
    };
    // Orders' topics: created where the broker has the Admin API (the dev broker creates a
    // topic when it is first written to).
    let order_topics = [
        (settings.seckill.payments_topic.clone(), 8),
        (format!("{}.dlq", settings.seckill.payments_topic), 1),
        (settings.seckill.order_events_topic.clone(), 8),
    ];
    let specs: Vec<(&str, i32)> = order_topics
        .iter()
        .map(|(topic, partitions)| (topic.as_str(), *partitions))
        .collect();
    if let Err(error) =
        crate::kafka::admin::ensure_topics(&settings.kafka, "server_kafka-admin", &specs).await
    {
        tracing::warn!(error = %Report(&error), "cannot check the orders' topics; relying on auto-creation");
    }
    let counters = Arc::new(ServerCounters::default());
    let broker = BrokerKind::detect_for(&settings.kafka, "server_kafka").await;
    tracing::info!(
        activity_id = activity_id.map_or_else(|| "every".to_string(), |id| id.to_string()),
        topic = %settings.seckill.requests_topic,
        group = %settings.server.group_id,
        group_protocol = settings.server.group_protocol.as_librdkafka(),
        consumers = settings.server.consumers,
        concurrency = settings.server.concurrency,
        batch_size = settings.server.batch_size,
        batch_wait_ms = settings.server.batch_wait_ms,
        redis = if redis.is_cluster() { "cluster" } else { "single node" },
        wait_replicas = %settings.redis.wait_replicas,
        instance_id = settings.server.instance_id.as_deref().unwrap_or(""),
        "server_kafka started"
    );
    let shared = Arc::new(Shared {
        started,
        settings,
        redis: redis.clone(),
        dlq,
        results,
        counters: counters.clone(),
        assigned: AtomicUsize::new(0),
        payments: Arc::default(),
        expirer: Arc::default(),
    });

    // A signal or the first failing consumer stops every task.
    let stop = shutdown.child_token();
    let status = tokio::spawn(status_loop(shared.clone(), stop.clone(), started));
    let orders_stop = stop.child_token();
    let expirer = tokio::spawn(expirer::run_expirer(
        redis.clone(),
        ExpirerSettings {
            slice: shared.settings.server.expiry_slice,
            interval: Duration::from_millis(shared.settings.server.expiry_interval_ms),
            only: activity_id,
        },
        shared.expirer.clone(),
        orders_stop.clone(),
    ));
    let payments = {
        // The request consumers' settings, in a group of its own.
        let server = &shared.settings.server;
        let payment_group = ServerKafkaConfig {
            group_id: format!("{}-payments", server.group_id),
            instance_id: server
                .instance_id
                .as_ref()
                .map(|id| format!("{id}-payments")),
            ..server.clone()
        };
        let mut consumer =
            rebalance::consumer_config(&shared.settings.kafka, &payment_group, 0, broker)?;
        consumer.set(
            "client.id",
            format!("{}-server_kafka-payments", shared.settings.kafka.client_id),
        );
        let settings = PaymentSettings {
            kafka: shared.settings.kafka.clone(),
            consumer,
            topic: shared.settings.seckill.payments_topic.clone(),
            only: activity_id,
        };
        let (redis, counters, stop) = (redis.clone(), shared.payments.clone(), stop.clone());
        tokio::spawn(async move {
            let result = payments::run_payments(redis, settings, counters, stop.clone()).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        })
    };
    let mut tasks = Vec::new();
    for index in 0..shared.settings.server.consumers {
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

    let mut latency = counters::latency_histogram()?;
    let mut activities = HashSet::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(report)) => {
                // Same precision and auto-resize, so adding cannot fail.
                let _ = latency.add(report.latency);
                activities.extend(report.activities);
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
    let _ = expirer.await;
    match payments.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(error = %Report(&error), "payments consumer failed");
            first_error.get_or_insert(error.into());
        }
        Err(join_error) => {
            first_error.get_or_insert(join_error.into());
        }
    }
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
    let redis_figures = match activity_id {
        Some(activity_id) => redis.snapshot(activity_id).await.ok(),
        None => None,
    };
    let summary = ServerSummary {
        activity_id,
        activities: activities.len(),
        payments: shared.payments.snapshot(),
        expired: shared.expirer.expired.load(Ordering::Relaxed),
        longest_expiry_call_us: shared.expirer.longest_call_us.load(Ordering::Relaxed),
        counts: counters.snapshot(),
        elapsed: started.elapsed(),
        active: counters.active(),
        latency: LatencySummary::of(&latency),
        redis: redis_figures,
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
fn results_sink(settings: &ServerSettings) -> Result<ResultSink, SinkError> {
    let mut sink = SinkConfig::new(
        settings.kafka.clone(),
        settings.seckill.results_topic.clone(),
    );
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

/// The quick path (`--activity-id N --initial-stock S`): resets sale N to a fresh, open sale
/// of S, or with `keep_state` checks that N has live state; retrying while Redis is
/// unreachable. Serving every activity, only Redis is reached: their live state was written
/// by seckill_admin.
async fn prepare_state(
    redis: &RedisState,
    settings: &ServerSettings,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let Some(activity_id) = settings.seckill.activity_id else {
        // Redis is reached before Kafka: an unreachable Redis is retried and reported here.
        let registered = retry(
            "Redis",
            &shutdown,
            || redis.registered_activities(),
            RedisStateError::is_transient,
        )
        .await
        .map_err(|(RetryError::Failed(error) | RetryError::Stopped(error))| error)?;
        tracing::info!(
            registered = registered.len(),
            "serving every activity with live state in Redis"
        );
        return Ok(());
    };
    let stock = settings.server.initial_stock;
    let fresh = LiveActivity::open(activity_id, stock.unwrap_or(0));
    let result = match stock {
        Some(stock) if !settings.server.keep_state => retry(
            "Redis",
            &shutdown,
            || redis.reset_activity(&fresh),
            RedisStateError::is_transient,
        )
        .await
        .map(|()| {
            tracing::info!(activity_id, stock, "activity initialised in Redis");
            Ok(())
        }),
        _ => retry(
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
            // Asked to keep a state that is not there.
            None if settings.server.keep_state => Err(RedisStateError::NotInitialised(activity_id)),
            None => {
                tracing::warn!(
                    activity_id,
                    "the activity has no live state in Redis yet: its requests wait until it has"
                );
                Ok(())
            }
        }),
    };
    match result {
        Ok(outcome) => Ok(outcome?),
        Err(RetryError::Failed(error) | RetryError::Stopped(error)) => Err(error.into()),
    }
}

async fn status_loop(shared: Arc<Shared>, stop: CancellationToken, started: Instant) {
    let interval = Duration::from_secs(shared.settings.server.status_interval_secs);
    let activity_id = shared.settings.seckill.activity_id;
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
        let remaining = match activity_id {
            Some(activity_id) => match shared.redis.snapshot(activity_id).await {
                Ok(redis) => redis.stock,
                Err(error) => {
                    tracing::warn!(error = %Report(&error), success = counts.success, rate_per_sec = rate.round() as u64, "status: Redis unreachable");
                    continue;
                }
            },
            None => None,
        };
        tracing::info!(
            remaining_stock = remaining.map_or_else(String::new, |stock| stock.to_string()),
            success = counts.success,
            sold_out = counts.sold_out,
            already_bought = counts.already_bought,
            not_started = counts.not_started,
            ended = counts.ended,
            unknown_activity = counts.unknown_activity,
            repeated = counts.repeated,
            timeout = counts.timeout,
            malformed = counts.malformed,
            other_activity = counts.other_activity,
            retried_calls = counts.retried_calls,
            payments_paid = shared.payments.snapshot()[0],
            orders_expired = shared.expirer.expired.load(Ordering::Relaxed),
            rate_per_sec = rate.round() as u64,
            uptime_secs = started.elapsed().as_secs(),
            "status"
        );
    }
}
