//! The gateway's reader of the results topic: every partition, from the end it found at
//! start, on a thread of its own; each answer to a request this gateway accepted (ids
//! `gw-<user>-...`) completes its entry in [`Outcomes`]. Every gateway reads every answer:
//! N gateways read the results topic N times, a cost that grows with the gateways (each
//! keeps only its own).

use super::outcomes::Outcomes;
use crate::common::SeckillResult;
use crate::config::KafkaConfig;
use crate::seckill::results::{ResultsError, ResultsReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Positions on the results topic now (before the first request is accepted), then reads
/// on a blocking thread until `stop`. `ready` turns true once positioned.
pub async fn start(
    kafka: KafkaConfig,
    topic: String,
    outcomes: Arc<Outcomes>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), ResultsError>>, ResultsError> {
    let mut reader =
        tokio::task::spawn_blocking(move || ResultsReader::at_end_or_start(&kafka, &topic))
            .await
            .map_err(|_| ResultsError::Kafka(rdkafka::error::KafkaError::Canceled.into()))??;
    ready.store(true, Ordering::SeqCst);
    Ok(tokio::task::spawn_blocking(move || {
        reader.for_each_payload(&stop, |payload| {
            if let Some(result) = payload.and_then(|p| SeckillResult::from_json(p).ok()) {
                if result.request_id.starts_with("gw-") {
                    outcomes.complete(result);
                }
            }
            true
        })
    }))
}
