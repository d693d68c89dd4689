//! The yardstick of `stream_sum bench`: the same consume-sum-produce work as a minimal loop
//! on librdkafka's own batch API (through `rdkafka-sys`), written the way the tuned plain-C
//! program of issue 16 is: one consumer assigned every range, `rd_kafka_consume_batch_queue`
//! of up to [`BATCH`] messages per call, `fetch.queue.backoff.ms=1`, one `rd_kafka_produce`
//! per sum on a topic handle made once, and one `rd_kafka_poll` per batch serving a
//! `dr_msg_cb`; the producer has the settings of stream_sum's own output sink (snappy,
//! 20 ms linger, large batches).
//! No dead-letter topic, no commits, no back-pressure: it only has to be fast and right.
//!
//! Timed like stream_sum: from the first consumed message to the last result acknowledged
//! (the final flush); start-up (client creation and assignment, up to the first message)
//! apart.

use super::{output_sink_config, sum_of, worker_consumer, StreamSumError};
use crate::avro::encode_sum_result;
use crate::config::Config;
use crate::kafka::statistics::StatisticsContext;
use crate::kafka::topic_reader::PartitionRange;
use crate::kafka::KafkaError;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Messages per `rd_kafka_consume_batch_queue` call, as in the C program.
const BATCH: usize = 10_000;
/// Longest wait of one batch call.
const BATCH_WAIT_MS: i32 = 100;
/// How long the loop waits for a message it knows exists before failing.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
const FLUSH_TIMEOUT_MS: i32 = 120_000;
/// Longest wait for a delivery report when the producer queue is full.
const QUEUE_FULL_WAIT_MS: i32 = 100;
/// librdkafka's RD_KAFKA_PARTITION_UA (a C macro, so not in the bindings): let the
/// partitioner choose.
const PARTITION_UNASSIGNED: i32 = -1;

/// What the baseline did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineRun {
    /// Results produced (one per input record).
    pub records: u64,
    /// Client creation and assignment, up to the first consumed message.
    pub startup: Duration,
    /// First consumed message to the last result acknowledged.
    pub elapsed: Duration,
}

impl BaselineRun {
    pub fn msg_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A producer made with librdkafka directly, as the C program makes it: delivery reports
/// served by `rd_kafka_poll` through a `dr_msg_cb` that only counts failures (rdkafka's
/// `BaseProducer` goes through the event API and read the clock per report: 21% of the
/// loop's samples when this used it).
struct RawProducer {
    handle: *mut rdsys::rd_kafka_t,
    /// The callback's opaque: boxed so its address stays put.
    failed: Box<AtomicU64>,
}

impl RawProducer {
    fn new(config: &rdkafka::ClientConfig) -> Result<Self, StreamSumError> {
        let native = config.create_native_config().map_err(KafkaError::from)?;
        let failed = Box::new(AtomicU64::new(0));
        let mut reason = [0 as c_char; 512];
        // SAFETY: rd_kafka_new takes the duplicated conf on success; on failure it is ours
        // to destroy. The opaque outlives the handle (both dropped together, handle first).
        unsafe {
            let conf = rdsys::rd_kafka_conf_dup(native.ptr());
            rdsys::rd_kafka_conf_set_dr_msg_cb(conf, Some(count_failed_delivery));
            rdsys::rd_kafka_conf_set_opaque(conf, &*failed as *const AtomicU64 as *mut c_void);
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
                return Err(BaselineError::Create(reason).into());
            }
            Ok(Self { handle, failed })
        }
    }

    /// Serves delivery reports, waiting up to `timeout_ms` for one.
    fn poll(&self, timeout_ms: i32) {
        // SAFETY: a live handle.
        unsafe { rdsys::rd_kafka_poll(self.handle, timeout_ms) };
    }
}

impl Drop for RawProducer {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_new, destroyed only here (its topic handles first).
        unsafe { rdsys::rd_kafka_destroy(self.handle) }
    }
}

/// librdkafka's delivery callback: counts failed deliveries in the opaque's counter.
unsafe extern "C" fn count_failed_delivery(
    _producer: *mut rdsys::rd_kafka_t,
    message: *const rdsys::rd_kafka_message_t,
    failed: *mut c_void,
) {
    // SAFETY: librdkafka passes a live message and the opaque set in RawProducer::new.
    unsafe {
        if (*message).err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            (*(failed as *const AtomicU64)).fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    #[error("librdkafka refused the producer: {0}")]
    Create(String),
    #[error("the topic name {0:?} holds a NUL byte")]
    TopicName(String),
    #[error("librdkafka refused a topic handle for {0}")]
    TopicHandle(String),
    #[error("no message for {0:?} while {1} of the backlog's records were still unread")]
    Stalled(Duration, u64),
    #[error("{0} results failed delivery")]
    Undelivered(u64),
    #[error("consuming failed: {0}")]
    Consume(RDKafkaErrorCode),
    #[error("producing failed: {0}")]
    Produce(RDKafkaErrorCode),
    #[error("a record of the backlog does not decode: {0}")]
    Undecodable(String),
}

/// The output topic handle; destroyed with it.
struct TopicHandle(*mut rdsys::rd_kafka_topic_t);

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_topic_new and destroyed only here.
        unsafe { rdsys::rd_kafka_topic_destroy(self.0) }
    }
}

/// The consumer's queue; destroyed with it.
struct QueueHandle(*mut rdsys::rd_kafka_queue_t);

