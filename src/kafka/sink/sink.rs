//! [`KafkaSink`]: the generic producer.
//!
//! One librdkafka producer (`PolledProducer`, in `polling.rs`: delivery reports served by a
//! thread, or by the fast-path sender while it sends) serves these send paths:
//! - `send` / `send_batch` await each message's delivery report, retry retriable failures
//!   with backoff, and feed the circuit breaker;
//! - `enqueue` (the fast path) hands the message to librdkafka and returns; delivery reports
//!   are counted in the metrics (served by the sending thread every `SAMPLE_EVERY`
//!   messages), and
//!   `flush` / `close` wait for them. It allocates nothing per message beyond what
//!   librdkafka itself copies;
//! - `try_enqueue_in` is the fast path for a delivery group: messages whose delivery is
//!   awaited together, once, with `wait_group` (the results of one batch; in
//!   `delivery_group.rs`);
//! - `enqueue_batch` / `enqueue_batch_in` hand many fast-path messages over in few
//!   librdkafka calls (`batch.rs`).
//!
//! `connect` (`connect.rs`) waits, before the first message, until the producer can send.
//!
//! On every path, a message to the sink's own topic without headers or a timestamp of its
//! own goes to librdkafka through a topic handle made once (`topic_handle.rs`: no topic
//! lookup per message); the others name their topic.
//!
//! The delivery opaque tells the paths apart without an allocation: odd values carry the
//! enqueue time of a fast-path message; otherwise the second bit says whether the rest is
//! the id of a delivery group (set) or of one awaited message (clear).

