//! The sink's default topic as a librdkafka topic handle, so a message to it is produced
//! without naming its topic.
//!
//! rust-rdkafka's `BaseProducer::send` names the topic of every message: it copies the name
//! into a new C string, and librdkafka looks the topic up under its lock and releases it
//! again, for each message. A plain librdkafka program makes the handle once and calls
//! `rd_kafka_produce` with it; the fast path does the same for messages that need nothing
//! `rd_kafka_produce` cannot carry (another topic, headers, a timestamp). perf put the
//! per-message lookup at about a tenth of stream_sum's producing thread (docs/BENCHMARKS.md).

use rdkafka::bindings as rdsys;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use std::ffi::{c_void, CString};
use std::ptr::{self, NonNull};

/// librdkafka's `RD_KAFKA_PARTITION_UA`: the partitioner picks (a C macro, not in the bindings).
const PARTITION_UNASSIGNED: i32 = -1;

/// A librdkafka topic handle of one producer. It must be dropped before that producer
/// (`PolledProducer` declares it first).
pub(super) struct TopicHandle {
    raw: NonNull<rdsys::rd_kafka_topic_t>,
}

// librdkafka's topic handles are reference counted and used from any thread: the library's
// own `rd_kafka_produce` is documented thread safe, and the handle is only read here.
unsafe impl Send for TopicHandle {}
unsafe impl Sync for TopicHandle {}

impl TopicHandle {
    /// A handle on `topic` for `producer`, with the producer's default topic configuration
    /// (where rust-rdkafka puts a custom partitioner). None when librdkafka refuses it or the
    /// name holds a NUL byte: the sink then names the topic per message, as before.
    pub(super) fn new<C, P>(
        producer: &rdkafka::producer::BaseProducer<C, P>,
        topic: &str,
    ) -> Option<Self>
    where
        C: rdkafka::producer::ProducerContext<P>,
        P: rdkafka::producer::Partitioner,
    {
        let name = CString::new(topic).ok()?;
        // SAFETY: the client pointer is live for the producer's lifetime, which outlasts
        // this handle; a null configuration means the producer's default topic one.
        let raw = unsafe {
            rdsys::rd_kafka_topic_new(
                producer.client().native_ptr(),
                name.as_ptr(),
                ptr::null_mut(),
            )
        };
        NonNull::new(raw).map(|raw| Self { raw })
    }

    /// Hands one message to librdkafka (which copies payload and key), stamped now, to
    /// `partition` or the one the partitioner picks. `opaque` comes back in its delivery
    /// report, as `send`'s delivery opaque does.
    pub(super) fn produce(
        &self,
        partition: Option<i32>,
        payload: Option<&[u8]>,
        key: Option<&[u8]>,
        opaque: usize,
    ) -> Result<(), RDKafkaErrorCode> {
        let (payload_ptr, payload_len) = raw_parts(payload);
        let (key_ptr, key_len) = raw_parts(key);
        // SAFETY: the handle is live; with RD_KAFKA_MSG_F_COPY librdkafka copies payload
        // and key before returning and never writes through the payload pointer.
        let status = unsafe {
            rdsys::rd_kafka_produce(
                self.raw.as_ptr(),
                partition.unwrap_or(PARTITION_UNASSIGNED),
                rdsys::RD_KAFKA_MSG_F_COPY,
                payload_ptr as *mut c_void,
                payload_len,
                key_ptr as *const c_void,
                key_len,
                opaque as *mut c_void,
            )
        };
        if status == 0 {
            return Ok(());
        }
        // SAFETY: reads this thread's last librdkafka error, set by the failed call.
        Err(unsafe { rdsys::rd_kafka_last_error() }.into())
    }
}

/// One message of a run for [`TopicHandle::produce_run`].
pub(super) struct RunMessage<'a> {
    pub(super) payload: Option<&'a [u8]>,
    pub(super) key: Option<&'a [u8]>,
    pub(super) opaque: usize,
}

