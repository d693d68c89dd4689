//! client_kafka's engine: the flash-sale load generator.
//!
//! Builds `users x requests_per_user` requests, shuffles them with a seed, and produces them
//! as JSON keyed by user id, at an optional rate. A message counts as sent only when its
//! delivery report says so; progress and the summary are built from delivery reports. With
//! `await_results` it then reads every request's answer from the results topic
//! ([`crate::seckill::results`]).

use crate::common::{now_ms, SeckillRequest};
use crate::config::{ClientKafkaConfig, Config, KafkaConfig, SeckillConfig};
use crate::kafka::sink::{Compression, KafkaMessage, KafkaSink, SinkConfig, SinkError};
use crate::pace::Pacer;
use crate::report::Report;
use crate::seckill::orders::buyer::{Buyers, OrdersReport, PaySettings};
use crate::seckill::results::{PlannedRequests, ResultsReader, ResultsReport, SendingDone};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::fmt;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long the final flush waits for outstanding deliveries.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the sending thread failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("reading the results topic failed")]
    Results(#[from] crate::seckill::results::ResultsError),
    #[error("client_kafka.pay_delay_ms: {0}")]
    PayDelay(String),
    #[error("no activity to send to: set client_kafka.activity_ids (--activity-ids 101,102) or seckill.activity_id (--activity-id 101)")]
    NoActivity,
}

type RequestSink = KafkaSink<SeckillRequest>;

/// What client_kafka reads of the configuration.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub kafka: KafkaConfig,
    pub seckill: SeckillConfig,
    pub client: ClientKafkaConfig,
}

