//! Many fast-path messages in few librdkafka calls ([`KafkaSink::enqueue_batch`], and
//! [`KafkaSink::enqueue_batch_in`] into a [`DeliveryGroup`]): the messages are serialized
//! into one buffer and each run of them to one partition is handed over with
//! `rd_kafka_produce_batch`, which reads the clock, locks the topic and looks the partition
//! up once for the run where `rd_kafka_produce` does each for every message (librdkafka's
//! clock reads alone were about a tenth of stream_sum's CPU time: docs/BENCHMARKS.md).

use super::context::DeliveryGroup;
use super::message::KafkaMessage;
use super::serializer::MessageSerializer;
use super::sink::{KafkaSink, SinkError};
use super::topic_handle::{RunMessage, MAX_RUN};
use rdkafka::bindings as rdsys;
use rdkafka::error::KafkaError as RdKafkaError;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A thread's buffers for batches, reused: one message serialized, the payloads end to end,
/// where each ends, and the records librdkafka reads.
#[derive(Default)]
struct Scratch {
    one: Vec<u8>,
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

/// What [`KafkaSink::enqueue_all`] tells its caller about each try.
enum Handing {
    /// About to hand this many messages over.
    Before(u64),
    /// Of the messages just handed over, librdkafka took `accepted`.
    After { handed: u64, accepted: u64 },
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
        self.enqueue_all(messages, None, |_| {})?;
        self.producer.sender_poll(Duration::ZERO);
        Ok(())
    }

    /// [`enqueue_in`](Self::enqueue_in) for many messages at once, in order: each run of
    /// messages to the same partition (or to the partitioner) goes to librdkafka in one call
    /// when the messages go to the sink's topic without headers or a timestamp of their own
    /// (else one call each). A full queue is waited out (serving delivery reports meanwhile)
    /// up to `send_timeout`, and the batch goes on from the first message refused. A message
    /// refused for another reason (too large, a partition the topic lacks) fails the call:
    /// the messages before it are on their way, and so may be later ones of its run
    /// (librdkafka goes on after a message refused alone); no later run is handed over.
    pub fn enqueue_batch_in(
        &self,
        group: &DeliveryGroup,
        messages: &[KafkaMessage<T>],
    ) -> Result<(), SinkError> {
        self.check_open()?;
        self.enqueue_all(messages, Some(group.opaque()), |handing| {
            let pending = &group.state.pending;
            match handing {
                // Counted before the send: delivery reports may arrive before it returns.
                Handing::Before(handed) => pending.fetch_add(handed, Ordering::AcqRel),
                Handing::After { handed, accepted } => {
                    pending.fetch_sub(handed - accepted, Ordering::AcqRel)
                }
            };
        })
    }

    /// Hands every message over in order, waiting out a full queue; `count` hears of each
    /// try before and after it.
    fn enqueue_all(
        &self,
        messages: &[KafkaMessage<T>],
        opaque: Option<usize>,
        count: impl Fn(Handing),
    ) -> Result<(), SinkError> {
        let mut rest = messages;
        let mut deadline = None;
        while !rest.is_empty() {
            let handed = rest.len() as u64;
            count(Handing::Before(handed));
            let taken = self.try_produce_batch(rest, opaque);
            count(Handing::After {
                handed,
                accepted: taken.accepted as u64,
            });
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

    /// Hands `messages` to librdkafka, a run of one partition a call when they all can go
    /// through the topic handle; each carries `opaque`, or without it a fast-path ticket.
    fn try_produce_batch(&self, messages: &[KafkaMessage<T>], opaque: Option<usize>) -> Taken {
        let handle = messages
            .iter()
            .all(|message| self.is_plain(message))
            .then(|| self.producer.default_topic())
            .flatten();
        let Some(handle) = handle else {
            return self.try_produce_each(messages, opaque);
        };
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                one,
                payloads,
                ends,
                records,
            } = &mut *scratch;
            payloads.clear();
            ends.clear();
            for message in messages {
                // A serializer may clear its buffer: each gets an empty one.
                one.clear();
                if let Err(error) = self.serializer.serialize(&message.value, one) {
                    // Nothing was handed over yet.
                    return Taken {
                        accepted: 0,
                        queue_full_at: None,
                        refused: Some(error.into()),
                    };
                }
                payloads.extend_from_slice(one);
                ends.push(payloads.len());
            }
            let mut taken = Taken {
                accepted: 0,
                queue_full_at: None,
                refused: None,
            };
            let mut first = 0;
            while first < messages.len() {
                let partition = messages[first].partition;
                let run = messages[first..]
                    .iter()
                    .take(MAX_RUN)
                    .take_while(|message| message.partition == partition)
                    .count();
                let count = run as u64;
                self.shared.metrics.attempts(count);
                self.shared.outstanding.fetch_add(count, Ordering::AcqRel);
                let run_messages = (first..first + run).map(|index| {
                    let start = index.checked_sub(1).map_or(0, |before| ends[before]);
                    let message = &messages[index];
                    RunMessage {
                        payload: (!self.serializer.is_null(&message.value))
                            .then(|| &payloads[start..ends[index]]),
                        key: message.key.as_deref(),
                        opaque: opaque.unwrap_or_else(|| self.shared.fast_path_ticket().opaque),
                    }
                });
                let outcome = handle.produce_run(partition, run_messages, records);
                self.shared
                    .outstanding
                    .fetch_sub(count - outcome.accepted as u64, Ordering::AcqRel);
                taken.accepted += outcome.accepted;
                if let Some(code) = outcome.refused {
                    taken.refused = Some(RdKafkaError::MessageProduction(code).into());
                    return taken;
                }
                if let Some(at) = outcome.queue_full_at {
                    taken.queue_full_at = Some(first + at);
                    return taken;
                }
                first += run;
            }
            taken
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
