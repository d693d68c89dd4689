//! The gateway's reader of the results topic: every partition, from [`REPLAY`] before its
//! start (so a restarted gateway still answers `GET /requests/{id}` for recent requests),
//! on a thread of its own; each answer to a request made through a gateway (ids
//! `gw-<user>-<sale>-...`) completes or fills its entry in [`Outcomes`]. Every gateway reads every
//! answer: N gateways read the results topic N times, a cost that grows with the gateways;
//! in exchange a buyer may poll any of them.

use super::outcomes::Outcomes;
use crate::common::SeckillResult;
use crate::config::KafkaConfig;
use crate::kafka::broker::BrokerKind;
use crate::seckill::results::{ResultsError, ResultsReader, Start};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How far back the results topic is read at start.
pub const REPLAY: Duration = Duration::from_secs(600);

/// Positions on the results topic now (before the first request is accepted), then reads
/// on a blocking thread until `stop`. `ready` turns true once positioned.
pub async fn start(
    broker: BrokerKind,
    kafka: KafkaConfig,
    topic: String,
    outcomes: Arc<Outcomes>,
    answered: Arc<Answered>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), ResultsError>>, ResultsError> {
    // The dev broker finds no offset by time (librdkafka's mock answers the end): there the
    // reader starts at the oldest record it keeps (it keeps a few MB per partition).
    let start = if broker.is_mock() {
        Start::Beginning
    } else {
        Start::Since(crate::common::now_ms() - REPLAY.as_millis() as i64)
    };
    let mut reader =
        tokio::task::spawn_blocking(move || ResultsReader::from_or_start(&kafka, &topic, start))
            .await
            .map_err(|_| ResultsError::Kafka(rdkafka::error::KafkaError::Canceled.into()))??;
    ready.store(true, Ordering::SeqCst);
    // Decided (server_kafka's Redis clock) to read here, for the requests waiting on this
    // gateway: how far the answers trail (the replay at start is not in it).
    let lag = metrics::histogram!("gateway_results_lag_seconds");
    Ok(tokio::task::spawn_blocking(move || {
        reader.for_each_payload(&stop, |payload| {
            if let Some(result) = payload.and_then(|p| SeckillResult::from_json(p).ok()) {
                answered.count(result.activity_id);
                if result.request_id.starts_with("gw-") {
                    let decided_at = result.decided_at;
                    if outcomes.complete(result) {
                        let lag_ms = crate::common::now_ms().saturating_sub(decided_at).max(0);
                        lag.record(lag_ms as f64 / 1e3);
                    }
                }
            }
            true
        })
    }))
}

/// Answers read per sale, every answer on the results topic (the live page's figures).
#[derive(Debug, Default)]
pub struct Answered {
    counts: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

impl Answered {
    fn count(&self, activity_id: u64) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(activity_id).or_default() += 1;
        }
    }

    /// Answers read for `activity_id` since this gateway started reading.
    pub fn of(&self, activity_id: u64) -> u64 {
        self.counts
            .lock()
            .map(|counts| counts.get(&activity_id).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}
