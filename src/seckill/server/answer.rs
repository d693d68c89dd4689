//! What leaves server_kafka for Kafka: each request's answer on the results topic (keyed by
//! user id, acknowledged before the batch's offsets are stored) and malformed messages on
//! the dead-letter topic.

use super::batch::{Batch, DeadLetter};
use super::{ResultSink, Shared, DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER};
use crate::backoff::{retry, Backoff, RetryError};
use crate::kafka::sink::{KafkaMessage, SinkError};
use crate::report::Report;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Publishes an answer for every request of the batch (keyed by user id) and waits until the
/// broker has all of them. A batch whose results did not all arrive is published again, with
/// backoff, until they do or shutdown comes (a result may then be read twice, with the same
/// outcome: a request id's outcome is decided once).
pub(super) async fn publish_results(
    results: &ResultSink,
    batch: &mut Batch,
    stop: &CancellationToken,
) -> Result<(), RetryError<SinkError>> {
    let Some(activity_id) = batch.activity_id else {
        return Ok(());
    };
    if batch.pending.is_empty() {
        return Ok(());
    }
    let mut backoff = Backoff::default();
    let stop = stop.clone();
    loop {
        let group = results.delivery_group();
        let mut failure = None;
        {
            let Batch {
                ids,
                pending,
                costs,
                decisions,
                pay_by,
                decided_at,
                result,
                ..
            } = &mut *batch;
            let mut id_start = 0;
            for (((request, decision), cost_ms), pay_by) in pending
                .iter()
                .zip(decisions.iter())
                .zip(costs.iter())
                .zip(pay_by.iter())
            {
                let value = &mut result.value;
                value.request_id.clear();
                value.request_id.push_str(&ids[id_start..request.id_end]);
                id_start = request.id_end;
                value.user_id = request.user_id;
                value.activity_id = activity_id;
                value.outcome = decision.outcome;
                value.repeat = decision.repeat;
                value.request_initiation_time = request.initiated;
                value.decided_at = *decided_at;
                value.cost_ms = *cost_ms;
                value.pay_by = (*pay_by > 0).then_some(*pay_by);
                if let Some(key) = result.key.as_mut() {
                    key.clear();
                    let _ = std::io::Write::write_fmt(key, format_args!("{}", request.user_id));
                }
                loop {
                    match results.try_enqueue_in(&group, result) {
                        Ok(true) => break,
                        // librdkafka's queue is full: it drains as deliveries come back.
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
        }
        let delivery = results.wait_group(group).await;
        match failure {
            Some(error) if !error.is_retriable() => return Err(RetryError::Failed(error)),
            Some(error) => {
                tracing::warn!(event = "retry", error = %Report(&error), "publishing results failed; publishing the batch's results again")
            }
            None if delivery.failed == 0 => return Ok(()),
            None => {
                let error = delivery
                    .last_error
                    .map(|e| Report(&e).to_string())
                    .unwrap_or_default();
                tracing::warn!(event = "retry", failed = delivery.failed, %error, "results not delivered; publishing the batch's results again");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return Err(RetryError::Stopped(SinkError::Closed)),
        }
    }
}

pub(super) async fn send_dead_letter(
    shared: &Shared,
    dead_letter: &DeadLetter,
    stop: &CancellationToken,
) -> Result<(), RetryError<SinkError>> {
    tracing::warn!(event = "dlq", reason = %dead_letter.reason, source = %dead_letter.source, dlq = %shared.dlq.config().topic, "malformed request sent to the dead-letter topic");
    let mut message = KafkaMessage::new(dead_letter.payload.clone())
        .header(DLQ_ERROR_HEADER, dead_letter.reason.as_str())
        .header(DLQ_SOURCE_HEADER, dead_letter.source.as_str());
    message.key = dead_letter.key.clone();
    let send = || shared.dlq.send(message.clone());
    retry(
        "Kafka dead-letter topic",
        stop,
        send,
        SinkError::is_retriable,
    )
    .await
    .map(|_| ())
}
