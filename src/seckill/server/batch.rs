//! Batches of one consumer: each message goes to the batch of its activity (one script call
//! each, so every call stays in one Redis Cluster slot), malformed and skipped messages to a
//! batch of their own, and [`Intake::next_due`] says which batch to send next.
//!
//! Sending rules (among the batches that qualify, the one whose first message is oldest goes
//! first, so a busy sale never starves a small one):
//! - a full batch (`batch_size` requests: it waits in line, and its activity opens another);
//! - when the consumer holds `max_open` messages in open batches, the oldest batch (this is
//!   what makes batches large when many sales share a burst: with 100 sales and 16,384
//!   messages held, calls carry about 160 requests, not 2.5);
//! - when no more messages are waiting, a batch whose first message is `batch_wait` old
//!   (0: any batch);
//! - a batch whose first message waited [`OVERDUE`], whatever else is waiting.
//!
//! Per message the intake copies the request id into its batch's buffer and nothing else:
//! no allocation, no future, no clock read.

use crate::backoff::Backoff;
use crate::common::{now_ms, Decision, RequestView, SeckillOutcome, SeckillResult};
use crate::kafka::sink::KafkaMessage;
use crate::redis_state::{BatchDecisions, PurchaseBatch, RedisState};
use crate::report::Report;
use rdkafka::message::{BorrowedMessage, Message};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest a batch waits while other batches keep filling up and leaving before it.
pub(super) const OVERDUE: Duration = Duration::from_millis(20);

/// A request waiting in a batch: where its id ends in the batch's id buffer (it starts where
/// the previous one ends), its user and creation time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub id_end: usize,
    pub user_id: u64,
    pub initiated: i64,
}

#[derive(Debug)]
pub(super) struct DeadLetter {
    pub reason: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub source: String,
}

/// One batch: the messages it holds, and once sent, what they came to. Reused.
pub(super) struct Batch {
    pub seq: u64,
    /// The activity of its requests; `None` for the batch of messages that need no script
    /// call (malformed ones, other activities').
    pub activity_id: Option<u64>,
    pub purchase: Option<PurchaseBatch>,
    pub ids: String,
    pub pending: Vec<Pending>,
    /// `cost_ms` of each pending request, taken when the batch was sealed.
    pub costs: Vec<u64>,
    /// Each pending request's answer: TIMEOUT set when sealed, the others from the script.
    pub decisions: Vec<Decision>,
    /// Each pending request's deadline to pay, when its answer is a reservation; else 0.
    pub pay_by: Vec<i64>,
    /// Which pending requests were sent to the script, in the order of its answers.
    pub sent: Vec<usize>,
    /// When the requests were decided (ms since the epoch): Redis's clock for those sent
    /// to the script, ours for the TIMEOUT ones.
    pub decided_at: i64,
    /// Decisions of an earlier attempt whose replicas fell behind: its own, not repeats.
    pub earlier: Option<Vec<Decision>>,
    /// Script calls tried so far, and the wait before the next one.
    pub attempts: u32,
    pub backoff: Backoff,
    pub other_activity: u64,
    pub dead_letters: Vec<DeadLetter>,
    pub first_at: Option<Instant>,
    pub messages: usize,
    /// Reused for every result this batch publishes.
    pub result: KafkaMessage<SeckillResult>,
}

impl Batch {
    fn new() -> Self {
        let mut result = KafkaMessage::new(SeckillResult {
            request_id: String::with_capacity(64),
            user_id: 0,
            activity_id: 0,
            outcome: SeckillOutcome::Success,
            repeat: false,
            request_initiation_time: 0,
            decided_at: 0,
            cost_ms: 0,
            pay_by: None,
        });
        result.key = Some(Vec::with_capacity(24));
        Self {
            seq: 0,
            activity_id: None,
            purchase: None,
            ids: String::new(),
            pending: Vec::new(),
            costs: Vec::new(),
            decisions: Vec::new(),
            pay_by: Vec::new(),
            sent: Vec::new(),
            decided_at: 0,
            earlier: None,
            attempts: 0,
            backoff: Backoff::default(),
            other_activity: 0,
            dead_letters: Vec::new(),
            first_at: None,
            messages: 0,
            result,
        }
    }

