//! Delivery groups on [`KafkaSink`]: results sent on the fast path, each group awaited as
//! a whole (without a future per message), so a caller can commit what is behind a group
//! once all of it is delivered; and serving delivery reports on the sender's own thread.

use super::context::{DeliveryGroup, GroupDelivery, GroupState};
use super::message::KafkaMessage;
use super::serializer::MessageSerializer;
use super::sink::{KafkaSink, SinkError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl<T, S: MessageSerializer<T>> KafkaSink<T, S> {
    /// Serves the delivery reports that are ready, on the calling thread, without waiting.
    /// A sender of [`enqueue_in`](Self::enqueue_in) batches calls it once per batch, as a
    /// plain librdkafka loop polls once per batch: the reports' callbacks (and librdkafka's
    /// frees of what this thread allocated) then run here, not on the polling thread.
    pub fn serve_deliveries(&self) {
        self.producer.sender_poll(Duration::ZERO);
    }

    /// A new, empty [`DeliveryGroup`].
    pub fn delivery_group(&self) -> DeliveryGroup {
        let id = self.shared.next_group.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(GroupState::default());
        if let Ok(mut groups) = self.shared.groups.lock() {
            groups.insert(id, state.clone());
        }
        DeliveryGroup { id, state }
    }

    /// The fast path into `group`, without blocking: `Ok(false)` when librdkafka's queue is
    /// full (wait and try again). The delivery is awaited with [`wait_group`](Self::wait_group).
    pub fn try_enqueue_in(
        &self,
        group: &DeliveryGroup,
        message: &KafkaMessage<T>,
    ) -> Result<bool, SinkError> {
        self.check_open()?;
        let opaque = group.opaque();
        // Counted before the send: the delivery report may arrive before it returns.
        group.state.pending.fetch_add(1, Ordering::AcqRel);
        match self.try_produce(message, opaque) {
            Ok(true) => Ok(true),
            Ok(false) => {
                group.state.pending.fetch_sub(1, Ordering::AcqRel);
                Ok(false)
            }
            Err(error) => {
                group.state.pending.fetch_sub(1, Ordering::AcqRel);
                Err(self.fail(error))
            }
        }
    }

    /// [`try_enqueue_in`](Self::try_enqueue_in) that waits out a full queue (serving
    /// delivery reports meanwhile) up to `send_timeout`.
    pub fn enqueue_in(
        &self,
        group: &DeliveryGroup,
        message: &KafkaMessage<T>,
    ) -> Result<(), SinkError> {
        let mut deadline = None;
        loop {
            match self.try_enqueue_in(group, message)? {
                true => return Ok(()),
                false
                    if Instant::now()
                        < *deadline
                            .get_or_insert_with(|| Instant::now() + self.config.send_timeout) =>
                {
                    self.producer.sender_poll(Duration::from_millis(1))
                }
                false => {
                    return Err(self.fail(SinkError::QueueFullTimeout(self.config.send_timeout)))
                }
            }
        }
    }

    /// How `group` ended, once every message has its delivery report (the group is then
    /// forgotten); else the group back, still pending: [`wait_group`](Self::wait_group)
    /// without waiting.
    pub fn try_finish_group(&self, group: DeliveryGroup) -> Result<GroupDelivery, DeliveryGroup> {
        if group.state.pending.load(Ordering::Acquire) > 0 {
            return Err(group);
        }
        Ok(self.finish_group(group))
    }

    /// Waits until every message of `group` has its delivery report (librdkafka retries each
    /// up to `message_timeout`), and says how many failed.
    pub async fn wait_group(&self, group: DeliveryGroup) -> GroupDelivery {
        while group.state.pending.load(Ordering::Acquire) > 0 {
            group.state.done.notified().await;
        }
        self.finish_group(group)
    }

    fn finish_group(&self, group: DeliveryGroup) -> GroupDelivery {
        if let Ok(mut groups) = self.shared.groups.lock() {
            groups.remove(&group.id);
        }
        GroupDelivery {
            failed: group.state.failed.load(Ordering::Acquire),
            last_error: group
                .state
                .last_error
                .lock()
                .ok()
                .and_then(|mut last| last.take()),
        }
    }
}
