//! librdkafka's C API as the baseline uses it (through `rdkafka-sys`): a producer made with
//! `rd_kafka_new` whose delivery reports only count failures, its transactions, a topic
//! handle, the consumer's queue for `rd_kafka_consume_batch_queue`, and one record's sum
//! produced with `rd_kafka_produce`. Every `unsafe` of the baseline is in this file.

use super::BaselineError;
use crate::avro::encode_sum_result;
use crate::kafka::KafkaError;
use crate::stream_sum::sum_of;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for a delivery report when the producer queue is full.
const QUEUE_FULL_WAIT_MS: i32 = 100;
/// How long [`RawProducer::wait_ready`] waits for the producer id before asking for
/// metadata again (as `KafkaSink::connect` does).
const PRODUCER_ID_RETRIGGER: Duration = Duration::from_millis(20);
/// What librdkafka's statistics say once an idempotent producer has its id.
const PRODUCER_ID_ASSIGNED: &[u8] = b"\"idemp_state\": \"Assigned\"";
/// librdkafka's RD_KAFKA_PARTITION_UA (a C macro, so not in the bindings): let the
/// partitioner choose.
const PARTITION_UNASSIGNED: i32 = -1;

/// A producer made with librdkafka directly, as the C program makes it: delivery reports
/// served by `rd_kafka_poll` through a `dr_msg_cb` that only counts failures (rdkafka's
/// `BaseProducer` goes through the event API and reads the clock per report: 21% of the
/// loop's samples when the baseline used it), and a `stats_cb` that only looks for the
/// producer id.
pub(super) struct RawProducer {
    handle: *mut rdsys::rd_kafka_t,
    /// The callbacks' opaque: boxed so its address stays put.
    reports: Box<Reports>,
}

/// What the callbacks note.
#[derive(Default)]
struct Reports {
    failed: AtomicU64,
    producer_id_assigned: AtomicBool,
}

