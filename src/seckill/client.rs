//! client_kafka's engine: the flash-sale load generator.
//!
//! Builds `users x requests_per_user` requests, shuffles them with a seed, and produces them
//! as JSON keyed by user id, at an optional rate. A message counts as sent only when its
//! delivery report says so; progress and the summary are built from delivery reports.

use crate::common::{now_ms, SeckillRequest};
use crate::config::Config;
use crate::kafka::client_config::set_default;
use crate::kafka::{client_config, ClientRole, KafkaError};
use crate::shutdown::Shutdown;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use std::fmt;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `close` waits for outstanding deliveries.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the sending thread failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<RdKafkaError> for ClientError {
    fn from(error: RdKafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// Delivery reports, counted as librdkafka's background thread hands them over.
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(error.to_string());
                }
            }
        }
    }
}

/// What a run of client_kafka did.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSummary {
    pub planned: u64,
    /// Delivery reports that said the broker has the message.
    pub sent: u64,
    /// Delivery reports with an error, plus messages librdkafka refused to enqueue.
    pub failed: u64,
    /// Not attempted because shutdown came first.
    pub not_sent: u64,
    pub elapsed: Duration,
    pub last_error: Option<String>,
}

impl ClientSummary {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ClientSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client_kafka summary: planned={} sent={} failed={} not_sent={} elapsed={:.2}s rate={:.0}/s",
            self.planned,
            self.sent,
            self.failed,
            self.not_sent,
            self.elapsed.as_secs_f64(),
            self.rate()
        )?;
        if let Some(error) = &self.last_error {
            write!(f, " last_error=\"{error}\"")?;
        }
        Ok(())
    }
}

/// The requests of a run in send order: (user id, attempt) pairs, shuffled by `seed`.
pub fn plan_requests(users: u64, requests_per_user: u32, seed: u64) -> Vec<(u64, u32)> {
    let mut plan: Vec<(u64, u32)> = (1..=users)
        .flat_map(|user| (0..requests_per_user).map(move |attempt| (user, attempt)))
        .collect();
    plan.shuffle(&mut StdRng::seed_from_u64(seed));
    plan
}

/// Runs client_kafka: sends the planned requests, waits for every delivery report.
pub async fn run_client(config: &Config, shutdown: Shutdown) -> Result<ClientSummary, ClientError> {
    let settings = &config.client_kafka;
    let seed = settings.seed.unwrap_or_else(|| now_ms() as u64);
    let plan = plan_requests(settings.users, settings.requests_per_user, seed);
    let mut producer_config = client_config(&config.kafka, ClientRole::Producer, "client_kafka")?;
    // No duplicates from internal retries, and batches big enough for throughput.
    for (property, value) in [
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        ("queue.buffering.max.messages", "500000"),
        ("compression.type", "lz4"),
    ] {
        set_default(&mut producer_config, property, value);
    }
    let producer: ThreadedProducer<DeliveryCounter> =
        producer_config.create_with_context(DeliveryCounter::default())?;
    let producer = Arc::new(producer);
    tracing::info!(
        requests = plan.len(),
        users = settings.users,
        requests_per_user = settings.requests_per_user,
        seed,
        topic = %config.seckill.requests_topic,
        activity_id = config.seckill.activity_id,
        "client_kafka starting"
    );
    if settings.delay_ms > 0 {
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(settings.delay_ms)) => {}
            _ = shutdown.wait() => {}
        }
    }

    let started = Instant::now();
    let planned = plan.len() as u64;
    let progress = Progress::start(planned, producer.clone());
    let send = {
        let producer = producer.clone();
        let topic = config.seckill.requests_topic.clone();
        let activity_id = config.seckill.activity_id;
        let rate = settings.rate;
        let shutdown = shutdown.clone();
        // The loop only enqueues (no await per message), so it runs on a blocking thread.
        tokio::task::spawn_blocking(move || {
            send_all(&producer, &topic, activity_id, &plan, rate, seed, &shutdown)
        })
    };
    let (attempted, refused) = send.await?;
    let flush = {
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(FLUSH_TIMEOUT)))
    };
    if let Err(error) = flush.await? {
        tracing::error!(%error, in_flight = producer.in_flight_count(), "not every delivery report arrived in time");
    }
    progress.finish();
    let context = producer.context();
    let undelivered = producer.in_flight_count().max(0) as u64;
    let summary = ClientSummary {
        planned,
        sent: context.delivered.load(Ordering::Relaxed),
        failed: context.failed.load(Ordering::Relaxed) + refused + undelivered,
        not_sent: planned - attempted,
        elapsed: started.elapsed(),
        last_error: context.last_error.lock().ok().and_then(|last| last.clone()),
    };
    tracing::info!(
        sent = summary.sent,
        failed = summary.failed,
        not_sent = summary.not_sent,
        "client_kafka done"
    );
    Ok(summary)
}

