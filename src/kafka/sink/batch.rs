//! Many fast-path messages in one librdkafka call ([`KafkaSink::enqueue_batch`], and
//! [`KafkaSink::enqueue_batch_in`] into a [`DeliveryGroup`]): the messages are serialized into one buffer and handed
//! over with `rd_kafka_produce_batch`, which reads the clock and locks the topic once for
//! the batch where `rd_kafka_produce` does both for every message (about a tenth of
//! stream_sum's CPU time went to librdkafka's clock reads alone: docs/BENCHMARKS.md).

use super::context::{DeliveryGroup, GROUP_TAG};
use super::message::KafkaMessage;
use super::serializer::MessageSerializer;
use super::sink::{KafkaSink, SinkError};
use super::topic_handle::BatchMessage;
use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaError as RdKafkaError;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A thread's buffers for batches, reused: the serialized payloads end to end, where each
/// ends, and the records librdkafka reads.
#[derive(Default)]
struct Scratch {
    payloads: Vec<u8>,
    ends: Vec<usize>,
    records: Vec<rdsys::rd_kafka_message_t>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// How a batch went: how many messages librdkafka took, from where to try again (the queue
/// was full), and a refusal for another reason.
struct Taken {
    accepted: usize,
    queue_full_at: Option<usize>,
    refused: Option<SinkError>,
}

impl<T, S: MessageSerializer<T>> KafkaSink<T, S> {
    /// [`enqueue`](Self::enqueue) for many messages at once, in order, as
    /// [`enqueue_batch_in`](Self::enqueue_batch_in) hands them over; then serves the delivery
    /// reports that are ready.
    pub fn enqueue_batch(&self, messages: &[KafkaMessage<T>]) -> Result<(), SinkError> {
        self.check_open()?;
        if !self.shared.breaker.allow() {
            return Err(self.refuse(SinkError::CircuitOpen));
        }
        self.enqueue_all(messages, None, |_, _| {})?;
        self.producer.sender_poll(Duration::ZERO);
        Ok(())
    }

    /// [`enqueue_in`](Self::enqueue_in) for many messages at once, in order: one librdkafka
    /// call for the batch when every message goes to the sink's topic without headers or a
    /// timestamp of its own (else one call each). A full queue is waited out (serving
    /// delivery reports meanwhile) up to `send_timeout`, and the rest of the batch follows
    /// in order. On an error, the messages librdkafka took before it are on their way.
    pub fn enqueue_batch_in(
        &self,
        group: &DeliveryGroup,
        messages: &[KafkaMessage<T>],
    ) -> Result<(), SinkError> {
        self.check_open()?;
        let opaque = ((group.id as usize) << 2) | GROUP_TAG;
        self.enqueue_all(messages, Some(opaque), |handed, accepted| {
            // Counted before the send (`accepted` is None): delivery reports may arrive
            // before it returns.
            match accepted {
                None => group.state.pending.fetch_add(handed, Ordering::AcqRel),
                Some(accepted) => group
                    .state
                    .pending
                    .fetch_sub(handed - accepted, Ordering::AcqRel),
            };
        })
    }

    /// Hands every message over in order, waiting out a full queue; `count` hears how many
    /// are handed over before each try and how many were accepted after it.
    fn enqueue_all(
        &self,
        messages: &[KafkaMessage<T>],
        opaque: Option<usize>,
        count: impl Fn(u64, Option<u64>),
    ) -> Result<(), SinkError> {
        let mut rest = messages;
        let mut deadline = None;
        while !rest.is_empty() {
            count(rest.len() as u64, None);
            let taken = self.try_produce_batch(rest, opaque);
            count(rest.len() as u64, Some(taken.accepted as u64));
            if let Some(error) = taken.refused {
                return Err(self.fail(error));
            }
            let Some(from) = taken.queue_full_at else {
                return Ok(());
            };
            rest = &rest[from..];
            if Instant::now()
                >= *deadline.get_or_insert_with(|| Instant::now() + self.config.send_timeout)
            {
                return Err(self.fail(SinkError::QueueFullTimeout(self.config.send_timeout)));
            }
            // Room comes with delivery reports: serve them here meanwhile.
            self.producer.sender_poll(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Hands `messages` to librdkafka, in one call when they all can go through the topic
    /// handle; each carries `opaque`, or without it a fast-path ticket.
    fn try_produce_batch(&self, messages: &[KafkaMessage<T>], opaque: Option<usize>) -> Taken {
        let handle = messages
            .iter()
            .all(|message| self.handle_for(message).is_some())
            .then(|| self.producer.default_topic())
            .flatten();
        let Some(handle) = handle else {
            return self.try_produce_each(messages, opaque);
        };
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                payloads,
                ends,
                records,
            } = &mut *scratch;
            payloads.clear();
            ends.clear();
            for message in messages {
                if let Err(error) = self.serializer.serialize(&message.value, payloads) {
                    // Nothing was handed over yet.
                    return Taken {
                        accepted: 0,
                        queue_full_at: None,
                        refused: Some(error.into()),
                    };
                }
                ends.push(payloads.len());
            }
            let count = messages.len() as u64;
            self.shared.metrics.attempts(count);
            self.shared.outstanding.fetch_add(count, Ordering::AcqRel);
            let mut start = 0;
            let batch = messages.iter().zip(ends.iter()).map(|(message, &end)| {
                let payload = &payloads[start..end];
                start = end;
                BatchMessage {
                    partition: message.partition,
                    payload: (!self.serializer.is_null(&message.value)).then_some(payload),
                    key: message.key.as_deref(),
                    opaque: opaque.unwrap_or_else(|| self.shared.fast_path_ticket().opaque),
                }
            });
            let outcome = handle.produce_batch(batch, records);
            self.shared
                .outstanding
                .fetch_sub(count - outcome.accepted as u64, Ordering::AcqRel);
            Taken {
                accepted: outcome.accepted,
                queue_full_at: outcome.queue_full_at,
                refused: outcome
                    .refused
                    .map(|code| RdKafkaError::MessageProduction(code).into()),
            }
        })
    }

    /// One call per message, up to the first the full queue refuses.
    fn try_produce_each(&self, messages: &[KafkaMessage<T>], opaque: Option<usize>) -> Taken {
        for (index, message) in messages.iter().enumerate() {
            let opaque = opaque.unwrap_or_else(|| self.shared.fast_path_ticket().opaque);
            match self.try_produce(message, opaque) {
                Ok(true) => {}
                Ok(false) => {
                    return Taken {
                        accepted: index,
                        queue_full_at: Some(index),
                        refused: None,
                    }
                }
                Err(error) => {
                    return Taken {
                        accepted: index,
                        queue_full_at: None,
                        refused: Some(error),
                    }
                }
            }
        }
        Taken {
            accepted: messages.len(),
            queue_full_at: None,
            refused: None,
        }
    }
}
