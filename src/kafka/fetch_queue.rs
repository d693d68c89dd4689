//! [`FetchQueue`]: a consumer's fetched records of one topic, taken from librdkafka in
//! batches (`rd_kafka_consume_batch_queue`) instead of one event per record.
//!
//! rdkafka's `BaseConsumer::poll` returns one record per call, each wrapped in an event with
//! a reference-counted handle and a clock read; at a million records a second that was a
//! measurable share of stream_sum's consuming threads (docs/BENCHMARKS.md).
//!
//! The records cannot be taken in batches from the consumer's own queue: rdkafka turns on
//! rebalance events there, and librdkafka's batch call serves a rebalance it meets by
//! unassigning. So each partition's fetch queue is forwarded here, and the consumer queue
//! keeps the events, still served by `BaseConsumer::poll`. Two librdkafka rules shape the
//! use:
//! - once the application forwards a partition's queue, librdkafka never forwards it to the
//!   consumer queue again, but it drops the forward whenever the partition's fetching stops
//!   (a revocation): [`route`](FetchQueue::route) again after every assignment (records
//!   fetched meanwhile wait in the partition's queue and move here in order);
//! - records a partition delivered to the consumer queue before it was routed are older than
//!   any here: serve the consumer queue to empty after routing and before taking, so each
//!   partition's records are seen in order.
//!
//! Records of a revoked partition still waiting here are outdated: they are dropped once
//! librdkafka's version barrier reaches this queue (one taken just before it may still be
//! returned, as between any two takes).

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchQueueError {
    #[error("the topic name {0:?} holds a NUL byte")]
    TopicName(String),
    #[error("librdkafka refused a queue")]
    NoQueue,
    #[error("taking a batch of records failed: {0}")]
    Take(RDKafkaErrorCode),
}

/// The records of the routed partitions of one topic, taken in batches. Used by one thread,
/// next to the consumer it belongs to.
pub struct FetchQueue<'c, C: ConsumerContext> {
    consumer: &'c BaseConsumer<C>,
    topic: CString,
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The records of the last [`take`](Self::take), destroyed by the next one or on drop.
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
    /// Partitions routed here at least once, unrouted on drop.
    routed: Vec<i32>,
}

impl<'c, C: ConsumerContext> FetchQueue<'c, C> {
    /// An empty queue for `topic`'s records; nothing is routed to it yet.
    pub fn new(consumer: &'c BaseConsumer<C>, topic: &str) -> Result<Self, FetchQueueError> {
        let topic =
            CString::new(topic).map_err(|_| FetchQueueError::TopicName(topic.to_string()))?;
        // SAFETY: a live consumer handle; the queue is destroyed in Drop, before the consumer
        // (borrowed for 'c).
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        let queue = NonNull::new(queue).ok_or(FetchQueueError::NoQueue)?;
        Ok(Self {
            consumer,
            topic,
            queue,
            taken: Vec::new(),
            routed: Vec::new(),
        })
    }