impl From<&Config> for ClientSettings {
    fn from(config: &Config) -> Self {
        Self {
            kafka: config.kafka.clone(),
            seckill: config.seckill.clone(),
            client: config.client_kafka.clone(),
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
    /// With `await_results`: what the results topic said.
    pub results: Option<ResultsReport>,
    /// With `pay_ratio`: what became of the reservations.
    pub orders: Option<OrdersReport>,
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
        if let Some(results) = &self.results {
            write!(f, "\n{results}")?;
        }
        if let Some(orders) = &self.orders {
            write!(f, "\n{orders}")?;
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

/// The sink client_kafka sends through: its fast path, tuned for throughput (lz4 batches of
/// up to 10,000 requests), idempotent so librdkafka's retries never duplicate a request.
fn request_sink(settings: &ClientSettings) -> Result<RequestSink, SinkError> {
    let mut sink_config = SinkConfig::new(
        settings.kafka.clone(),
        settings.seckill.requests_topic.clone(),
    );
    sink_config.client_id = "client_kafka".into();
    sink_config.compression = Compression::Lz4;
    sink_config.linger = Duration::from_millis(5);
    // server_kafka knows the format; the per-message header still costs about a tenth of
    // the fast path's rate (84% vs 93% of a plain loop, docs/BENCHMARKS.md).
    sink_config.content_type_header = false;
    // Frequent statistics let `connect` see the producer id arrive (see below).
    sink_config.statistics_interval = Some(Duration::from_millis(20));
    // Nagle's algorithm holds small produce requests back until the previous one is
    // acknowledged: measured p99 delivery 468 ms at 20,000 requests/s with it, 33 ms without
    // (docs/BENCHMARKS.md). A buyer's request must not wait for that.
    sink_config
        .kafka
        .properties
        .0
        .entry("socket.nagle.disable".into())
        .or_insert_with(|| "true".into());
    KafkaSink::new(sink_config)
}

/// Runs client_kafka: sends the planned requests, waits for every delivery report.
pub async fn run_client(
    config: &ClientSettings,
    shutdown: CancellationToken,
) -> Result<ClientSummary, ClientError> {
    let settings = &config.client;
    let activity_ids = if settings.activity_ids.is_empty() {
        vec![config.seckill.activity_id.ok_or(ClientError::NoActivity)?]
    } else {
        settings.activity_ids.clone()
    };
    let seed = settings.seed.unwrap_or_else(|| now_ms() as u64);
    let plan = plan_requests(settings.users, settings.requests_per_user, seed);
    let planned_requests = PlannedRequests {
        activity_ids,
        seed,
        users: settings.users,
        requests_per_user: settings.requests_per_user,
    };
    let sink = Arc::new(request_sink(config)?);
    tracing::info!(
        requests = plan.len(),
        users = settings.users,
        requests_per_user = settings.requests_per_user,
        seed,
        topic = %config.seckill.requests_topic,
        activities = ?planned_requests.activity_ids,
        "client_kafka starting"
    );
    // A buyer's request is timed from when it is sent; the client's own start-up (reaching
    // the broker, getting its idempotent producer id: up to 0.5 s in which librdkafka holds
    // every message back) is not part of it.
    sink.connect(Duration::from_secs(30)).await?;
    if settings.delay_ms > 0 {
        let shutdown = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(settings.delay_ms)) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    // Positioned at the results topic's end before the first request goes out, and reading
    // while they go out.
    let sending_done = Arc::new(SendingDone::default());
    let buyers = if settings.await_results && settings.pay_ratio > 0.0 {
        let pay = PaySettings {
            kafka: config.kafka.clone(),
            payments_topic: config.seckill.payments_topic.clone(),
            order_events_topic: config.seckill.order_events_topic.clone(),
            ratio: settings.pay_ratio,
            delay_ms: settings.pay_delay().map_err(ClientError::PayDelay)?,
            seed,
            timeout: Duration::from_millis(settings.results_timeout_ms),
        };
        Some(Buyers::start(pay, shutdown.clone()).await?)
    } else {
        None
    };
    let reservations = buyers.as_ref().map(Buyers::sender);
    let results = if settings.await_results {
        let reader = {
            let (kafka, topic) = (config.kafka.clone(), config.seckill.results_topic.clone());
            tokio::task::spawn_blocking(move || ResultsReader::at_end(&kafka, &topic)).await??
        };
        let planned_requests = planned_requests.clone();
        let timeout = Duration::from_millis(settings.results_timeout_ms);
        let (sending_done, shutdown) = (sending_done.clone(), shutdown.clone());
        Some(tokio::task::spawn_blocking(move || {
            reader.collect(
                planned_requests,
                &sending_done,
                timeout,
                &shutdown,
                |reservation| {
                    if let Some(buyers) = &reservations {
                        let _ = buyers.send(reservation.clone());
                    }
                },
            )
        }))
    } else {
        None
    };
    let started = Instant::now();
    let planned = plan.len() as u64;
    let progress = Progress::start(planned, sink.clone());
    let send = {
        let sink = sink.clone();
        let rate = settings.rate;
        let shutdown = shutdown.clone();
        // The fast path only enqueues (no await per message), so it runs on a blocking thread.
        tokio::task::spawn_blocking(move || {
            send_all(&sink, &planned_requests, &plan, rate, seed, &shutdown)
        })
    };
    let attempted = send.await?;
    let report = sink.close(FLUSH_TIMEOUT).await?;
    progress.finish();
    sending_done.now();
    let results = match results {
        Some(collecting) => Some(collecting.await??),
        None => None,
    };
    let orders = match buyers {
        Some(buyers) => Some(buyers.finish().await?),
        None => None,
    };
    let summary = ClientSummary {
        planned,
        sent: report.metrics.messages_sent,
        failed: report.metrics.messages_failed + report.undelivered,
        not_sent: planned - attempted,
        elapsed: started.elapsed(),
        last_error: report.metrics.last_error.map(|last| last.message),
        results,
        orders,
    };
    tracing::info!(
        sent = summary.sent,
        failed = summary.failed,
        not_sent = summary.not_sent,
        "client_kafka done"
    );
    Ok(summary)
}

/// Enqueues every planned request through the sink's fast path, reusing one message;
/// returns how many were attempted (fewer when shutdown came first).
fn send_all(
    sink: &RequestSink,
    planned: &PlannedRequests,
    plan: &[(u64, u32)],
    rate: u64,
    seed: u64,
    shutdown: &CancellationToken,
) -> u64 {
    let pacer = Pacer::new(rate);
    let mut message = KafkaMessage::new(SeckillRequest {
        request_id: String::with_capacity(48),
        user_id: 0,
        activity_id: 0,
        request_initiation_time: 0,
    });
    let mut key = String::with_capacity(24);
    for (index, &(user, attempt)) in plan.iter().enumerate() {
        if shutdown.is_cancelled() {
            return index as u64;
        }
        pacer.wait_for(index as u64, Duration::from_millis(1));
        let request = &mut message.value;
        request.request_id.clear();
        let _ = write!(request.request_id, "{seed:x}-{user}-{attempt}");
        request.user_id = user;
        request.activity_id = planned.activity_of(user, attempt);
        request.request_initiation_time = now_ms();
        key.clear();
        let _ = write!(key, "{user}");
        let key_bytes = message.key.get_or_insert_with(Vec::new);
        key_bytes.clear();
        key_bytes.extend_from_slice(key.as_bytes());
        // Failures are counted in the sink's metrics; keep sending the rest.
        if let Err(error) = sink.enqueue(&message) {
            tracing::error!(error = %Report(&error), user, "a request could not be enqueued");
        }
    }
    plan.len() as u64
}

/// A progress bar on a terminal, a log line every 5 s otherwise; both count deliveries.
struct Progress {
    bar: Option<ProgressBar>,
    stop: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(total: u64, sink: Arc<RequestSink>) -> Self {
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
                    let metrics = sink.metrics();
                    ticker.set_position(metrics.messages_sent);
                    if metrics.messages_failed > 0 {
                        ticker.set_message(format!("failed {}", metrics.messages_failed));
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
                    let metrics = sink.metrics();
                    tracing::info!(
                        delivered = metrics.messages_sent,
                        failed = metrics.messages_failed,
                        total,
                        rate_per_sec = (metrics.messages_sent - previous) / interval.as_secs(),
                        "progress"
                    );
                    previous = metrics.messages_sent;
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
