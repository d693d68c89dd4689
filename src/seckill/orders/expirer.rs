//! server_kafka's expirer: returns the stock of reservations nobody paid for in time.
//!
//! Every server runs one; they need no coordination, because each expiry is one atomic
//! script on the activity's slot that only expires orders still reserved and past their
//! deadline by Redis's clock (two servers expiring the same sale split the work or find
//! nothing left). Each call expires at most `server_kafka.expiry_slice` orders, so Redis,
//! which runs one script at a time, never holds purchases back behind a long expiry; calls
//! repeat while slices come back full.
//!
//! When: at the earliest deadline a call reported, else (a sale with no live reservation)
//! once a second; the list of sales with a payment window is read once a second. So an
//! order expires within about a second of its deadline, and a payment that arrives in
//! between is judged by its own script against the deadline (late is late either way).

use crate::redis_state::{RedisState, RedisStateError};
use crate::report::Report;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often sales without a known deadline, and the list of sales, are looked at again.
const RESCAN: Duration = Duration::from_secs(1);

/// What the expirer takes of the settings.
#[derive(Debug, Clone)]
pub struct ExpirerSettings {
    /// Reservations per call at most.
    pub slice: usize,
    /// The shortest wait between looks at one sale.
    pub interval: Duration,
    /// Serve only this sale (server_kafka `--activity-id`).
    pub only: Option<u64>,
}

/// Counts of the expirer, read by the server's status and summary.
#[derive(Debug, Default)]
pub struct ExpirerCounters {
    pub expired: AtomicU64,
    pub calls: AtomicU64,
    /// The longest expiry call, µs (measured from the server: includes the round trip).
    pub longest_call_us: AtomicU64,
}

/// Expires reservations past their deadline until `stop` fires.
pub async fn run_expirer(
    redis: RedisState,
    settings: ExpirerSettings,
    counters: Arc<ExpirerCounters>,
    stop: CancellationToken,
) {
    let mut next_look: HashMap<u64, Instant> = HashMap::new();
    let mut next_scan = Instant::now();
    let mut sales: Vec<u64> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= next_scan {
            match redis.windowed_activities().await {
                Ok(mut windowed) => {
                    if let Some(only) = settings.only {
                        windowed.retain(|&id| id == only);
                    }
                    next_look.retain(|id, _| windowed.contains(id));
                    sales = windowed;
                }
                Err(error) => {
                    tracing::warn!(error = %Report(&error), "expirer: cannot list the sales with a payment window; trying again");
                }
            }
            next_scan = now + RESCAN;
        }
        for &activity_id in &sales {
            if stop.is_cancelled() {
                return;
            }
            if next_look.get(&activity_id).is_some_and(|&at| at > now) {
                continue;
            }
            let next = match expire_sale(&redis, activity_id, &settings, &counters, &stop).await {
                Ok(Some(slice_next)) => slice_next,
                Ok(None) => Instant::now() + RESCAN,
                Err(error) => {
                    tracing::warn!(activity_id, error = %Report(&error), "expirer: expiry failed; trying this sale again later");
                    Instant::now() + RESCAN
                }
            };
            next_look.insert(activity_id, next.max(Instant::now() + settings.interval));
        }
        let wake = next_look
            .values()
            .copied()
            .min()
            .unwrap_or(next_scan)
            .min(next_scan)
            .max(Instant::now() + Duration::from_millis(1));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Expires what is due in one sale, slice after slice; returns when to look again (`None`:
/// at the next rescan).
async fn expire_sale(
    redis: &RedisState,
    activity_id: u64,
    settings: &ExpirerSettings,
    counters: &ExpirerCounters,
    stop: &CancellationToken,
) -> Result<Option<Instant>, RedisStateError> {
    loop {
        let started = Instant::now();
        let Some(slice) = redis.expire_due(activity_id, settings.slice).await? else {
            // No live state: the server's purchases report it; nothing to expire here.
            return Ok(None);
        };
        let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters.longest_call_us.fetch_max(took, Ordering::Relaxed);
        if slice.expired > 0 {
            counters.expired.fetch_add(slice.expired, Ordering::Relaxed);
            metrics::counter!("seckill_orders_expired_total").increment(slice.expired);
            tracing::debug!(activity_id, expired = slice.expired, "reservations expired");
        }
        if (slice.expired as usize) < settings.slice || stop.is_cancelled() {
            return Ok(slice.next_due_ms.map(|due| {
                let wait = u64::try_from(due.saturating_sub(slice.redis_time_ms)).unwrap_or(0);
                Instant::now() + Duration::from_millis(wait).min(RESCAN)
            }));
        }
    }
}
