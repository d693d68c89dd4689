//! What the gateway knows of a sale: its live state read from Redis and cached for
//! `gateway.activity_cache_ms`, for `GET /activities/{id}` and for the door answers (a sale
//! not open yet, sold out or ended may be answered without Kafka; such an answer is marked
//! `door`, is not a decision and is not remembered: the server stays the only authority).

use crate::redis_state::{ActivitySnapshot, RedisState, RedisStateError, SaleState};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sale as `GET /activities/{id}` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SaleView {
    pub activity_id: u64,
    pub state: &'static str,
    pub remaining: Option<i64>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub per_user_limit: u32,
    pub payment_window_ms: u64,
}

impl SaleView {
    fn of(activity_id: u64, snapshot: &ActivitySnapshot) -> Self {
        Self {
            activity_id,
            state: snapshot.state().as_str(),
            remaining: snapshot.stock,
            starts_at_ms: snapshot.starts_at_ms,
            ends_at_ms: snapshot.ends_at_ms,
            per_user_limit: snapshot.per_user_limit,
            payment_window_ms: snapshot.payment_window_ms,
        }
    }

    /// The answer the door may give without Kafka, if any.
    pub fn door_answer(&self) -> Option<&'static str> {
        match self.state {
            s if s == SaleState::NotStarted.as_str() => Some("NOT_STARTED"),
            s if s == SaleState::SoldOut.as_str() => Some("SOLD_OUT"),
            s if s == SaleState::Ended.as_str() => Some("ENDED"),
            _ => None,
        }
    }
}

pub struct Sales {
    redis: RedisState,
    ttl: Duration,
    cache: Mutex<HashMap<u64, (Instant, Option<SaleView>)>>,
}

impl Sales {
    pub fn new(redis: RedisState, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Every sale with live state written (the Redis registry).
    pub async fn registered(&self) -> Result<Vec<u64>, RedisStateError> {
        self.redis.registered_activities().await
    }

    /// The sale, or `None` when it was never created (or its state is gone).
    pub async fn view(&self, activity_id: u64) -> Result<Option<SaleView>, RedisStateError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, view)) = cache.get(&activity_id) {
                if at.elapsed() < self.ttl {
                    return Ok(view.clone());
                }
            }
        }
        let snapshot = self.redis.snapshot(activity_id).await?;
        let view = snapshot
            .stock
            .is_some()
            .then(|| SaleView::of(activity_id, &snapshot));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(activity_id, (Instant::now(), view.clone()));
        }
        Ok(view)
    }
}
