//! client_kafka's paying buyers (`--pay-ratio R --pay-delay-ms MIN..MAX`): for each of the
//! run's reservations (a SUCCESS answer with `pay_by`, read from the results topic) it pays a
//! share R, each after a random delay in MIN..MAX (seeded per order, so a run is
//! repeatable), publishing to `seckill.payments_topic` keyed by user id; and it reads the
//! order events topic (from its end, taken before the first request) until every
//! reservation is PAID or EXPIRED and every payment answered, or the time runs out.
//!
//! The payment id is `pay-<order id>`: a payment sent again (a producer retry) is the same
//! payment.

use crate::common::{now_ms, SeckillResult};
use crate::config::KafkaConfig;
use crate::kafka::sink::{KafkaMessage, KafkaSink, SinkConfig};
use crate::redis_state::PaymentAnswer;
use crate::report::Report;
use crate::seckill::client::ClientError;
use crate::seckill::orders::{EventKind, OrderEvent, OrderState, PaymentRequest};
use crate::seckill::results::ResultsReader;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the paying buyers need.
#[derive(Debug, Clone)]
pub struct PaySettings {
    pub kafka: KafkaConfig,
    pub payments_topic: String,
    pub order_events_topic: String,
    /// Share of reservations paid.
    pub ratio: f64,
    /// Delay before paying, ms: (min, max).
    pub delay_ms: (u64, u64),
    /// The run's seed (its request ids start with it in hex).
    pub seed: u64,
    /// How long to wait for the events after the last deadline or payment.
    pub timeout: Duration,
}

/// What became of a run's reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrdersReport {
    pub reserved: u64,
    pub paid: u64,
    pub expired: u64,
    /// Reservations without a PAID or EXPIRED event when the wait ended.
    pub unsettled: u64,
    pub payments_sent: u64,
    pub payments_failed: u64,
    /// Answers to this run's payments, by [`PaymentAnswer::ALL`] order.
    pub answers: [u64; 4],
    pub unanswered: u64,
}

impl fmt::Display for OrdersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client_kafka orders: reserved={} paid={} expired={} unsettled={} payments sent={} failed={}",
            self.reserved, self.paid, self.expired, self.unsettled, self.payments_sent,
            self.payments_failed
        )?;
        for (answer, count) in PaymentAnswer::ALL.iter().zip(self.answers) {
            write!(f, " {answer}={count}")?;
        }
        write!(f, " unanswered={}", self.unanswered)
    }
}

/// The buyers at work: hand them reservations, then [`Buyers::finish`].
pub struct Buyers {
    reservations: mpsc::UnboundedSender<SeckillResult>,
    settle: tokio::task::JoinHandle<Result<OrdersReport, ClientError>>,
}

impl Buyers {
    /// Positions on the order events topic's end and starts the buyers.
    pub async fn start(
        settings: PaySettings,
        stop: CancellationToken,
    ) -> Result<Self, ClientError> {
        let reader = {
            let (kafka, topic) = (settings.kafka.clone(), settings.order_events_topic.clone());
            tokio::task::spawn_blocking(move || ResultsReader::at_end_or_start(&kafka, &topic))
                .await??
        };
        let mut sink_config =
            SinkConfig::new(settings.kafka.clone(), settings.payments_topic.clone());
        sink_config.client_id = "client_kafka-payments".into();
        sink_config.content_type_header = false;
        let sink: Arc<KafkaSink<PaymentRequest>> = Arc::new(KafkaSink::new(sink_config)?);
        let (reservations, received) = mpsc::unbounded_channel();
        let settle = tokio::spawn(settle(settings, reader, sink, received, stop));
        Ok(Self {
            reservations,
            settle,
        })
    }

    /// A sender of reservations, for the results reader's thread.
    pub fn sender(&self) -> mpsc::UnboundedSender<SeckillResult> {
        self.reservations.clone()
    }

    /// Waits until every reservation handed over is settled (or the time runs out).
    pub async fn finish(self) -> Result<OrdersReport, ClientError> {
        drop(self.reservations);
        self.settle.await?
    }
}

/// A payment waiting for its time: (due ms, payment id, order id, user id, activity id).
type DuePayment = (i64, String, String, u64, u64);

/// A number from the order id and the seed, the same in every run of that seed.
fn draw(seed: u64, order_id: &str, salt: u64) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (seed, salt, order_id).hash(&mut hasher);
    hasher.finish()
}