impl Drop for QueueHandle {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_queue_get_consumer and destroyed only here.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0) }
    }
}

/// Reads `ranges` of `config.stream_sum.input_topic`, writes each record's sum to
/// `output_topic`, and waits until every result is acknowledged.
pub fn run_baseline(
    config: &Config,
    ranges: &[PartitionRange],
    output_topic: &str,
) -> Result<BaselineRun, StreamSumError> {
    let created = Instant::now();
    let group = format!("stream-sum-baseline-{}", std::process::id());
    let consumer = worker_consumer(config, &group, StatisticsContext, |consumer| {
        consumer
            .set("fetch.queue.backoff.ms", "1")
            .set("auto.offset.reset", "error");
    })?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    let mut unread = 0_u64;
    for range in ranges.iter().filter(|range| range.start < range.end) {
        assignment.add_partition_offset(
            &config.stream_sum.input_topic,
            range.partition,
            Offset::Offset(range.start),
        )?;
        ends.insert(range.partition, range.end);
        unread += (range.end - range.start) as u64;
    }
    let records = unread;
    consumer.assign(&assignment)?;

    let sink = output_sink_config(config, "stream_sum-baseline".into(), None);
    let producer = RawProducer::new(&sink.client_config()?)?;
    let topic_name =
        CString::new(output_topic).map_err(|_| BaselineError::TopicName(output_topic.into()))?;
    // SAFETY: a live producer and a NUL-terminated name; the handle is dropped before the
    // producer (declared after it).
    let topic = TopicHandle(unsafe {
        rdsys::rd_kafka_topic_new(producer.handle, topic_name.as_ptr(), std::ptr::null_mut())
    });
    if topic.0.is_null() {
        return Err(BaselineError::TopicHandle(output_topic.into()).into());
    }
    // SAFETY: a live consumer; the queue handle is dropped before it.
    let queue =
        QueueHandle(unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) });

    let mut messages: Vec<*mut rdsys::rd_kafka_message_t> = vec![std::ptr::null_mut(); BATCH];
    let mut value = Vec::with_capacity(16);
    let mut first_consumed = None;
    let mut last_progress = Instant::now();
    while unread > 0 {
        // SAFETY: `messages` has room for BATCH pointers; each returned message is destroyed
        // below, after its last use.
        let count = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                queue.0,
                BATCH_WAIT_MS,
                messages.as_mut_ptr(),
                BATCH,
            )
        };
        if count < 0 {
            // SAFETY: reads this thread's last librdkafka error.
            let code = unsafe { rdsys::rd_kafka_last_error() };
            return Err(BaselineError::Consume(code.into()).into());
        }
        if count == 0 {
            if last_progress.elapsed() > IDLE_LIMIT {
                return Err(BaselineError::Stalled(IDLE_LIMIT, unread).into());
            }
            continue;
        }
        last_progress = Instant::now();
        first_consumed.get_or_insert(last_progress);
        let mut failure = None;
        for &message in &messages[..count as usize] {
            // SAFETY: librdkafka returned `count` valid messages; each is destroyed once,
            // below, and not used after.
            let record = unsafe { &*message };
            let past_range = record.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                && ends
                    .get(&record.partition)
                    .is_none_or(|end| record.offset >= *end);
            if failure.is_none() && !past_range {
                // SAFETY: as above.
                match unsafe { produce_sum(record, &topic, &producer, &mut value) } {
                    Ok(true) => unread -= 1,
                    Ok(false) => {}
                    Err(error) => failure = Some(error),
                }
            }
            // SAFETY: as above.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
        if let Some(error) = failure {
            return Err(error.into());
        }
        producer.poll(0);
    }
    // SAFETY: a live handle.
    let flushed = unsafe { rdsys::rd_kafka_flush(producer.handle, FLUSH_TIMEOUT_MS) };
    let done = Instant::now();
    if flushed != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(BaselineError::Produce(flushed.into()).into());
    }
    let failed = producer.failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(BaselineError::Undelivered(failed).into());
    }
    let first_consumed = first_consumed.unwrap_or(done);
    Ok(BaselineRun {
        records,
        startup: first_consumed - created,
        elapsed: done - first_consumed,
    })
}

/// Produces the sum of one consumed message; `Ok(false)` for an event that is not a record
/// (end of partition).
///
/// # Safety
/// `message` must be a message returned by librdkafka and not yet destroyed.
unsafe fn produce_sum(
    message: &rdsys::rd_kafka_message_t,
    topic: &TopicHandle,
    producer: &RawProducer,
    value: &mut Vec<u8>,
) -> Result<bool, BaselineError> {
    match message.err {
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => return Ok(false),
        code => return Err(BaselineError::Consume(code.into())),
    }
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
                PARTITION_UNASSIGNED,
                rdsys::RD_KAFKA_MSG_F_COPY,
                value.as_mut_ptr() as *mut c_void,
                value.len(),
                message.key as *const c_void,
                message.key_len,
                std::ptr::null_mut(),
            )
        };
        if status == 0 {
            return Ok(true);
        }
        // SAFETY: reads this thread's last librdkafka error.
        let code: RDKafkaErrorCode = unsafe { rdsys::rd_kafka_last_error() }.into();
        if code != RDKafkaErrorCode::QueueFull {
            return Err(BaselineError::Produce(code));
        }
        // Serve delivery reports until there is room, as the C program does.
        producer.poll(QUEUE_FULL_WAIT_MS);
    }
}
