//! The Redis keys of the flash-sale state.
//!
//! Every key of an activity carries the activity id as a hash tag (`seckill:{42}:stock`), so
//! all of them live in one Redis Cluster slot and one script call may touch them atomically.
//!
//! | key                           | type    | meaning                                        |
//! |-------------------------------|---------|------------------------------------------------|
//! | `seckill:{id}:meta`           | hash    | `starts_at_ms`, `ends_at_ms` (0: none), `limit` (purchases per user) |
//! | `seckill:{id}:stock`          | string  | remaining stock; its presence means "live"     |
//! | `seckill:{id}:initial_stock`  | string  | stock the sale was created with                |
//! | `seckill:{id}:added_stock`    | string  | stock added since (`activity add-stock`)       |
//! | `seckill:{id}:over`           | string  | "1" once the stock reached 0 (removed when stock is added) |
//! | `seckill:{id}:holdings`       | hash    | user id -> purchases the user holds            |
//! | `seckill:{id}:decided`        | hash    | request id -> `<outcome code>:<user id>`; and the field `""` (see [`DECIDED_MARKER`]) |
//! | `seckill:{id}:outcomes`       | hash    | outcome code -> requests decided so            |
//! | `seckill:{id}:success`        | string  | number of successful purchases                 |
//! | `seckill:{id}:logs`           | list    | `SeckillRecord` JSON waiting for log_worker    |
//! | `seckill:{id}:logs:workers`   | set     | ids of the log_workers that hold records       |
//! | `seckill:{id}:logs:processing:<worker>` | list | records that worker took but has not yet stored |
//! | `seckill:{id}:logs:lease:<worker>` | string | present while that worker is alive (PX TTL) |
//! | `seckill:{id}:logs:dead`      | list    | records log_worker could not decode            |
//! | `seckill:{id}:orders`         | hash    | order id (the purchase's request id) -> `<R\|P\|E>:<user id>:<pay_by ms>` (sales with a payment window) |
//! | `seckill:{id}:deadlines`      | zset    | live reservations, scored by their pay_by      |
//! | `seckill:{id}:order_counts`   | hash    | `reserved`, `paid`, `expired`, and payments answered `payments_paid`, `payments_late`, `payments_unknown`, `payments_already_paid` |
//! | `seckill:{id}:payments`       | hash    | payment id -> `<answer code>:<order id>`: every payment applied, once |
//!
//! The log list carries purchase records and, in sales with a payment window, order and
//! payment events (JSON starting `{"kind":`), all stored and published by log_worker.
//!
//! Two keys live outside every activity: [`ACTIVITY_REGISTRY`], the set of activity ids whose
//! live state was ever written, and [`WINDOWED_REGISTRY`], those with a payment window (the
//! expirer's list). Neither is read inside a script (they are in other slots); the server
//! reads the first only to tell a sale that was never created from one whose state is gone.

/// The ids of every activity whose live state was written (by `seckill_admin`, or by
/// `server_kafka --initial-stock`).
pub const ACTIVITY_REGISTRY: &str = "seckill:activities";

/// The ids of the activities created with a payment window: whose reservations expire.
pub const WINDOWED_REGISTRY: &str = "seckill:activities:windowed";

/// A field of the `decided` hash that is no request id (those are never empty), written with
/// a value longer than Redis keeps in a listpack (300 bytes; `hash-max-listpack-value` is 64 by
/// default), so the hash is a hashtable from the start: as a listpack (up to 128 fields, 512
/// on Debian's Redis) every request id looked up or added scans the whole hash.
pub const DECIDED_MARKER: &str = "";

/// The fields of an activity's `meta` hash.
pub const META_STARTS_AT: &str = "starts_at_ms";
pub const META_ENDS_AT: &str = "ends_at_ms";
pub const META_LIMIT: &str = "limit";
pub const META_PAYMENT_WINDOW: &str = "payment_window_ms";

/// The Redis keys of one activity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityKeys {
    pub(crate) activity_id: u64,
    pub meta: String,
    pub stock: String,
    pub initial_stock: String,
    pub added_stock: String,
    pub over: String,
    /// User id -> purchases held.
    pub holdings: String,
    /// Request id -> `<outcome code>:<user id>`: every request decided, once.
    pub decided: String,
    /// Outcome code -> how many request ids were decided so.
    pub outcome_counts: String,
    pub success: String,
    pub logs: String,
    /// The ids of the log_workers that may hold records.
    pub log_workers: String,
    /// The single processing list of versions before per-worker lists; still recovered.
    pub legacy_processing: String,
    pub dead: String,
    /// Order id -> `<state>:<user id>:<pay_by>` (sales with a payment window).
    pub orders: String,
    /// Live reservations scored by their deadline.
    pub deadlines: String,
    /// Orders by state and payments by answer.
    pub order_counts: String,
    /// Payment id -> `<answer code>:<order id>`.
    pub payments: String,
}

impl ActivityKeys {
    pub fn new(activity_id: u64) -> Self {
        let key = |name: &str| format!("seckill:{{{activity_id}}}:{name}");
        Self {
            activity_id,
            meta: key("meta"),
            stock: key("stock"),
            initial_stock: key("initial_stock"),
            added_stock: key("added_stock"),
            over: key("over"),
            holdings: key("holdings"),
            decided: key("decided"),
            outcome_counts: key("outcomes"),
            success: key("success"),
            logs: key("logs"),
            log_workers: key("logs:workers"),
            legacy_processing: key("logs:processing"),
            dead: key("logs:dead"),
            orders: key("orders"),
            deadlines: key("deadlines"),
            order_counts: key("order_counts"),
            payments: key("payments"),
        }
    }

    pub fn activity_id(&self) -> u64 {
        self.activity_id
    }

    /// The records `worker` took and has not yet stored.
    pub fn processing(&self, worker: &str) -> String {
        format!("seckill:{{{}}}:logs:processing:{worker}", self.activity_id)
    }

    /// Present while `worker` is alive.
    pub fn lease(&self, worker: &str) -> String {
        format!("seckill:{{{}}}:logs:lease:{worker}", self.activity_id)
    }

    /// Every key with a fixed name (not the per-worker ones).
    pub(crate) fn fixed(&self) -> [&str; 17] {
        [
            &self.meta,
            &self.stock,
            &self.initial_stock,
            &self.added_stock,
            &self.over,
            &self.holdings,
            &self.decided,
            &self.outcome_counts,
            &self.success,
            &self.logs,
            &self.log_workers,
            &self.legacy_processing,
            &self.dead,
            &self.orders,
            &self.deadlines,
            &self.order_counts,
            &self.payments,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = ActivityKeys::new(42);
        for key in keys
            .fixed()
            .into_iter()
            .map(str::to_string)
            .chain([keys.processing("w-1"), keys.lease("w-1")])
        {
            assert!(key.starts_with("seckill:{42}:"), "{key}");
        }
        assert_eq!(keys.processing("w-1"), "seckill:{42}:logs:processing:w-1");
    }
}