async fn settle(
    settings: PaySettings,
    mut reader: ResultsReader,
    sink: Arc<KafkaSink<PaymentRequest>>,
    mut reservations: mpsc::UnboundedReceiver<SeckillResult>,
    stop: CancellationToken,
) -> Result<OrdersReport, ClientError> {
    let prefix = format!("{:x}-", settings.seed);
    let (events_tx, mut events) = mpsc::unbounded_channel::<OrderEvent>();
    let reading = stop.child_token();
    let reader_thread = {
        let (reading, prefix) = (reading.clone(), prefix.clone());
        tokio::task::spawn_blocking(move || {
            reader.for_each_payload(&reading, |payload| {
                let Some(event) = payload.and_then(|p| OrderEvent::from_json(p).ok()) else {
                    return true;
                };
                let ours = match event.kind {
                    EventKind::Order => event.id.starts_with(&prefix),
                    EventKind::Payment => event
                        .order_id
                        .as_deref()
                        .is_some_and(|o| o.starts_with(&prefix)),
                };
                !ours || events_tx.send(event).is_ok()
            })
        })
    };
    let mut orders: HashMap<String, Option<OrderState>> = HashMap::new();
    let mut payments: HashMap<String, Option<PaymentAnswer>> = HashMap::new();
    // Events that came before their reservation was read.
    let mut early_orders: HashMap<String, OrderState> = HashMap::new();
    let mut early_answers: HashMap<String, PaymentAnswer> = HashMap::new();
    let mut due_payments: BinaryHeap<Reverse<DuePayment>> = BinaryHeap::new();
    let mut failed = 0_u64;
    let mut paying = tokio::time::interval(Duration::from_millis(5));
    let mut last_due = now_ms();
    let mut all_reserved = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let (low, high) = settings.delay_ms;
    loop {
        tokio::select! {
            reservation = reservations.recv(), if !all_reserved => match reservation {
                Some(result) => {
                    let order_id = result.request_id.clone();
                    let state = early_orders.remove(&order_id);
                    orders.insert(order_id.clone(), state);
                    last_due = last_due.max(result.pay_by.unwrap_or(0));
                    let share = (draw(settings.seed, &order_id, 0) % 1_000_000) as f64;
                    let pays = share < settings.ratio * 1_000_000.0;
                    if pays {
                        let delay = low + draw(settings.seed, &order_id, 1) % (high - low + 1);
                        let due = now_ms() + delay as i64;
                        last_due = last_due.max(due);
                        let payment_id = format!("pay-{order_id}");
                        let answer = early_answers.remove(&payment_id);
                        payments.insert(payment_id.clone(), answer);
                        due_payments.push(Reverse((
                            due,
                            payment_id,
                            order_id,
                            result.user_id,
                            result.activity_id,
                        )));
                    }
                }
                None => all_reserved = true,
            },
            event = events.recv() => {
                let Some(event) = event else { break };
                match (event.kind, event.state, event.answer) {
                    (EventKind::Order, Some(state), _) => match orders.get_mut(&event.id) {
                        Some(slot) => { slot.get_or_insert(state); }
                        None => { early_orders.entry(event.id).or_insert(state); }
                    },
                    (EventKind::Payment, _, Some(answer)) => match payments.get_mut(&event.id) {
                        Some(slot) => { slot.get_or_insert(answer); }
                        None => { early_answers.entry(event.id).or_insert(answer); }
                    },
                    _ => {}
                }
            }
            _ = paying.tick() => {
                // Every payment due now, through the producer's fast path (its delivery
                // reports are counted by the sink).
                while due_payments.peek().is_some_and(|Reverse(next)| next.0 <= now_ms()) {
                    let Some(Reverse((_, payment_id, order_id, user_id, activity_id))) =
                        due_payments.pop()
                    else {
                        break;
                    };
                    let message = KafkaMessage::new(PaymentRequest {
                        payment_id,
                        order_id,
                        user_id,
                        activity_id,
                    })
                    .key(user_id.to_string());
                    if let Err(error) = sink.enqueue(&message) {
                        tracing::warn!(error = %Report(&error), "a payment could not be sent");
                        failed += 1;
                    }
                }
            }
            _ = ticker.tick() => {
                let settled = orders.values().all(Option::is_some)
                    && payments.values().all(Option::is_some)
                    && due_payments.is_empty();
                let timeout = i64::try_from(settings.timeout.as_millis()).unwrap_or(i64::MAX);
                if all_reserved && (settled || now_ms() > last_due.saturating_add(timeout)) {
                    break;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    reading.cancel();
    reader_thread.await??;
    let closed = sink.close(Duration::from_secs(10)).await?;
    let sent = closed.metrics.messages_sent;
    failed += closed.metrics.messages_failed + closed.undelivered;
    let count = |state: OrderState| orders.values().filter(|s| **s == Some(state)).count() as u64;
    let mut answers = [0; 4];
    for answer in payments.values().flatten() {
        if let Some(index) = PaymentAnswer::ALL.iter().position(|a| a == answer) {
            answers[index] += 1;
        }
    }
    Ok(OrdersReport {
        reserved: orders.len() as u64,
        paid: count(OrderState::Paid),
        expired: count(OrderState::Expired),
        unsettled: orders.values().filter(|s| s.is_none()).count() as u64,
        payments_sent: sent,
        payments_failed: failed,
        answers,
        unanswered: payments.values().filter(|a| a.is_none()).count() as u64,
    })
}