    /// Empties the batch for `activity_id` as batch number `seq`.
    fn reset(&mut self, seq: u64, activity_id: Option<u64>, redis: &RedisState) {
        self.seq = seq;
        if self.activity_id != activity_id || (activity_id.is_some() && self.purchase.is_none()) {
            self.purchase = activity_id.map(|id| redis.purchase_batch(id));
        }
        self.activity_id = activity_id;
        self.ids.clear();
        self.pending.clear();
        self.costs.clear();
        self.decisions.clear();
        self.pay_by.clear();
        self.sent.clear();
        self.earlier = None;
        self.attempts = 0;
        self.backoff.reset();
        self.other_activity = 0;
        self.dead_letters.clear();
        self.first_at = None;
        self.messages = 0;
    }

    /// Full at `batch_size` requests; other messages cost next to nothing, but are bounded.
    pub fn is_full(&self, batch_size: usize) -> bool {
        self.pending.len() >= batch_size || self.messages >= batch_size.saturating_mul(4)
    }

    /// Encodes the requests into the script call, processed now: requests older than
    /// `timeout_ms` are answered TIMEOUT instead and never reach Redis.
    pub fn seal(&mut self, timeout_ms: u64) {
        let now = now_ms();
        self.decided_at = now;
        let Some(purchase) = self.purchase.as_mut() else {
            return;
        };
        purchase.start(now);
        let mut id_start = 0;
        for (index, request) in self.pending.iter().enumerate() {
            let request_id = &self.ids[id_start..request.id_end];
            id_start = request.id_end;
            let cost_ms = u64::try_from(now.saturating_sub(request.initiated)).unwrap_or(0);
            self.costs.push(cost_ms);
            // TIMEOUT, or replaced by the script's answer.
            self.decisions
                .push(Decision::first(SeckillOutcome::Timeout));
            self.pay_by.push(0);
            if timeout_ms == 0 || cost_ms <= timeout_ms {
                purchase.push(request_id, request.user_id, request.initiated, cost_ms);
                self.sent.push(index);
            }
        }
    }

    /// Takes the script's decisions for the requests sent. A request this batch decided in
    /// an earlier attempt (whose replicas fell behind) comes back as a repeat of its own
    /// decision: it is answered as the first decision it is.
    pub fn decided(&mut self, decided: BatchDecisions) {
        self.decided_at = decided.decided_at_ms;
        let earlier = self.earlier.take();
        for (position, (decision, &index)) in decided
            .decisions
            .iter()
            .copied()
            .zip(&self.sent)
            .enumerate()
        {
            self.pay_by[index] = decided.pay_by(position).unwrap_or(0);
            let own = earlier
                .as_ref()
                .and_then(|earlier| earlier.get(position))
                .is_some_and(|first| decision.repeat && first.outcome == decision.outcome);
            self.decisions[index] = if own {
                Decision::first(decision.outcome)
            } else {
                decision
            };
        }
    }

    /// Answers every request sent to the script with `outcome`, a first answer that is not
    /// remembered (UNKNOWN_ACTIVITY).
    pub fn answer_all(&mut self, outcome: SeckillOutcome) {
        for &index in &self.sent {
            self.decisions[index] = Decision::first(outcome);
        }
    }
}

/// Which batch to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// The oldest full batch.
    Full,
    /// The open batch of this activity (`None`: the one of messages needing no call).
    Open(Option<u64>),
}

/// The batches of one consumer: one open batch per activity, the full ones waiting for a
/// call slot, and the numbering of batches.
pub(super) struct Intake {
    open: HashMap<Option<u64>, Batch>,
    /// Full batches, oldest first.
    full: std::collections::VecDeque<Batch>,
    /// Messages in open and full batches.
    held: usize,
    next_seq: u64,
    spare: Vec<Batch>,
    redis: RedisState,
    /// Serve only this activity (others are skipped).
    only: Option<u64>,
    batch_size: usize,
    batch_wait: Duration,
    max_open: usize,
}

impl Intake {
    pub fn new(
        redis: RedisState,
        only: Option<u64>,
        batch_size: usize,
        batch_wait: Duration,
        max_open: usize,
    ) -> Self {
        Self {
            open: HashMap::new(),
            full: std::collections::VecDeque::new(),
            held: 0,
            next_seq: 0,
            spare: Vec::new(),
            redis,
            only,
            batch_size,
            batch_wait,
            max_open,
        }
    }

