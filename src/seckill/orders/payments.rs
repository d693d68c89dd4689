//! server_kafka's payments consumer: reads `seckill.payments_topic` in its own consumer
//! group (`<server_kafka.group_id>-payments`), groups what it read by activity and applies
//! each group in one atomic script call ([`RedisState::run_payment_batch`]), then stores the
//! offsets. The answers are not published from here: the script queues each as a payment
//! event on the activity's log list, with the order event it caused, and log_worker
//! publishes them; so once the script ran, the answer survives any crash, and a payment read
//! again (a redelivery) is recognised by its payment id and changes nothing.
//!
//! Malformed payments, and payments for a sale that was never created (there is no sale to
//! remember their answer in), go to `<payments topic>.dlq` with the reason in a header.

use crate::backoff::{retry, Backoff, RetryError};
use crate::config::KafkaConfig;
use crate::kafka::sink::{BytesSerializer, KafkaMessage, KafkaSink, SinkConfig, SinkError};
use crate::kafka::statistics::StatisticsContext;
use crate::kafka::KafkaError;
use crate::redis_state::{PaymentAnswer, RedisState, RedisStateError};
use crate::report::Report;
use crate::seckill::orders::PaymentRequest;
use crate::seckill::server::{DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Payments read before a round of script calls at most.
const BATCH: usize = 512;

/// What the payments consumer takes of the settings.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// For the dead-letter producer.
    pub kafka: KafkaConfig,
    /// The consumer's settings, group and session times included (server_kafka gives it
    /// those of its request consumers, in the group `<group_id>-payments`).
    pub consumer: rdkafka::ClientConfig,
    pub topic: String,
    /// Serve only this sale (server_kafka `--activity-id`): others are skipped.
    pub only: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaymentsError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("payments dead-letter topic")]
    DeadLetter(#[from] SinkError),
    #[error(transparent)]
    Redis(#[from] RedisStateError),
}

impl From<rdkafka::error::KafkaError> for PaymentsError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// Payments applied, by answer, and the rest.
#[derive(Debug, Default)]
pub struct PaymentCounters {
    /// By [`PaymentAnswer::ALL`] order; repeated payment ids are counted in `repeated`.
    pub answered: [AtomicU64; 4],
    pub repeated: AtomicU64,
    pub malformed: AtomicU64,
    /// For a sale that was never created: dead-lettered.
    pub unknown_activity: AtomicU64,
    pub other_activity: AtomicU64,
}

impl PaymentCounters {
    fn count(&self, answer: PaymentAnswer, repeat: bool) {
        if repeat {
            self.repeated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let index = PaymentAnswer::ALL
            .iter()
            .position(|a| *a == answer)
            .unwrap_or(0);
        self.answered[index].fetch_add(1, Ordering::Relaxed);
        metrics::counter!("seckill_payments_total", "answer" => answer.as_str()).increment(1);
    }

    /// Payments answered, by answer.
    pub fn snapshot(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.answered[i].load(Ordering::Relaxed))
    }
}

/// One payment read, waiting for its activity's script call.
struct Pending {
    payment: PaymentRequest,
    /// Its message's place in the batch read.
    index: usize,
}

/// Applies payments until `stop` fires (then commits what it applied).
pub async fn run_payments(
    redis: RedisState,
    settings: PaymentSettings,
    counters: Arc<PaymentCounters>,
    stop: CancellationToken,
) -> Result<(), PaymentsError> {
    let consumer: StreamConsumer<StatisticsContext> =
        settings.consumer.create_with_context(StatisticsContext)?;
    consumer.subscribe(&[&settings.topic])?;
    let mut dlq_config = SinkConfig::new(settings.kafka.clone(), format!("{}.dlq", settings.topic));
    dlq_config.client_id = "server_kafka-payments-dlq".into();
    dlq_config.retries = 0;
    dlq_config.breaker_threshold = 0;
    let dlq = KafkaSink::with_serializer(dlq_config, BytesSerializer)?;
    tracing::info!(topic = %settings.topic, group = settings.consumer.get("group.id").unwrap_or_default(), "payments consumer started");

    let mut messages: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH);
    loop {
        messages.clear();
        let first = tokio::select! {
            received = consumer.recv() => received,
            _ = stop.cancelled() => break,
        };
        match first {
            Ok(message) => messages.push(message),
            Err(error) => {
                tracing::warn!(error = %Report(&error), "payments consumer: consume error");
                continue;
            }
        }
        // What else is there now, without waiting.
        while messages.len() < BATCH {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Ok(Ok(message)) => messages.push(message),
                Ok(Err(error)) => {
                    tracing::warn!(error = %Report(&error), "payments consumer: consume error");
                    break;
                }
                Err(_) => break,
            }
        }
        match apply(&redis, &settings, &counters, &dlq, &messages, &stop).await {
            Ok(()) => {
                for message in &messages {
                    consumer.store_offset_from_message(message)?;
                }
            }
            // Not applied: not committed, so read again after a restart.
            Err(RetryError::Stopped(_)) => break,
            Err(RetryError::Failed(error)) => return Err(error),
        }
    }
    if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(error = %Report(&error), "payments consumer: final commit");
    }
    if let Err(error) = dlq.close(Duration::from_secs(10)).await {
        tracing::warn!(error = %Report(&error), "closing the payments dead-letter sink");
    }
    Ok(())
}

