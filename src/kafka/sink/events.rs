//! The producer's event queue served by the sink itself: the delivery reports of one
//! librdkafka event (one produce response's messages of a partition, often a thousand or
//! more) are accounted together ([`Tally`]), not one callback at a time.
//!
//! rust-rdkafka's `BaseProducer::poll` copies the event's messages into a new vector, wraps
//! each in a message holding a reference count on the event, and calls the context once per
//! message; with the sink's accounting per message (a group lookup under a lock, a dozen
//! atomic operations) that was the largest part of stream_sum's own CPU time
//! (docs/BENCHMARKS.md). Statistics, errors and logs are handed to the context as
//! rust-rdkafka hands them. rust-rdkafka's own poll (its flush calls it) still works on the
//! same queue: whichever takes an event serves it.

use super::context::{DeliveryRecord, SinkContext, Tally};
use rdkafka::bindings as rdsys;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::borrow::Cow;
use std::ffi::{c_char, CStr};
use std::ptr::{self, NonNull};
use std::time::Duration;

/// Events served in one call at most, so a sender serving reports returns to its messages.
const MAX_EVENTS_PER_CALL: usize = 64;
/// Reports taken out of an event at a time.
const REPORTS_PER_CHUNK: usize = 256;

/// A reference to one client's main queue (where rust-rdkafka routes the producer's events).
pub(super) struct EventQueue {
    raw: NonNull<rdsys::rd_kafka_queue_t>,
}

// librdkafka's queues are thread safe; the handle is a reference count on the queue.
unsafe impl Send for EventQueue {}
unsafe impl Sync for EventQueue {}

impl EventQueue {
    /// The main queue of the client behind `client`, or `None` if librdkafka has none.
    pub(super) fn main_of(client: *mut rdsys::rd_kafka_t) -> Option<Self> {
        // SAFETY: `client` is a live client handle, borrowed for the call.
        NonNull::new(unsafe { rdsys::rd_kafka_queue_get_main(client) }).map(|raw| Self { raw })
    }

    /// Waits up to `timeout` for an event, then serves it and those ready after it (at most
    /// [`MAX_EVENTS_PER_CALL`]). Returns how many were served.
    pub(super) fn serve(&self, context: &SinkContext, timeout: Duration) -> usize {
        // Rounded up: a wait under a millisecond still waits, not spins.
        let mut wait_ms = i32::try_from(timeout.as_micros().div_ceil(1_000)).unwrap_or(i32::MAX);
        let mut served = 0;
        while served < MAX_EVENTS_PER_CALL {
            // SAFETY: a live queue; the event returned is ours until destroyed below.
            let event = unsafe { rdsys::rd_kafka_queue_poll(self.raw.as_ptr(), wait_ms) };
            let Some(event) = NonNull::new(event) else {
                break;
            };
            serve_event(context, event);
            // SAFETY: served, destroyed once (this frees the reported messages).
            unsafe { rdsys::rd_kafka_event_destroy(event.as_ptr()) };
            served += 1;
            wait_ms = 0;
        }
        served
    }
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `main_of`, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.raw.as_ptr()) };
    }
}

fn serve_event(context: &SinkContext, event: NonNull<rdsys::rd_kafka_event_t>) {
    let event = event.as_ptr();
    // SAFETY (all calls below): `event` is live until the caller destroys it; the strings
    // and messages librdkafka returns live as long as the event.
    match unsafe { rdsys::rd_kafka_event_type(event) } {
        rdsys::RD_KAFKA_EVENT_DR => serve_reports(context, event),
        rdsys::RD_KAFKA_EVENT_STATS => {
            let json = unsafe { rdsys::rd_kafka_event_stats(event) };
            if !json.is_null() {
                context.stats_raw(unsafe { CStr::from_ptr(json) }.to_bytes());
            }
        }
        rdsys::RD_KAFKA_EVENT_ERROR => {
            let code = unsafe { rdsys::rd_kafka_event_error(event) };
            let reason = text(unsafe { rdsys::rd_kafka_event_error_string(event) });
            context.error(
                KafkaError::Global(RDKafkaErrorCode::from(code)),
                reason.trim(),
            );
        }
        rdsys::RD_KAFKA_EVENT_LOG => {
            let (mut facility, mut message, mut level) = (ptr::null(), ptr::null(), 0);
            let found = unsafe {
                rdsys::rd_kafka_event_log(event, &mut facility, &mut message, &mut level)
            };
            if found == 0 {
                context.log(
                    log_level(level),
                    text(facility).trim(),
                    text(message).trim(),
                );
            }
        }
        // An OAuth token refresh: this context does not generate tokens (rust-rdkafka
        // drops the event too). Nothing else comes to a producer's main queue.
        _ => {}
    }
}

/// Accounts every delivery report of a DR event together.
fn serve_reports(context: &SinkContext, event: *mut rdsys::rd_kafka_event_t) {
    let mut tally = Tally::default();
    let mut chunk = [ptr::null::<rdsys::rd_kafka_message_t>(); REPORTS_PER_CHUNK];
    loop {
        // SAFETY: a live DR event; each call continues where the last one stopped.
        let taken = unsafe {
            rdsys::rd_kafka_event_message_array(event, chunk.as_mut_ptr(), REPORTS_PER_CHUNK)
        };
        if taken == 0 {
            break;
        }
        for &message in &chunk[..taken.min(REPORTS_PER_CHUNK)] {
            // SAFETY: a message of the event, live until the event is destroyed.
            let Some(message) = (unsafe { message.as_ref() }) else {
                continue;
            };
            let error = (message.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
                .then(|| KafkaError::MessageProduction(RDKafkaErrorCode::from(message.err)));
            context.shared.note(
                &mut tally,
                DeliveryRecord {
                    // The delivery opaque as rust-rdkafka gives it back: the pointer's value.
                    opaque: message._private as usize,
                    error,
                    bytes: message.len + message.key_len,
                    partition: message.partition,
                    offset: message.offset,
                },
            );
        }
    }
    context.shared.settle(&mut tally);
}

/// A C string of an event as text (lossy), empty for none.
fn text<'a>(raw: *const c_char) -> Cow<'a, str> {
    if raw.is_null() {
        return Cow::Borrowed("");
    }
    // SAFETY: a NUL-terminated string of an event that outlives this use.
    unsafe { CStr::from_ptr(raw) }.to_string_lossy()
}

/// librdkafka's syslog levels, as rust-rdkafka maps them.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}