use super::circuit_breaker::{BreakerState, CircuitBreaker};
use super::config::{DeliveryGuarantee, InvalidSinkConfig, SinkConfig};
use super::context::{DeliveryReport, Shared, SinkContext, SinkStatistics, StatisticsTotals};
use super::message::KafkaMessage;
use super::metrics::{MetricsSnapshot, SinkMetrics};
use super::partition::{PartitionStrategy, StrategyPartitioner};
use super::polling::PolledProducer;
use super::serializer::{JsonSerializer, MessageSerializer, SerializeError, CONTENT_TYPE_HEADER};
use super::topic_handle::TopicHandle;
use super::transaction::TransactionState;
use crate::backoff::Backoff;
use crate::kafka::KafkaError;
use crate::report::Report;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long dropping a sink that was not closed waits for outstanding deliveries.
const DROP_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error(transparent)]
    InvalidConfig(#[from] InvalidSinkConfig),
    #[error(transparent)]
    Serialize(#[from] SerializeError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the sink is closed")]
    Closed,
    #[error("circuit breaker open after repeated failures; sends fail fast until it recovers")]
    CircuitOpen,
    #[error("the producer queue stayed full for {0:?}")]
    QueueFullTimeout(Duration),
    #[error("transaction state: {0}")]
    TransactionState(&'static str),
    #[error("the delivery report was lost (producer shut down)")]
    DeliveryLost,
    #[error("cannot create the latency histogram")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("a blocking producer call failed")]
    Blocking(#[from] tokio::task::JoinError),
    #[error("cannot start the delivery-report thread")]
    PollThread(#[source] std::io::Error),
}

impl SinkError {
    /// Whether the error comes from a condition that may clear (broker down, queue full,
    /// breaker open).
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Kafka(error) => error.is_retriable(),
            Self::CircuitOpen | Self::QueueFullTimeout(_) => true,
            _ => false,
        }
    }
}

impl From<RdKafkaError> for SinkError {
    fn from(error: RdKafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

/// What `close` found.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseReport {
    /// Messages still undelivered when the flush timeout ran out. Never dropped silently:
    /// they are reported here and in the log.
    pub undelivered: u64,
    pub aborted_transaction: bool,
    pub metrics: MetricsSnapshot,
}

thread_local! {
    /// The serialization buffer of the calling thread, reused for every message
    /// (librdkafka copies the payload when enqueueing).
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

/// A generic Kafka producer for values of type `T`, serialized by `S`.
pub struct KafkaSink<T, S = JsonSerializer> {
    pub(super) producer: Arc<PolledProducer>,
    pub(super) serializer: S,
    pub(super) config: SinkConfig,
    pub(super) shared: Arc<Shared>,
    closed: AtomicBool,
    pub(super) transaction: Arc<tokio::sync::Mutex<TransactionState>>,
    _values: PhantomData<fn(&T)>,
}

impl<T: serde::Serialize> KafkaSink<T, JsonSerializer> {
    /// A sink that writes JSON.
    pub fn new(config: SinkConfig) -> Result<Self, SinkError> {
        Self::with_serializer(config, JsonSerializer)
    }
}

impl<T, S: MessageSerializer<T>> KafkaSink<T, S> {
    pub fn with_serializer(config: SinkConfig, serializer: S) -> Result<Self, SinkError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            metrics: SinkMetrics::new(&config.client_id)?,
            breaker: CircuitBreaker::new(config.breaker_threshold, config.breaker_timeout),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(1),
            groups: Mutex::new(HashMap::new()),
            next_group: AtomicU64::new(1),
            epoch: Instant::now(),
            outstanding: AtomicU64::new(0),
            statistics: StatisticsTotals::default(),
        });
        let context = SinkContext {
            shared: shared.clone(),
            partitioner: match config.partition_strategy {
                PartitionStrategy::KeyHash => None,
                ref strategy => Some(StrategyPartitioner::new(strategy.clone())),
            },
        };
        let producer = PolledProducer::new(
            config.client_config()?.create_with_context(context)?,
            &config.topic,
        )
        .map_err(SinkError::PollThread)?;
        let transaction = if config.guarantee == DeliveryGuarantee::ExactlyOnce {
            TransactionState::Uninitialised
        } else {
            TransactionState::Idle
        };
        Ok(Self {
            producer: Arc::new(producer),
            serializer,
            config,
            shared,
            closed: AtomicBool::new(false),
            transaction: Arc::new(tokio::sync::Mutex::new(transaction)),
            _values: PhantomData,
        })
    }

    pub fn config(&self) -> &SinkConfig {
        &self.config
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }

    /// librdkafka's statistics so far (all zero unless `statistics_interval` is set).
    pub fn statistics(&self) -> SinkStatistics {
        let totals = &self.shared.statistics;
        SinkStatistics {
            reports: totals.reports.load(Ordering::Acquire),
            message_bytes: totals.message_bytes.load(Ordering::Relaxed),
            batch_bytes: totals.batch_bytes.load(Ordering::Relaxed),
            batch_messages: totals.batch_messages.load(Ordering::Relaxed),
            queued_messages: totals.queued_messages.load(Ordering::Relaxed),
            producer_id_assigned: totals.producer_id_assigned.load(Ordering::Acquire),
        }
    }

    /// Messages handed to librdkafka whose delivery report has not arrived yet.
    pub fn in_flight(&self) -> u64 {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    pub(super) fn check_open(&self) -> Result<(), SinkError> {
        if self.closed.load(Ordering::Acquire) {
            Err(SinkError::Closed)
        } else {
            Ok(())
        }
    }

    /// Serializes `message` into the thread's buffer and hands it to librdkafka with
    /// `opaque`. A full queue is reported as `Ok(false)`, to wait and try again.
    pub(super) fn try_produce(
        &self,
        message: &KafkaMessage<T>,
        opaque: usize,
    ) -> Result<bool, SinkError> {
        BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            self.serializer.serialize(&message.value, &mut buffer)?;
            let payload = (!self.serializer.is_null(&message.value)).then_some(buffer.as_slice());
            self.shared.metrics.attempt();
            // Counted before the send: the delivery report may arrive before it returns.
            self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
            let refused = match self.handle_for(message) {
                Some(handle) => handle
                    .produce(message.partition, payload, message.key.as_deref(), opaque)
                    .err()
                    .map(RdKafkaError::MessageProduction),
                None => self.send_record(message, payload, opaque).err(),
            };
            let Some(error) = refused else {
                return Ok(true);
            };
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            match error {
                RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => Ok(false),
                error => Err(SinkError::from(error)),
            }
        })
    }

    /// The default topic's handle, when `message` needs nothing `rd_kafka_produce` cannot
    /// carry: no other topic, no headers, no timestamp of its own.
    fn handle_for(&self, message: &KafkaMessage<T>) -> Option<&TopicHandle> {
        self.is_plain(message)
            .then(|| self.producer.default_topic())
            .flatten()
    }

    /// Whether `message` can go through the default topic's handle: no other topic, no
    /// headers, no timestamp of its own.
    pub(super) fn is_plain(&self, message: &KafkaMessage<T>) -> bool {
        message
            .topic
            .as_ref()
            .is_none_or(|t| *t == self.config.topic)
            && !self.config.content_type_header
            && message.headers.is_empty()
            && message.timestamp.is_none()
    }

    /// Hands `message` to rust-rdkafka's `send`, headers and all.
    fn send_record(
        &self,
        message: &KafkaMessage<T>,
        payload: Option<&[u8]>,
        opaque: usize,
    ) -> Result<(), RdKafkaError> {
        let topic = message.topic.as_deref().unwrap_or(&self.config.topic);
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, opaque);
        // Only messages that carry headers pay for building them.
        if self.config.content_type_header || !message.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(1 + message.headers.len());
            if self.config.content_type_header {
                headers = headers.insert(Header {
                    key: CONTENT_TYPE_HEADER,
                    value: Some(self.serializer.content_type()),
                });
            }
            for (name, value) in &message.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            record = record.headers(headers);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        if let Some(partition) = message.partition {
            record = record.partition(partition);
        }
        if let Some(timestamp) = message.timestamp {
            record = record.timestamp(timestamp);
        }
        self.producer.send(record).map_err(|(error, _)| error)
    }

    /// The fast path: hands the message to librdkafka and returns without waiting for its
    /// delivery report, which is counted in [`metrics`](Self::metrics). When the queue is
    /// full it blocks the calling thread (back-pressure) up to `send_timeout`; call it from a
    /// dedicated thread or `spawn_blocking`, and [`flush`](Self::flush) at the end.
    pub fn enqueue(&self, message: &KafkaMessage<T>) -> Result<(), SinkError> {
        self.check_open()?;
        if !self.shared.breaker.allow() {
            return Err(self.refuse(SinkError::CircuitOpen));
        }
        let ticket = self.shared.fast_path_ticket();
        // Set on the first full queue: the common case reads no clock here.
        let mut deadline = None;
        loop {
            match self.try_produce(message, ticket.opaque) {
                Ok(true) => {
                    if ticket.sampled {
                        // This thread frees what it allocated (see `polling.rs`).
                        self.producer.sender_poll(Duration::ZERO);
                    }
                    return Ok(());
                }
                Ok(false)
                    if Instant::now()
                        < *deadline
                            .get_or_insert_with(|| Instant::now() + self.config.send_timeout) =>
                {
                    // Room comes with delivery reports: serve them here meanwhile.
                    self.producer.sender_poll(Duration::from_millis(1))
                }
                Ok(false) => {
                    return Err(self.fail(SinkError::QueueFullTimeout(self.config.send_timeout)))
                }
                Err(error) => return Err(self.fail(error)),
            }
        }
    }

    /// Accounts a message that failed for good.
    pub(super) fn fail(&self, error: SinkError) -> SinkError {
        self.shared.metrics.failed(&Report(&error));
        if self.shared.breaker.record_failure() {
            self.shared.metrics.breaker_trip();
        }
        error
    }

    /// Accounts a message refused without an attempt (breaker open).
    pub(super) fn refuse(&self, error: SinkError) -> SinkError {
        self.shared.metrics.failed(&Report(&error));
        error
    }

    /// Sends one message and waits for the broker's acknowledgement. Retriable failures
    /// are retried `retries` times with exponential backoff; a full queue is waited out (up
    /// to `send_timeout`); permanent and fatal errors return at once.
    pub async fn send(&self, message: KafkaMessage<T>) -> Result<DeliveryReport, SinkError> {
        self.check_open()?;
        if !self.shared.breaker.allow() {
            return Err(self.refuse(SinkError::CircuitOpen));
        }
        let mut backoff = Backoff::new(self.config.retry_backoff, self.config.retry_backoff * 64);
        let mut retries_left = self.config.retries;
        loop {
            let outcome = self.send_once(&message).await;
            match outcome {
                Ok(report) => {
                    self.shared.breaker.record_success();
                    return Ok(report);
                }
                Err(error)
                    if error.is_retriable()
                        && retries_left > 0
                        && !matches!(error, SinkError::CircuitOpen) =>
                {
                    retries_left -= 1;
                    self.shared.metrics.retry();
                    self.shared.metrics.set_last_error(&Report(&error));
                    let delay = backoff.next_delay();
                    tracing::debug!(event = "retry", error = %Report(&error), retry_in_ms = delay.as_millis() as u64, "retrying a send");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(self.fail(error)),
            }
        }
    }

    /// One enqueue (waiting out a full queue) and its delivery report.
    async fn send_once(&self, message: &KafkaMessage<T>) -> Result<DeliveryReport, SinkError> {
        let id = self.shared.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut waiters) = self.shared.waiters.lock() {
            waiters.insert(id, sender);
        }
        let opaque = (id as usize) << 2;
        let deadline = Instant::now() + self.config.send_timeout;
        let enqueued = loop {
            match self.try_produce(message, opaque) {
                Ok(true) => break Ok(()),
                Ok(false) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Ok(false) => break Err(SinkError::QueueFullTimeout(self.config.send_timeout)),
                Err(error) => break Err(error),
            }
        };
        if let Err(error) = enqueued {
            if let Ok(mut waiters) = self.shared.waiters.lock() {
                waiters.remove(&id);
            }
            return Err(error);
        }
        match receiver.await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(SinkError::DeliveryLost),
        }
    }

    /// Sends every message concurrently (all are enqueued before any report is awaited) and
    /// returns one result per message, in order.
    pub async fn send_batch(
        &self,
        messages: Vec<KafkaMessage<T>>,
    ) -> Vec<Result<DeliveryReport, SinkError>> {
        futures::future::join_all(messages.into_iter().map(|message| self.send(message))).await
    }

    /// Waits until every message handed to librdkafka has its delivery report, or `timeout`.
    /// Returns how many are still undelivered.
    pub async fn flush(&self, timeout: Duration) -> Result<u64, SinkError> {
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await?;
        self.flushed(flushed)
    }

    /// [`flush`](Self::flush) for a thread that may block (the fast path's own thread).
    pub fn flush_blocking(&self, timeout: Duration) -> Result<u64, SinkError> {
        self.flushed(self.producer.flush(Timeout::After(timeout)))
    }

    fn flushed(&self, flushed: Result<(), RdKafkaError>) -> Result<u64, SinkError> {
        match flushed {
            Ok(()) => Ok(0),
            Err(RdKafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => Ok(self.in_flight()),
            Err(error) => Err(error.into()),
        }
    }

    /// Closes the sink: new sends fail with [`SinkError::Closed`], an open transaction is
    /// aborted, queued messages are flushed for up to `timeout`, and whatever is still
    /// undelivered is reported (never dropped silently). Logs the final metrics.
    pub async fn close(&self, timeout: Duration) -> Result<CloseReport, SinkError> {
        self.closed.store(true, Ordering::Release);
        let aborted_transaction = self.transaction_open().await;
        if aborted_transaction {
            self.abort_transaction().await?;
        }
        let undelivered = self.flush(timeout).await?;
        Ok(self.closed_report(undelivered, aborted_transaction))
    }

    /// [`close`](Self::close) for a plain thread (not a tokio worker).
    pub fn close_blocking(&self, timeout: Duration) -> Result<CloseReport, SinkError> {
        self.closed.store(true, Ordering::Release);
        let aborted_transaction = self.transaction_open_blocking();
        if aborted_transaction {
            self.abort_transaction_blocking()?;
        }
        let undelivered = self.flush_blocking(timeout)?;
        Ok(self.closed_report(undelivered, aborted_transaction))
    }

    /// Logs the final metrics of a closed sink.
    fn closed_report(&self, undelivered: u64, aborted_transaction: bool) -> CloseReport {
        let metrics = self.metrics();
        let sink = self.config.client_id.as_str();
        if undelivered > 0 {
            tracing::error!(sink, undelivered, "sink closed with undelivered messages");
        }
        tracing::info!(
            sink,
            sent = metrics.messages_sent,
            failed = metrics.messages_failed,
            bytes = metrics.bytes_sent,
            retries = metrics.retries,
            breaker_trips = metrics.breaker_trips,
            latency_p99_ms = metrics.latency_p99.as_secs_f64() * 1e3,
            "sink closed"
        );
        CloseReport {
            undelivered,
            aborted_transaction,
            metrics,
        }
    }
}

impl<T, S> Drop for KafkaSink<T, S> {
    /// A sink dropped without `close` still flushes (bounded wait) and says what it left.
    fn drop(&mut self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = self.producer.flush(Timeout::After(DROP_FLUSH_TIMEOUT));
        let left = self.shared.outstanding.load(Ordering::Acquire);
        if left > 0 {
            tracing::error!(
                undelivered = left,
                "sink dropped without close(); messages left undelivered"
            );
        } else {
            tracing::debug!("sink dropped without close(); everything was delivered");
        }
    }
}