/// Applies the payments of `messages`, activity by activity; dead-letters the malformed.
async fn apply(
    redis: &RedisState,
    settings: &PaymentSettings,
    counters: &PaymentCounters,
    dlq: &KafkaSink<Option<Vec<u8>>, BytesSerializer>,
    messages: &[BorrowedMessage<'_>],
    stop: &CancellationToken,
) -> Result<(), RetryError<PaymentsError>> {
    let mut by_activity: BTreeMap<u64, Vec<Pending>> = BTreeMap::new();
    for (index, message) in messages.iter().enumerate() {
        let payload = message.payload().unwrap_or_default();
        match PaymentRequest::from_json(payload) {
            Ok(payment)
                if settings
                    .only
                    .is_some_and(|only| only != payment.activity_id) =>
            {
                counters.other_activity.fetch_add(1, Ordering::Relaxed);
            }
            Ok(payment) => by_activity
                .entry(payment.activity_id)
                .or_default()
                .push(Pending { payment, index }),
            Err(error) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                let reason = Report(&error).to_string();
                dead_letter(dlq, message, &reason, stop).await?;
            }
        }
    }
    for (activity_id, pending) in by_activity {
        let registered = retry(
            "Redis",
            stop,
            || redis.is_registered(activity_id),
            RedisStateError::is_transient,
        )
        .await
        .map_err(redis_error)?;
        if !registered {
            let reason = format!("unknown activity {activity_id}: no such sale was created");
            for Pending { index, .. } in &pending {
                counters.unknown_activity.fetch_add(1, Ordering::Relaxed);
                dead_letter(dlq, &messages[*index], &reason, stop).await?;
            }
            continue;
        }
        let mut batch = redis.payment_batch(activity_id);
        for Pending { payment, .. } in &pending {
            batch.push(&payment.payment_id, &payment.order_id, payment.user_id);
        }
        let mut backoff = Backoff::default();
        let decided = loop {
            match redis.run_payment_batch(&batch).await {
                Ok(decided) => break decided,
                Err(error)
                    if error.is_transient()
                        || matches!(error, RedisStateError::NotInitialised(_)) =>
                {
                    tracing::warn!(event = "retry", activity_id, error = %Report(&error), "payments not applied; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = stop.cancelled() => return Err(RetryError::Stopped(error.into())),
                    }
                }
                Err(error) => return Err(RetryError::Failed(error.into())),
            }
        };
        for (answer, repeat) in decided.answers {
            counters.count(answer, repeat);
        }
    }
    Ok(())
}

fn redis_error(error: RetryError<RedisStateError>) -> RetryError<PaymentsError> {
    match error {
        RetryError::Failed(error) => RetryError::Failed(error.into()),
        RetryError::Stopped(error) => RetryError::Stopped(error.into()),
    }
}

async fn dead_letter(
    dlq: &KafkaSink<Option<Vec<u8>>, BytesSerializer>,
    message: &BorrowedMessage<'_>,
    reason: &str,
    stop: &CancellationToken,
) -> Result<(), RetryError<PaymentsError>> {
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    tracing::warn!(event = "dlq", %reason, %source, dlq = %dlq.config().topic, "payment sent to the dead-letter topic");
    let mut dead = KafkaMessage::new(message.payload().map(<[u8]>::to_vec))
        .header(DLQ_ERROR_HEADER, reason)
        .header(DLQ_SOURCE_HEADER, source.as_str());
    dead.key = message.key().map(<[u8]>::to_vec);
    retry(
        "Kafka dead-letter topic",
        stop,
        || dlq.send(dead.clone()),
        SinkError::is_retriable,
    )
    .await
    .map(|_| ())
    .map_err(|error| match error {
        RetryError::Failed(error) => RetryError::Failed(error.into()),
        RetryError::Stopped(error) => RetryError::Stopped(error.into()),
    })
}