impl RawProducer {
    pub(super) fn new(config: &rdkafka::ClientConfig) -> Result<Self, BaselineError> {
        let native = config
            .create_native_config()
            .map_err(|e| BaselineError::Create(KafkaError::from(e).to_string()))?;
        let reports = Box::<Reports>::default();
        let mut reason = [0 as c_char; 512];
        // SAFETY: rd_kafka_new takes the duplicated conf on success; on failure it is ours
        // to destroy. The opaque outlives the handle (both dropped together, handle first).
        unsafe {
            let conf = rdsys::rd_kafka_conf_dup(native.ptr());
            rdsys::rd_kafka_conf_set_dr_msg_cb(conf, Some(count_failed_delivery));
            rdsys::rd_kafka_conf_set_stats_cb(conf, Some(note_producer_id));
            rdsys::rd_kafka_conf_set_opaque(conf, &*reports as *const Reports as *mut c_void);
            let handle = rdsys::rd_kafka_new(
                rdsys::rd_kafka_type_t::RD_KAFKA_PRODUCER,
                conf,
                reason.as_mut_ptr(),
                reason.len(),
            );
            if handle.is_null() {
                rdsys::rd_kafka_conf_destroy(conf);
                let reason = CStr::from_ptr(reason.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                return Err(BaselineError::Create(reason));
            }
            Ok(Self { handle, reports })
        }
    }

    /// Serves delivery reports, waiting up to `timeout_ms` for one.
    pub(super) fn poll(&self, timeout_ms: i32) {
        // SAFETY: a live handle.
        unsafe { rdsys::rd_kafka_poll(self.handle, timeout_ms) };
    }

    /// Waits until every produced message is delivered or failed; then fails on any failure.
    pub(super) fn flush(&self, timeout: Duration) -> Result<(), BaselineError> {
        // SAFETY: a live handle.
        let flushed = unsafe { rdsys::rd_kafka_flush(self.handle, millis(timeout)) };
        if flushed != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(BaselineError::Produce(flushed.into()));
        }
        match self.reports.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(BaselineError::Undelivered(failed)),
        }
    }

    /// Waits until the producer can send to `topic`, as stream_sum's workers wait for their
    /// sinks (`KafkaSink::connect`): the topic's metadata, then for an idempotent producer
    /// its id (seen in the statistics, so they must be on), until `timeout`.
    pub(super) fn wait_ready(
        &self,
        topic: &TopicHandle,
        idempotent: bool,
        timeout: Duration,
    ) -> Result<(), BaselineError> {
        let deadline = Instant::now() + timeout;
        self.metadata(topic, timeout)?;
        loop {
            let asked = Instant::now();
            while asked.elapsed() < PRODUCER_ID_RETRIGGER {
                let assigned = self.reports.producer_id_assigned.load(Ordering::Acquire);
                if !idempotent || assigned || Instant::now() >= deadline {
                    return Ok(());
                }
                // Statistics come through the poll.
                self.poll(2);
            }
            // librdkafka asks for a producer id after a metadata response (when a broker is
            // up), otherwise every 0.5 s. Only a nudge: its failure is ignored.
            let _ = self.metadata(topic, deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Asks for `topic`'s metadata and waits for it up to `timeout`.
    fn metadata(&self, topic: &TopicHandle, timeout: Duration) -> Result<(), BaselineError> {
        let mut metadata: *const rdsys::rd_kafka_metadata = std::ptr::null();
        // SAFETY: live handles; the metadata returned is destroyed once, below.
        let code = unsafe {
            rdsys::rd_kafka_metadata(self.handle, 0, topic.0, &mut metadata, millis(timeout))
        };
        if code != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(BaselineError::Metadata(code.into()));
        }
        // SAFETY: returned by the successful rd_kafka_metadata above.
        unsafe { rdsys::rd_kafka_metadata_destroy(metadata) };
        Ok(())
    }

    pub(super) fn init_transactions(&self, timeout: Duration) -> Result<(), BaselineError> {
        // SAFETY: a live handle; the returned error is consumed by `transaction`.
        transaction(unsafe { rdsys::rd_kafka_init_transactions(self.handle, millis(timeout)) })
    }

    pub(super) fn begin_transaction(&self) -> Result<(), BaselineError> {
        // SAFETY: as above.
        transaction(unsafe { rdsys::rd_kafka_begin_transaction(self.handle) })
    }

    /// Sends `offsets` (the next offset to read per partition) as `consumer`'s group to the
    /// open transaction, then commits it.
    pub(super) fn commit_transaction<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
        timeout: Duration,
    ) -> Result<(), BaselineError> {
        if offsets.count() > 0 {
            self.send_offsets(consumer, offsets, timeout)?;
        }
        // SAFETY: a live handle.
        transaction(unsafe { rdsys::rd_kafka_commit_transaction(self.handle, millis(timeout)) })
    }

    fn send_offsets<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        offsets: &TopicPartitionList,
        timeout: Duration,
    ) -> Result<(), BaselineError> {
        // SAFETY: a live consumer; the metadata is destroyed below, after its last use.
        let group =
            unsafe { rdsys::rd_kafka_consumer_group_metadata(consumer.client().native_ptr()) };
        if group.is_null() {
            return Err(BaselineError::Transaction(
                "the consumer has no group metadata".into(),
            ));
        }
        // SAFETY: live handles; librdkafka copies what it needs from `offsets` and `group`.
        let sent = transaction(unsafe {
            rdsys::rd_kafka_send_offsets_to_transaction(
                self.handle,
                offsets.ptr(),
                group,
                millis(timeout),
            )
        });
        // SAFETY: made by rd_kafka_consumer_group_metadata, destroyed once.
        unsafe { rdsys::rd_kafka_consumer_group_metadata_destroy(group) };
        sent
    }

    /// Makes a topic handle for producing to `name`.
    pub(super) fn topic(&self, name: &str) -> Result<TopicHandle, BaselineError> {
        let c_name = CString::new(name).map_err(|_| BaselineError::TopicName(name.into()))?;
        // SAFETY: a live producer and a NUL-terminated name; the handle is dropped before
        // the producer (its owner declares it after).
        let topic = unsafe {
            rdsys::rd_kafka_topic_new(self.handle, c_name.as_ptr(), std::ptr::null_mut())
        };
        if topic.is_null() {
            return Err(BaselineError::TopicHandle(name.into()));
        }
        Ok(TopicHandle(topic))
    }
}

impl Drop for RawProducer {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_new, destroyed only here (its topic handles first).
        unsafe { rdsys::rd_kafka_destroy(self.handle) }
    }
}

fn millis(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
}

/// Turns a transactional call's `rd_kafka_error_t` (null: success) into a result, and
/// destroys it.
fn transaction(error: *mut rdsys::rd_kafka_error_t) -> Result<(), BaselineError> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a live error object returned by librdkafka, destroyed once, after this read.
    let reason = unsafe {
        let reason = CStr::from_ptr(rdsys::rd_kafka_error_string(error))
            .to_string_lossy()
            .into_owned();
        rdsys::rd_kafka_error_destroy(error);
        reason
    };
    Err(BaselineError::Transaction(reason))
}

/// librdkafka's delivery callback: counts failed deliveries in the opaque's counter.
unsafe extern "C" fn count_failed_delivery(
    _producer: *mut rdsys::rd_kafka_t,
    message: *const rdsys::rd_kafka_message_t,
    reports: *mut c_void,
) {
    // SAFETY: librdkafka passes a live message and the opaque set in RawProducer::new.
    unsafe {
        if (*message).err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            (*(reports as *const Reports))
                .failed
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// librdkafka's statistics callback: notes when the producer id is assigned. Returns 0:
/// librdkafka frees the JSON.
unsafe extern "C" fn note_producer_id(
    _producer: *mut rdsys::rd_kafka_t,
    json: *mut c_char,
    len: usize,
    reports: *mut c_void,
) -> std::os::raw::c_int {
    // SAFETY: librdkafka passes `len` bytes of JSON, live during the call, and the opaque
    // set in RawProducer::new.
    unsafe {
        let reports = &*(reports as *const Reports);
        if reports.producer_id_assigned.load(Ordering::Relaxed) {
            return 0;
        }
        let json = std::slice::from_raw_parts(json as *const u8, len);
        if json
            .windows(PRODUCER_ID_ASSIGNED.len())
            .any(|window| window == PRODUCER_ID_ASSIGNED)
        {
            reports.producer_id_assigned.store(true, Ordering::Release);
        }
    }
    0
}

/// The output topic handle; destroyed with it.
pub(super) struct TopicHandle(*mut rdsys::rd_kafka_topic_t);

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_topic_new and destroyed only here.
        unsafe { rdsys::rd_kafka_topic_destroy(self.0) }
    }
}