    /// Forwards these partitions' fetched records here (again: a partition whose fetching
    /// stopped lost its forward). Cheap when already routed.
    pub fn route(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            if self.route_one(partition) && !self.routed.contains(&partition) {
                self.routed.push(partition);
            }
        }
    }

    fn route_one(&self, partition: i32) -> bool {
        // SAFETY: a live consumer and a NUL-terminated topic; the partition queue handle is
        // destroyed right after forwarding (the forward stays, held by librdkafka).
        unsafe {
            let partition_queue = rdsys::rd_kafka_queue_get_partition(
                self.consumer.client().native_ptr(),
                self.topic.as_ptr(),
                partition,
            );
            if partition_queue.is_null() {
                return false;
            }
            rdsys::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
            rdsys::rd_kafka_queue_destroy(partition_queue);
        }
        true
    }

    /// Routes again every partition routed so far (after an assignment: see the module).
    pub fn reroute(&mut self) {
        for index in 0..self.routed.len() {
            let partition = self.routed[index];
            self.route_one(partition);
        }
    }

    /// Takes up to `max` records, waiting up to `timeout` for the first: what is queued
    /// comes at once. The previous batch is released first.
    ///
    /// `rd_kafka_consume_batch_queue` itself waits until it has `max` records or the timeout
    /// passed: a consumer at the end of its backlog (or ahead of its fetches) sat out the
    /// whole timeout with records in hand (the last 0.1% of a bench run came 85 ms late,
    /// docs/BENCHMARKS.md). So what is there is taken without waiting, and only an empty
    /// queue is waited on, for one record.
    pub fn take(&mut self, timeout: Duration, max: usize) -> Result<Taken<'_>, FetchQueueError> {
        self.release();
        self.taken.resize(max, std::ptr::null_mut());
        let mut count = self.consume(0, 0)?;
        if count == 0 && max > 0 && !timeout.is_zero() {
            // librdkafka counts whole milliseconds: a shorter wait is one, not none.
            let timeout_ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
            self.taken.truncate(1);
            count = self.consume(0, timeout_ms)?;
            self.taken.resize(max, std::ptr::null_mut());
            if count == 1 {
                count += self.consume(1, 0)?;
            }
        }
        self.taken.truncate(count);
        Ok(Taken {
            messages: &self.taken,
        })
    }

    /// `rd_kafka_consume_batch_queue` into `taken[from..]`; how many records came. On an
    /// error, the records taken so far are kept for release and the rest dropped.
    fn consume(&mut self, from: usize, timeout_ms: i32) -> Result<usize, FetchQueueError> {
        let room = self.taken.len().saturating_sub(from);
        if room == 0 {
            return Ok(0);
        }
        // SAFETY: `taken[from..]` has room for `room` pointers; librdkafka fills the first
        // `count`, each destroyed once by `release`.
        let count = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                self.taken.as_mut_ptr().add(from),
                room,
            )
        };
        if count < 0 {
            self.taken.truncate(from);
            // SAFETY: reads this thread's last librdkafka error.
            let code = unsafe { rdsys::rd_kafka_last_error() };
            return Err(FetchQueueError::Take(code.into()));
        }
        Ok(count as usize)
    }

    fn release(&mut self) {
        for message in self.taken.drain(..) {
            // SAFETY: returned by rd_kafka_consume_batch_queue and destroyed only here.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}

impl<C: ConsumerContext> Drop for FetchQueue<'_, C> {
    fn drop(&mut self) {
        self.release();
        // Back to no forward, so nothing is routed to a destroyed queue.
        for &partition in &self.routed {
            // SAFETY: as in `route`, forwarding to nothing.
            unsafe {
                let partition_queue = rdsys::rd_kafka_queue_get_partition(
                    self.consumer.client().native_ptr(),
                    self.topic.as_ptr(),
                    partition,
                );
                if !partition_queue.is_null() {
                    rdsys::rd_kafka_queue_forward(partition_queue, std::ptr::null_mut());
                    rdsys::rd_kafka_queue_destroy(partition_queue);
                }
            }
        }
        // SAFETY: made by rd_kafka_queue_new and destroyed only here.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// The records of one [`FetchQueue::take`], valid until the next.
pub struct Taken<'q> {
    messages: &'q [*mut rdsys::rd_kafka_message_t],
}

impl<'q> Taken<'q> {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = FetchedRecord<'q>> + '_ {
        self.messages.iter().map(|&message| FetchedRecord {
            // SAFETY: a live message of this batch, not destroyed before the batch is.
            message: unsafe { &*message },
        })
    }
}

/// One record (or a partition's error) of a [`Taken`] batch.
pub struct FetchedRecord<'q> {
    message: &'q rdsys::rd_kafka_message_t,
}

impl<'q> FetchedRecord<'q> {
    /// The error librdkafka reported in this record's place (end of partition, offset out of
    /// range, ...), if any.
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.message.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| self.message.err.into())
    }

    pub fn partition(&self) -> i32 {
        self.message.partition
    }

    pub fn offset(&self) -> i64 {
        self.message.offset
    }

    pub fn key(&self) -> Option<&'q [u8]> {
        // SAFETY: librdkafka's key pointer and length of a live message.
        (!self.message.key.is_null()).then(|| unsafe {
            std::slice::from_raw_parts(self.message.key as *const u8, self.message.key_len)
        })
    }

    pub fn payload(&self) -> Option<&'q [u8]> {
        // SAFETY: librdkafka's payload pointer and length of a live message.
        (!self.message.payload.is_null()).then(|| unsafe {
            std::slice::from_raw_parts(self.message.payload as *const u8, self.message.len)
        })
    }
}
