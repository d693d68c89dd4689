//! log_worker's side of the order events: publishes the events a batch of the log list holds
//! to `seckill.order_events_topic` (keyed by user id, byte for byte as the script wrote them)
//! and waits until the broker has every one; only then is the batch removed from Redis. A
//! crash in between publishes the batch again (the same bytes): readers keep the first
//! event per (kind, id).
//!
//! The producer is made at the first event, so a log_worker that serves only sales without
//! a payment window never connects to Kafka.

use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::kafka::sink::{BytesSerializer, KafkaMessage, KafkaSink, SinkConfig, SinkError};
use crate::report::Report;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type EventSink = KafkaSink<Option<Vec<u8>>, BytesSerializer>;

/// Publishes order and payment events.
pub struct EventPublisher {
    kafka: KafkaConfig,
    topic: String,
    sink: Mutex<Option<Arc<EventSink>>>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("publishing order events to {topic}")]
    Sink {
        topic: String,
        #[source]
        source: SinkError,
    },
    #[error("stopped before the order events were published")]
    Stopped,
}

impl EventPublisher {
    pub fn new(kafka: KafkaConfig, topic: String) -> Self {
        Self {
            kafka,
            topic,
            sink: Mutex::new(None),
        }
    }

    fn sink(&self) -> Result<Arc<EventSink>, PublishError> {
        let mut slot = self.sink.lock().map_err(|_| PublishError::Stopped)?;
        if let Some(sink) = slot.as_ref() {
            return Ok(sink.clone());
        }
        let mut config = SinkConfig::new(self.kafka.clone(), self.topic.clone());
        config.client_id = "log_worker-events".into();
        config.linger = Duration::from_millis(5);
        config.content_type_header = false;
        // Retried here, without limit and aware of shutdown.
        config.breaker_threshold = 0;
        let sink = Arc::new(KafkaSink::with_serializer(config, BytesSerializer).map_err(
            |source| PublishError::Sink {
                topic: self.topic.clone(),
                source,
            },
        )?);
        *slot = Some(sink.clone());
        Ok(sink)
    }

    /// Publishes `events` (user id, event JSON) and waits for every acknowledgement,
    /// publishing again with backoff until all arrive or `stop` fires.
    pub async fn publish(
        &self,
        events: &[(u64, &str)],
        stop: &CancellationToken,
    ) -> Result<(), PublishError> {
        if events.is_empty() {
            return Ok(());
        }
        let sink = self.sink()?;
        let mut backoff = Backoff::default();
        loop {
            let group = sink.delivery_group();
            let mut failure = None;
            for (user_id, event) in events {
                let message =
                    KafkaMessage::new(Some(event.as_bytes().to_vec())).key(user_id.to_string());
                loop {
                    match sink.try_enqueue_in(&group, &message) {
                        Ok(true) => break,
                        Ok(false) => tokio::time::sleep(Duration::from_millis(1)).await,
                        Err(error) => {
                            failure = Some(error);
                            break;
                        }
                    }
                }
                if failure.is_some() {
                    break;
                }
            }
            let delivery = sink.wait_group(group).await;
            match failure {
                Some(error) if !error.is_retriable() => {
                    return Err(PublishError::Sink {
                        topic: self.topic.clone(),
                        source: error,
                    })
                }
                Some(error) => {
                    tracing::warn!(event = "retry", error = %Report(&error), "publishing order events failed; publishing them again");
                }
                None if delivery.failed == 0 => {
                    metrics::counter!("seckill_order_events_published_total")
                        .increment(events.len() as u64);
                    return Ok(());
                }
                None => {
                    tracing::warn!(
                        event = "retry",
                        failed = delivery.failed,
                        "order events not delivered; publishing them again"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.cancelled() => return Err(PublishError::Stopped),
            }
        }
    }

    /// Flushes what is in flight (nothing, after each publish returned).
    pub async fn close(&self) {
        let sink = self.sink.lock().ok().and_then(|slot| slot.clone());
        if let Some(sink) = sink {
            if let Err(error) = sink.close(Duration::from_secs(10)).await {
                tracing::warn!(error = %Report(&error), "closing the order events sink");
            }
        }
    }
}
