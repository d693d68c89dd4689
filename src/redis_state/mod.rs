//! The flash-sale state in Redis (one node or a Redis Cluster) and the Lua scripts that
//! change it, one concern a file:
//!
//! | module          | what lives there                                                       |
//! |-----------------|------------------------------------------------------------------------|
//! | [`keys`]        | the keys of an activity (all in one hash slot) and the registry        |
//! | [`connection`]  | one node (pooled) or a cluster (multiplexed), scripts loaded per node   |
//! | `script`        | the Lua scripts, each in `scripts/<name>.lua`                          |
//! | [`activities`]  | an activity's live state: pre-warm, reset, add stock, end, restore, figures |
//! | [`purchase`]    | the atomic purchase of one request or a batch, outcome codes          |
//! | [`durability`]  | `WAIT` for replicas before a decision counts as made                  |
//! | [`log_queue`]   | each log_worker's side of the reliable record queue                   |
//! | [`orders`]      | payments and the expiry of unpaid reservations                        |
//!
//! log_worker moves records with the reliable-queue pattern ([`LogQueue`]): `LMOVE logs ->
//! its own processing list`, insert into PostgreSQL, then `LREM` them from that list. Each
//! worker keeps a lease alive; the records of a worker whose lease lapsed (it died) are
//! claimed by a live worker in one atomic script and inserted again (the insert is
//! idempotent). A worker never takes records from a worker whose lease is alive, so several
//! workers on one activity neither insert each other's batches nor strand them.

pub mod activities;
pub mod connection;
pub mod durability;
pub mod keys;
pub mod log_queue;
pub mod orders;
pub mod purchase;
mod script;

pub use activities::{ActivitySnapshot, LiveActivity, RestoreOutcome, SaleState};
pub use connection::{Conn, RedisConnection};
pub use durability::ReplicaWait;
pub use keys::{ActivityKeys, ACTIVITY_REGISTRY, WINDOWED_REGISTRY};
pub use log_queue::{LogQueue, QueueProbe};
pub use orders::{ExpirySlice, PaymentAnswer, PaymentBatch, PaymentDecisions};
pub use purchase::{BatchDecisions, PurchaseBatch};

use crate::config::RedisConfig;
use durability::Durability;
use script::Scripts;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStateError {
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    #[error("no Redis connection available")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from Redis")]
    Parse(#[from] redis::ParsingError),
    #[error("activity {0} has no live state in Redis (no stock key): create it with seckill_admin, rebuild it with `seckill_admin activity restore {0}`, or start server_kafka with --initial-stock")]
    NotInitialised(u64),
    #[error("activity {0} has a payment window: its purchases are reservations, made in batches (run_purchase_batch)")]
    Windowed(u64),
    #[error("unexpected reply from a script: {0}")]
    UnexpectedReply(i64),
    #[error("the batch purchase script answered {answers} codes for {requests} requests")]
    BatchReply { requests: usize, answers: usize },
    #[error("cannot encode the purchase record")]
    Encode(#[from] serde_json::Error),
    /// The batch was decided, but fewer replicas than required acknowledged its writes in
    /// time: its answers must not leave the server yet (a failover could lose them).
    #[error("activity {activity_id}: {acked} of {needed} replicas acknowledged the decisions within the wait")]
    NotReplicated {
        activity_id: u64,
        acked: u32,
        needed: u32,
        decided: BatchDecisions,
    },
}

impl RedisStateError {
    /// Whether the same call may succeed later (connection trouble, timeouts, a busy or
    /// loading server, a cluster reconfiguring, replicas behind), so the caller should back
    /// off and retry rather than give up.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) | Self::NotReplicated { .. } => true,
            Self::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || matches!(
                        error.kind(),
                        redis::ErrorKind::ClusterConnectionNotFound
                            | redis::ErrorKind::Server(
                                redis::ServerErrorKind::BusyLoading
                                    | redis::ServerErrorKind::TryAgain
                                    | redis::ServerErrorKind::ClusterDown
                                    | redis::ServerErrorKind::MasterDown
                                    | redis::ServerErrorKind::Moved
                                    | redis::ServerErrorKind::Ask
                                    | redis::ServerErrorKind::ReadOnly
                                    // A MULTI cut short by a slot moving (cluster).
                                    | redis::ServerErrorKind::ExecAbort
                            )
                    )
            }
            _ => false,
        }
    }
}

/// Flash-sale state operations on a Redis connection (one node or a cluster).
#[derive(Clone)]
pub struct RedisState {
    connection: RedisConnection,
    scripts: Arc<Scripts>,
    durability: Arc<Durability>,
    /// Blocking waits stay below the connection's response timeout.
    longest_block: Duration,
}

impl RedisState {
    /// Prepares the connection `redis:` describes; nothing is contacted until the first call.
    pub fn connect(config: &RedisConfig) -> Result<Self, RedisStateError> {
        // Leave a margin so a blocking pop returns before the client gives up on it.
        let longest_block =
            Duration::from_millis(config.response_timeout_ms.saturating_sub(250).max(10));
        Ok(Self {
            connection: RedisConnection::new(config)?,
            scripts: Arc::new(Scripts::new()),
            durability: Arc::new(Durability::new(
                config.wait_replicas,
                Duration::from_millis(config.wait_timeout_ms),
            )),
            longest_block,
        })
    }

    /// A connection for raw commands (tools and tests).
    pub async fn connection(&self) -> Result<Conn, RedisStateError> {
        self.connection.get().await
    }

    pub fn is_cluster(&self) -> bool {
        self.connection.is_cluster()
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
