//! [`KafkaSink::connect`]: waiting until the producer can send, before the first message
//! (the topic's metadata, and an idempotent producer's id, without which librdkafka holds
//! every message back).

use super::context::Shared;
use super::polling::PolledProducer;
use super::serializer::MessageSerializer;
use super::sink::{KafkaSink, SinkError};
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long [`await_ready`] waits for the producer id before asking for metadata again.
const PRODUCER_ID_RETRIGGER: Duration = Duration::from_millis(20);
/// How long [`await_ready`] keeps asking: past librdkafka's own retry (every 0.5 s) more
/// requests gain nothing.
const PRODUCER_ID_NUDGES: Duration = Duration::from_millis(600);
/// A deadline far enough to mean "none", for a timeout too large to add to now.
const ONE_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// [`KafkaSink::connect`]'s wait: the topic's metadata (an error if it does not come within
/// `timeout`), then (`wait_for_id`) the producer id until `timeout` (then it returns anyway:
/// the messages wait in librdkafka's queue).
fn await_ready(
    producer: &PolledProducer,
    topic: &str,
    shared: &Shared,
    wait_for_id: bool,
    timeout: Duration,
) -> Result<(), SinkError> {
    let started = Instant::now();
    let deadline = started.checked_add(timeout).unwrap_or(started + ONE_YEAR);
    let metadata = |timeout: Duration| {
        producer
            .client()
            .fetch_metadata(Some(topic), Timeout::After(timeout))
            .map(drop)
    };
    metadata(timeout).map_err(|error| SinkError::Kafka(error.into()))?;
    loop {
        let asked = Instant::now();
        while asked.elapsed() < PRODUCER_ID_RETRIGGER {
            let assigned = shared
                .statistics
                .producer_id_assigned
                .load(Ordering::Acquire);
            if !wait_for_id || assigned || Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // librdkafka asks for a producer id after a metadata response when a broker is up,
        // otherwise only every 0.5 s: another request gets it sooner. Only a nudge: its
        // failure is the id's wait's, up to the deadline.
        if started.elapsed() < PRODUCER_ID_NUDGES {
            let _ = metadata(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

impl<T, S: MessageSerializer<T>> KafkaSink<T, S> {
    /// Waits until the producer can send: it has the topic's metadata, and, when it is
    /// idempotent (not transactional) and statistics are on, its producer id (librdkafka
    /// holds every message back until then, and asks for one after a metadata response
    /// while a broker is up, else every 0.5 s: this asks for metadata again every 20 ms
    /// until the id comes). Use it when the first messages' latency matters. Without
    /// statistics only the metadata is awaited. Past `timeout` it returns anyway.
    pub async fn connect(&self, timeout: Duration) -> Result<(), SinkError> {
        let (producer, shared) = (self.producer.clone(), self.shared.clone());
        let (topic, wait_for_id) = (self.config.topic.clone(), self.waits_for_id());
        tokio::task::spawn_blocking(move || {
            await_ready(&producer, &topic, &shared, wait_for_id, timeout)
        })
        .await?
    }

    /// [`connect`](Self::connect), blocking the calling thread.
    pub fn connect_blocking(&self, timeout: Duration) -> Result<(), SinkError> {
        let wait_for_id = self.waits_for_id();
        await_ready(
            &self.producer,
            &self.config.topic,
            &self.shared,
            wait_for_id,
            timeout,
        )
    }

    /// Whether [`connect`](Self::connect) waits for the producer id: idempotent with
    /// statistics on (they tell), and not transactional (that id comes with
    /// [`init_transactions`](Self::init_transactions)).
    fn waits_for_id(&self) -> bool {
        self.config.idempotence
            && self.config.statistics_interval.is_some()
            && self.config.transactional_id.is_none()
    }
}