    /// Whether the batches hold as many messages as allowed (reading waits).
    pub fn is_full(&self) -> bool {
        self.held >= self.max_open
    }

    /// Adds a message to its batch; returns that batch's number (for its offset).
    pub fn add(&mut self, message: &BorrowedMessage<'_>) -> u64 {
        let decoded = match message.payload() {
            Some(payload) => RequestView::from_json(payload).map_err(|e| Report(&e).to_string()),
            None => Err("empty message (no payload)".to_string()),
        };
        let activity = match &decoded {
            Ok(request) if self.only.is_none_or(|only| only == request.activity_id) => {
                Some(request.activity_id)
            }
            _ => None,
        };
        let batch_size = self.batch_size;
        let batch = self.batch_for(activity);
        if batch.first_at.is_none() {
            batch.first_at = Some(Instant::now());
        }
        batch.messages += 1;
        match decoded {
            Ok(request) if activity.is_some() => {
                batch.ids.push_str(&request.request_id);
                batch.pending.push(Pending {
                    id_end: batch.ids.len(),
                    user_id: request.user_id,
                    initiated: request.request_initiation_time,
                });
            }
            Ok(_) => batch.other_activity += 1,
            Err(reason) => batch.dead_letters.push(DeadLetter {
                reason,
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                source: format!(
                    "{}/{}/{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                ),
            }),
        }
        let (seq, full) = (batch.seq, batch.is_full(batch_size));
        if full {
            if let Some(full) = self.open.remove(&activity) {
                self.full.push_back(full);
            }
        }
        self.held += 1;
        seq
    }

    fn batch_for(&mut self, activity: Option<u64>) -> &mut Batch {
        let (spare, next_seq, redis) = (&mut self.spare, &mut self.next_seq, &self.redis);
        self.open.entry(activity).or_insert_with(|| {
            let mut batch = spare.pop().unwrap_or_else(Batch::new);
            batch.reset(*next_seq, activity, redis);
            *next_seq += 1;
            batch
        })
    }

    /// The batch to send next, if any (see the module doc). `idle`: no more messages are
    /// waiting now.
    pub fn next_due(&self, idle: bool, now: Instant) -> Option<Due> {
        let at_bound = self.is_full();
        let open = self
            .open
            .iter()
            .filter(|(_, batch)| {
                let age = batch
                    .first_at
                    .map_or(Duration::ZERO, |first| now.saturating_duration_since(first));
                at_bound || (idle && age >= self.batch_wait) || age >= OVERDUE.max(self.batch_wait)
            })
            .min_by_key(|(_, batch)| batch.first_at)
            .map(|(activity, batch)| (Due::Open(*activity), batch.first_at));
        let full = self.full.front().map(|batch| (Due::Full, batch.first_at));
        match (full, open) {
            (Some(full), Some(open)) if open.1 < full.1 => Some(open.0),
            (Some(full), _) => Some(full.0),
            (None, open) => open.map(|(due, _)| due),
        }
    }

    /// When the oldest open batch becomes due by age alone (to wake up for it).
    pub fn next_deadline(&self, idle: bool) -> Option<Instant> {
        let wait = if idle {
            self.batch_wait
        } else {
            OVERDUE.max(self.batch_wait)
        };
        self.open
            .values()
            .filter_map(|batch| batch.first_at)
            .min()
            .map(|first| first + wait)
    }

    /// Takes a batch out to be sent.
    pub fn take(&mut self, due: Due) -> Option<Batch> {
        let batch = match due {
            Due::Full => self.full.pop_front()?,
            Due::Open(activity) => self.open.remove(&activity)?,
        };
        self.held -= batch.messages;
        Some(batch)
    }

    /// Every batch, oldest first (for the drain at shutdown).
    pub fn take_all(&mut self) -> Vec<Batch> {
        let mut batches: Vec<Batch> = self.full.drain(..).collect();
        batches.extend(self.open.drain().map(|(_, batch)| batch));
        batches.sort_by_key(|batch| batch.first_at);
        self.held = 0;
        batches
    }

    /// A batch back for reuse.
    pub fn recycle(&mut self, batch: Batch) {
        if self.spare.len() < 64 {
            self.spare.push(batch);
        }
    }
}