/// A consumer's queue, read in batches; destroyed with it.
pub(super) struct ConsumerQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
    messages: Vec<*mut rdsys::rd_kafka_message_t>,
}

/// One consumed message, valid during [`ConsumerQueue::consume_batch`]'s callback.
pub(super) struct Consumed<'a>(&'a rdsys::rd_kafka_message_t);

impl Consumed<'_> {
    pub(super) fn partition(&self) -> i32 {
        self.0.partition
    }

    pub(super) fn has_key(&self) -> bool {
        !self.0.key.is_null()
    }

    pub(super) fn offset(&self) -> i64 {
        self.0.offset
    }

    /// The message's error, `None` for a record; end-of-partition events are never passed.
    pub(super) fn error(&self) -> Option<RDKafkaErrorCode> {
        (self.0.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| self.0.err.into())
    }
}

impl ConsumerQueue {
    /// The queue of `consumer` (which must not be subscribed: rdkafka routes rebalance
    /// events through it otherwise), read up to `batch` messages a call.
    pub(super) fn of<C: ConsumerContext>(consumer: &BaseConsumer<C>, batch: usize) -> Self {
        // SAFETY: a live consumer; the queue handle is dropped before it (its owner declares
        // it after).
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        Self {
            queue,
            messages: vec![std::ptr::null_mut(); batch],
        }
    }

    /// `rd_kafka_consume_batch_queue` of up to `max` messages (at most the batch size),
    /// waiting up to `timeout_ms`; `each` sees every message but end-of-partition events.
    /// Returns how many messages came.
    pub(super) fn consume_batch(
        &mut self,
        timeout_ms: i32,
        max: usize,
        mut each: impl FnMut(Consumed<'_>),
    ) -> Result<usize, BaselineError> {
        let max = max.min(self.messages.len());
        // SAFETY: `messages` has room for `max` pointers; each returned message is destroyed
        // below, after its last use.
        let count = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.messages.as_mut_ptr(),
                max,
            )
        };
        if count < 0 {
            // SAFETY: reads this thread's last librdkafka error.
            let code = unsafe { rdsys::rd_kafka_last_error() };
            return Err(BaselineError::Consume(code.into()));
        }
        for &message in &self.messages[..count as usize] {
            // SAFETY: librdkafka returned `count` valid messages; each is destroyed once,
            // right after its use.
            unsafe {
                if (*message).err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    each(Consumed(&*message));
                }
                rdsys::rd_kafka_message_destroy(message);
            }
        }
        Ok(count as usize)
    }
}

impl Drop for ConsumerQueue {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_queue_get_consumer and destroyed only here.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) }
    }
}

/// Produces the sum of one consumed record under its key, to `partition` or the one the
/// partitioner picks, `value` a reused buffer. Waits for room when the producer queue is
/// full, as the C program does.
pub(super) fn produce_sum(
    record: &Consumed<'_>,
    partition: Option<i32>,
    topic: &TopicHandle,
    producer: &RawProducer,
    value: &mut Vec<u8>,
) -> Result<(), BaselineError> {
    let message = record.0;
    let payload = (!message.payload.is_null()).then(|| {
        // SAFETY: librdkafka's payload pointer and length of a live message.
        unsafe { std::slice::from_raw_parts(message.payload as *const u8, message.len) }
    });
    let sum = sum_of(payload).map_err(BaselineError::Undecodable)?;
    value.clear();
    encode_sum_result(sum, value);
    loop {
        // SAFETY: a live topic handle; RD_KAFKA_MSG_F_COPY makes librdkafka copy the value
        // and key before returning, so both may be reused at once.
        let status = unsafe {
            rdsys::rd_kafka_produce(
                topic.0,
                partition.unwrap_or(PARTITION_UNASSIGNED),
                rdsys::RD_KAFKA_MSG_F_COPY,
                value.as_mut_ptr() as *mut c_void,
                value.len(),
                message.key as *const c_void,
                message.key_len,
                std::ptr::null_mut(),
            )
        };
        if status == 0 {
            return Ok(());
        }
        // SAFETY: reads this thread's last librdkafka error.
        let code: RDKafkaErrorCode = unsafe { rdsys::rd_kafka_last_error() }.into();
        if code != RDKafkaErrorCode::QueueFull {
            return Err(BaselineError::Produce(code));
        }
        producer.poll(QUEUE_FULL_WAIT_MS);
    }
}
