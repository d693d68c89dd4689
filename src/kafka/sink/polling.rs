//! [`PolledProducer`]: librdkafka's producer with a thread that serves its delivery reports,
//! standing aside while a fast-path sender serves them itself.
//!
//! librdkafka frees each message (and its header list) on the thread that serves its
//! delivery report. Served by a background thread, every message's allocations are freed
//! across threads, which glibc's allocator pays for on the sending thread: with a
//! `content-type` header (three more allocations per message) the fast path ran at 34-47% of
//! a plain loop that polls inline (docs/BENCHMARKS.md). So [`KafkaSink::enqueue`] polls after
//! each sampled message (one in `SAMPLE_EVERY` of a thread's, `context.rs`), and the thread
//! polls only while no sender has for `STAND_ASIDE` (10 ms): awaited sends and idle periods
//! are served within that, and a wait for every report (a transaction's flush) tells the
//! thread to serve throughout ([`PolledProducer::serving`]).
//!
//! [`KafkaSink::enqueue`]: super::KafkaSink::enqueue

use super::context::SinkContext;
use super::events::EventQueue;
use super::partition::StrategyPartitioner;
use super::topic_handle::TopicHandle;
use rdkafka::producer::{BaseProducer, Producer};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

type Inner = BaseProducer<SinkContext, StrategyPartitioner>;

/// How long the polling thread waits for events at a time.
const THREAD_POLL: Duration = Duration::from_millis(10);
/// Added to every waiting poll. rust-rdkafka's `BaseProducer::poll(t)` serves events until
/// `t` has passed, handing librdkafka the time left in whole milliseconds, rounded down:
/// asked for 10 ms it waited 9 and then polled with a zero timeout, spinning through the
/// last millisecond (an idle server_kafka burnt 7-9% of a core per sink this way). With a
/// few microseconds over the whole milliseconds, librdkafka's wait ends past the deadline.
const DEADLINE_SLACK: Duration = Duration::from_micros(20);
/// How long the polling thread stands aside after seeing a sender poll (a flush wakes it
/// at once: [`PolledProducer::serving`]). Each look costs a wake-up: at 1 ms the sinks'
/// threads took 4.5-9.8% of both cores under stream_sum --exactly-once (docs/BENCHMARKS.md).
const STAND_ASIDE: Duration = Duration::from_millis(10);

struct Polling {
    stop: AtomicBool,
    /// Bumped by each sender poll; the thread stands aside while it moves.
    sender_polls: AtomicU64,
    /// Waits for every report in progress (a commit's flush): the thread serves them
    /// meanwhile, sender polls or not.
    serving: AtomicUsize,
}

pub(crate) struct PolledProducer {
    /// The sink's default topic, for the fast path, made with the first message that uses
    /// it: made with the sink, its metadata request came before a broker was up, and an
    /// idempotent producer waited 0.5 s more for its id (docs/BENCHMARKS.md). Declared
    /// first: dropped before the producer (fields drop in order, after `drop` joined the
    /// thread).
    default_topic: OnceLock<Option<TopicHandle>>,
    default_topic_name: String,
    /// The producer's events, served in batches (`events.rs`); `None` if librdkafka gave no
    /// handle on its queue: rust-rdkafka's poll serves them then. Released before the
    /// producer, as the topic handle is.
    events: Option<Arc<EventQueue>>,
    producer: Arc<Inner>,
    polling: Arc<Polling>,
    thread: Option<JoinHandle<()>>,
}

impl PolledProducer {
    /// Serves `producer`'s reports; `default_topic` gets a handle for the fast path.
    pub(super) fn new(producer: Inner, default_topic: &str) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        let polling = Arc::new(Polling {
            stop: AtomicBool::new(false),
            sender_polls: AtomicU64::new(0),
            serving: AtomicUsize::new(0),
        });
        let events = EventQueue::main_of(producer.client().native_ptr()).map(Arc::new);
        let thread = {
            let (producer, polling, events) = (producer.clone(), polling.clone(), events.clone());
            std::thread::Builder::new()
                .name("kafka-sink-poll".into())
                .spawn(move || {
                    let mut seen = polling.sender_polls.load(Ordering::Relaxed);
                    while !polling.stop.load(Ordering::Relaxed) {
                        let now = polling.sender_polls.load(Ordering::Relaxed);
                        let moved = now != seen;
                        seen = now;
                        if moved && polling.serving.load(Ordering::Acquire) == 0 {
                            std::thread::park_timeout(STAND_ASIDE);
                        } else {
                            serve(&producer, events.as_deref(), THREAD_POLL);
                        }
                    }
                })?
        };
        Ok(Self {
            default_topic: OnceLock::new(),
            default_topic_name: default_topic.to_owned(),
            producer,
            events,
            polling,
            thread: Some(thread),
        })
    }

    /// Runs `wait` (a wait for every delivery report, such as librdkafka's flush, which only
    /// waits when reports are events) with the polling thread serving the reports meanwhile,
    /// woken at once if it stood aside.
    pub(super) fn serving<R>(&self, wait: impl FnOnce() -> R) -> R {
        struct Served<'a>(&'a AtomicUsize);
        impl Drop for Served<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.polling.serving.fetch_add(1, Ordering::AcqRel);
        let _served = Served(&self.polling.serving);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
        wait()
    }

    /// The handle of the sink's default topic, unless librdkafka refused one.
    pub(super) fn default_topic(&self) -> Option<&TopicHandle> {
        self.default_topic
            .get_or_init(|| TopicHandle::new(&self.producer, &self.default_topic_name))
            .as_ref()
    }

    /// Serves delivery reports from the sender's thread, waiting up to `timeout` for one.
    pub(super) fn sender_poll(&self, timeout: Duration) {
        self.polling.sender_polls.fetch_add(1, Ordering::Relaxed);
        self.serve(timeout);
    }

    /// Serves the events that are ready, waiting up to `timeout` for the first.
    pub(super) fn serve(&self, timeout: Duration) {
        serve(&self.producer, self.events.as_deref(), timeout);
    }
}

/// Serves `producer`'s events through `events`, or through rust-rdkafka's poll without it.
fn serve(producer: &Inner, events: Option<&EventQueue>, timeout: Duration) {
    match events {
        Some(events) => {
            events.serve(producer.context(), timeout);
        }
        None if timeout.is_zero() => producer.poll(Duration::ZERO),
        None => producer.poll(timeout + DEADLINE_SLACK),
    }
}

impl Deref for PolledProducer {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.producer
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        self.polling.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