/// What [`TopicHandle::produce_run`] did with a run of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunOutcome {
    /// Messages librdkafka took.
    pub(super) accepted: usize,
    /// The first message refused because the queue was full: it and every one after it
    /// were refused (librdkafka stops there), the ones before it were not.
    pub(super) queue_full_at: Option<usize>,
    /// The first refusal for another reason: the whole run when the partition is not there;
    /// one message when it alone is refused (too large), and librdkafka goes on after it.
    pub(super) refused: Option<RDKafkaErrorCode>,
}

/// Most messages one `rd_kafka_produce_batch` call takes (its count is a C int).
pub(super) const MAX_RUN: usize = 1 << 16;

impl TopicHandle {
    /// Hands a run of messages for one `partition` (or for the partitioner, `None`) to
    /// librdkafka in one call, `rd_kafka_produce_batch`: the clock is read, the topic locked
    /// and the partition looked up once for the run, where `rd_kafka_produce` does each per
    /// message. librdkafka copies payloads and keys; each message's opaque comes back in its
    /// delivery report. At most [`MAX_RUN`] messages are taken; `scratch` is reused.
    ///
    /// One partition a call, not a partition per message (`RD_KAFKA_MSG_F_PARTITION`):
    /// librdkafka 2.12 leaks a message whose own partition is not there (it is counted
    /// in flight for good, and every flush then waits out its timeout).
    pub(super) fn produce_run<'a>(
        &self,
        partition: Option<i32>,
        messages: impl Iterator<Item = RunMessage<'a>>,
        scratch: &mut Vec<rdsys::rd_kafka_message_t>,
    ) -> RunOutcome {
        scratch.clear();
        for message in messages.take(MAX_RUN) {
            let (payload, len) = raw_parts(message.payload);
            let (key, key_len) = raw_parts(message.key);
            scratch.push(rdsys::rd_kafka_message_t {
                err: rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                rkt: ptr::null_mut(),
                partition: PARTITION_UNASSIGNED,
                payload: payload as *mut c_void,
                len,
                key: key as *mut c_void,
                key_len,
                offset: 0,
                _private: message.opaque as *mut c_void,
            });
        }
        // At most MAX_RUN: fits.
        let count = i32::try_from(scratch.len()).unwrap_or(0);
        // SAFETY: the handle is live; every pointer in `scratch` points into a slice
        // borrowed for 'a, which outlives this call, and RD_KAFKA_MSG_F_COPY makes
        // librdkafka copy payload and key before returning (it never writes through them).
        let accepted = unsafe {
            rdsys::rd_kafka_produce_batch(
                self.raw.as_ptr(),
                partition.unwrap_or(PARTITION_UNASSIGNED),
                rdsys::RD_KAFKA_MSG_F_COPY,
                scratch.as_mut_ptr(),
                count,
            )
        };
        let mut outcome = RunOutcome {
            accepted: usize::try_from(accepted).unwrap_or(0),
            queue_full_at: None,
            refused: None,
        };
        for (index, message) in scratch.iter().enumerate() {
            match RDKafkaErrorCode::from(message.err) {
                RDKafkaErrorCode::NoError => {}
                RDKafkaErrorCode::QueueFull => {
                    outcome.queue_full_at = Some(index);
                    break;
                }
                code => {
                    outcome.refused.get_or_insert(code);
                }
            }
        }
        scratch.clear();
        outcome
    }
}

/// A payload or key as librdkafka takes it: pointer and length, null for none.
fn raw_parts(bytes: Option<&[u8]>) -> (*const u8, usize) {
    bytes.map_or((ptr::null(), 0), |bytes| (bytes.as_ptr(), bytes.len()))
}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_topic_new, destroyed once; the producer is still live.
        unsafe { rdsys::rd_kafka_topic_destroy(self.raw.as_ptr()) };
    }
}