/// Enqueues every planned request; returns (attempted, refused by librdkafka).
fn send_all(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    activity_id: u64,
    plan: &[(u64, u32)],
    rate: u64,
    seed: u64,
    shutdown: &Shutdown,
) -> (u64, u64) {
    let started = Instant::now();
    let mut payload = Vec::with_capacity(256);
    let mut key = String::with_capacity(24);
    let mut request = SeckillRequest {
        request_id: String::with_capacity(48),
        user_id: 0,
        activity_id,
        request_initiation_time: 0,
    };
    let mut refused = 0;
    for (index, &(user, attempt)) in plan.iter().enumerate() {
        if shutdown.is_triggered() {
            return (index as u64, refused);
        }
        if rate > 0 {
            // Pace against the start time, so short stalls are caught up.
            let due = Duration::from_secs_f64(index as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                if wait > Duration::from_millis(1) {
                    std::thread::sleep(wait);
                }
            }
        }
        request.request_id.clear();
        let _ = write!(request.request_id, "{seed:x}-{user}-{attempt}");
        request.user_id = user;
        request.request_initiation_time = now_ms();
        key.clear();
        let _ = write!(key, "{user}");
        if let Err(error) = request.write_json(&mut payload) {
            tracing::error!(%error, "cannot encode a request");
            refused += 1;
            continue;
        }
        let mut record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // Back-pressure: wait for deliveries to make room, never drop.
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => {
                    tracing::error!(%error, user, "librdkafka refused a request");
                    refused += 1;
                    break;
                }
            }
        }
    }
    (plan.len() as u64, refused)
}

/// A progress bar on a terminal, a log line every 5 s otherwise; both count deliveries.
struct Progress {
    bar: Option<ProgressBar>,
    stop: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(total: u64, producer: Arc<ThreadedProducer<DeliveryCounter>>) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} delivered {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            let ticker = bar.clone();
            let stop = tokio::spawn(async move {
                loop {
                    let context = producer.context();
                    ticker.set_position(context.delivered.load(Ordering::Relaxed));
                    let failed = context.failed.load(Ordering::Relaxed);
                    if failed > 0 {
                        ticker.set_message(format!("failed {failed}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            Self {
                bar: Some(bar),
                stop: Some(stop),
            }
        } else {
            let stop = tokio::spawn(async move {
                let interval = Duration::from_secs(5);
                let mut previous = 0;
                loop {
                    tokio::time::sleep(interval).await;
                    let context = producer.context();
                    let delivered = context.delivered.load(Ordering::Relaxed);
                    tracing::info!(
                        delivered,
                        failed = context.failed.load(Ordering::Relaxed),
                        total,
                        rate_per_sec = (delivered - previous) / interval.as_secs(),
                        "progress"
                    );
                    previous = delivered;
                }
            });
            Self {
                bar: None,
                stop: Some(stop),
            }
        }
    }

    fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn plan_has_every_request_once_in_seeded_order() {
        let plan = plan_requests(100, 3, 7);
        assert_eq!(plan.len(), 300);
        let distinct: HashSet<_> = plan.iter().collect();
        assert_eq!(distinct.len(), 300);
        assert_eq!(plan, plan_requests(100, 3, 7), "same seed, same order");
        assert_ne!(
            plan,
            plan_requests(100, 3, 8),
            "another seed, another order"
        );
        let mut sorted = plan.clone();
        sorted.sort();
        assert_ne!(plan, sorted, "shuffled");
    }
}
