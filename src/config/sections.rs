//! The configuration sections other than `kafka` (which lives in [`crate::kafka::config`]):
//! Redis, PostgreSQL, telemetry, the sale itself and each program's own section, with
//! their built-in defaults.

use crate::redis_state::ReplicaWait;
use crate::secret::SecretUrl;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS (one node).
    pub url: SecretUrl,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, or `rediss://`); when set, the
    /// cluster is used and `url` is not. Environment: comma-separated.
    pub cluster_urls: Vec<SecretUrl>,
    /// Connections in the pool (one node); bounds the Lua calls in flight per process.
    pub pool_size: usize,
    /// How long to wait for a pooled connection (create or recycle) before failing.
    pub connect_timeout_ms: u64,
    /// How long to wait for a command's reply; blocking pops wait a little less.
    pub response_timeout_ms: u64,
    /// Replicas that must have a purchase decision before its answer is published:
    /// `auto` (one when the master has a replica, none when it has none) or a number.
    pub wait_replicas: ReplicaWait,
    /// Longest wait for those replicas; a batch whose wait falls short is tried again.
    pub wait_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("redis://127.0.0.1:6379/0"),
            cluster_urls: Vec::new(),
            pool_size: 32,
            connect_timeout_ms: 5_000,
            response_timeout_ms: 5_000,
            wait_replicas: ReplicaWait::Auto,
            wait_timeout_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/db?sslmode=...`
    pub url: SecretUrl,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("postgres://seckill@127.0.0.1:5432/seckill"),
            max_connections: 8,
            connect_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `host:port` to serve Prometheus metrics on (`GET /metrics`); empty = off.
    pub metrics_addr: String,
}

impl TelemetryConfig {
    /// The metrics address, when metrics are on (validated at load).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr.trim().parse().ok()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings the flash-sale programs must agree on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeckillConfig {
    /// One sale to serve, send to or check; unset (the default): server_kafka and
    /// log_worker serve every activity.
    pub activity_id: Option<u64>,
    /// Topic client_kafka writes requests to and server_kafka reads them from.
    pub requests_topic: String,
    /// Topic server_kafka answers every request on (keyed by user id), and
    /// `client_kafka --await-results` reads.
    pub results_topic: String,
    /// Payments of orders (sales with a payment window), keyed by user id; server_kafka
    /// applies them. Malformed ones go to `<payments_topic>.dlq`.
    pub payments_topic: String,
    /// Order events (PAID, EXPIRED) and the answers to payments, keyed by user id;
    /// log_worker publishes them.
    pub order_events_topic: String,
}

impl Default for SeckillConfig {
    fn default() -> Self {
        Self {
            activity_id: None,
            requests_topic: "seckill-requests".into(),
            results_topic: "seckill-results".into(),
            payments_topic: "seckill-payments".into(),
            order_events_topic: "seckill-order-events".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientKafkaConfig {
    /// Sales to spread the users' requests over (each user asks for one or more of them);
    /// empty: the one `seckill.activity_id` names.
    pub activity_ids: Vec<u64>,
    /// Distinct users that send requests.
    pub users: u64,
    pub requests_per_user: u32,
    /// Requests per second; 0 sends as fast as the producer accepts.
    pub rate: u64,
    pub delay_ms: u64,
    /// Seed for the shuffle; unset takes one from the clock.
    pub seed: Option<u64>,
    /// After sending, read `seckill.results_topic` until every request sent has its result
    /// (or `results_timeout_ms` passes), and report outcomes and latency.
    pub await_results: bool,
    /// How long to wait for the results after the last request was sent.
    pub results_timeout_ms: u64,
    /// With `await_results`, in sales with a payment window: the share of this run's
    /// reservations it pays (0 to 1), each after a random delay in `pay_delay_ms`.
    pub pay_ratio: f64,
    /// `MIN..MAX` (or one number): the delay before paying a reservation, ms.
    pub pay_delay_ms: String,
}

impl ClientKafkaConfig {
    /// `pay_delay_ms` as (min, max).
    pub fn pay_delay(&self) -> Result<(u64, u64), String> {
        parse_ms_range(&self.pay_delay_ms)
    }
}

/// `MIN..MAX` or one number of milliseconds.
pub fn parse_ms_range(text: &str) -> Result<(u64, u64), String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{text}` is not MIN..MAX in milliseconds (e.g. 200..2000)"))
    };
    let (min, max) = match text.split_once("..") {
        Some((min, max)) => (number(min)?, number(max)?),
        None => {
            let value = number(text)?;
            (value, value)
        }
    };
    if min > max {
        return Err(format!("`{text}`: MIN is above MAX"));
    }
    Ok((min, max))
}

impl Default for ClientKafkaConfig {
    fn default() -> Self {
        Self {
            activity_ids: Vec::new(),
            users: 10_000,
            requests_per_user: 1,
            rate: 0,
            delay_ms: 0,
            seed: None,
            await_results: false,
            results_timeout_ms: 60_000,
            pay_ratio: 0.0,
            pay_delay_ms: "0".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerKafkaConfig {
    pub group_id: String,
    /// The quick path: with `seckill.activity_id`, that sale is reset at start to a fresh,
    /// open sale of this stock (one purchase per user), unless `keep_state`. Unset: the
    /// live state in Redis is served as it is (seckill_admin wrote it).
    pub initial_stock: Option<u64>,
    /// The consumer group protocol: `classic` (rebalances run by the group leader) or
    /// `consumer` (KIP-848, Kafka 4: the broker assigns, session times are the broker's).
    pub group_protocol: GroupProtocol,
    /// Consumer tasks in the group.
    pub consumers: usize,
    /// Purchase script calls each consumer has in flight at once (each carries up to
    /// `batch_size` requests).
    pub concurrency: usize,
    /// Requests per purchase script call at most.
    pub batch_size: usize,
    /// Longest wait, after a batch's first request, for more requests to fill it; 0 sends
    /// what there is as soon as no more requests are waiting.
    pub batch_wait_ms: u64,
    /// Static group membership: consumer `n` joins as `group.instance.id`
    /// `<instance_id>-<n>`, so a restarted server takes its partitions back without a
    /// rebalance (Apache Kafka). Unique per server process (e.g. the pod name); unset = off.
    pub instance_id: Option<String>,
    /// A request older than this when processed is answered TIMEOUT without touching stock;
    /// 0 disables the check.
    pub timeout_ms: u64,
    pub offset_reset: OffsetReset,
    /// With `initial_stock`: keep the sale's state already in Redis instead of resetting it
    /// (and fail at start when it has none).
    pub keep_state: bool,
    pub status_interval_secs: u64,
    /// Dead-letter topic for malformed requests; unset means `<requests_topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// Publish every request's outcome to `seckill.results_topic` (offsets are stored only
    /// once a request's result is acknowledged); off for pure load tests.
    pub publish_results: bool,
    /// Reservations expired per script call at most: Redis runs one call at a time, so
    /// this bounds how long purchases wait behind an expiry.
    pub expiry_slice: usize,
    /// How often the expirer looks for reservations past their deadline, ms.
    pub expiry_interval_ms: u64,
}

impl Default for ServerKafkaConfig {
    fn default() -> Self {
        Self {
            group_id: "seckill-server".into(),
            initial_stock: None,
            group_protocol: GroupProtocol::Classic,
            consumers: 2,
            concurrency: 16,
            batch_size: 256,
            batch_wait_ms: 0,
            instance_id: None,
            timeout_ms: 60_000,
            offset_reset: OffsetReset::Earliest,
            keep_state: false,
            status_interval_secs: 5,
            dlq_topic: None,
            publish_results: true,
            expiry_slice: 500,
            expiry_interval_ms: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// Kafka's classic protocol: JoinGroup/SyncGroup, client-side assignment.
    Classic,
    /// KIP-848 (`group.protocol=consumer`, Kafka 4.0+): the broker assigns incrementally.
    Consumer,
}

impl GroupProtocol {
    /// The value librdkafka expects for `group.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    /// The value librdkafka expects for `auto.offset.reset`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogWorkerConfig {
    /// Records per INSERT.
    pub batch_size: usize,
    /// Longest wait for a batch to fill before writing what there is.
    pub flush_interval_ms: u64,
    /// Exit once the queue is empty instead of waiting for more records.
    pub drain: bool,
    /// How long a worker's claim on the records it took outlives its last renewal (renewed
    /// every third of it). Another worker takes over a dead worker's records after this.
    pub lease_ms: u64,
    /// Insert loops in the process, each a worker with its own processing lists, so that
    /// PostgreSQL inserts overlap.
    pub concurrency: usize,
    /// Serving every activity: how often the list of activities (PostgreSQL's `activities`
    /// and the Redis registry) is read again.
    pub activities_refresh_ms: u64,
    /// Serve (or with `--verify`, check) only these activities; empty: every activity (or
    /// `seckill.activity_id` when that is set).
    pub activity_ids: Vec<u64>,
}

impl Default for LogWorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            flush_interval_ms: 200,
            drain: false,
            lease_ms: 10_000,
            concurrency: 4,
            activities_refresh_ms: 2_000,
            activity_ids: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSumConfig {
    pub input_topic: String,
    pub output_topic: String,
    pub group_id: String,
    /// Worker tasks; 0 means one per input partition.
    pub workers: usize,
    /// Records each worker may hold between its consuming and producing threads (the
    /// bounded channel); a full channel pauses consumption. About 72 bytes a record.
    pub channel_capacity: usize,
    pub exactly_once: bool,
    /// Records per transaction at most, with `exactly_once` (a transaction also ends after
    /// 100 ms, which at full speed comes first: each commit costs round trips, so 10,000
    /// records per transaction measured 0.45 M records/s against 0.75 M).
    pub transaction_records: usize,
    /// Results each worker's producer may queue before it waits for acknowledgements (with
    /// `channel_capacity`, what bounds a worker's memory).
    pub producer_queue_messages: usize,
    /// Workers take fixed shares of the input partitions (worker i of n: those with
    /// `partition % n == i`) from the group's committed offsets, without joining the group:
    /// no rebalances, as Flink's and Spark's Kafka sources do; a dead worker's partitions
    /// wait for its restart.
    pub static_assignment: bool,
}

impl Default for StreamSumConfig {
    fn default() -> Self {
        Self {
            input_topic: "integer-list-input-avro".into(),
            output_topic: "integer-sum-output-avro".into(),
            group_id: "stream-sum".into(),
            workers: 0,
            channel_capacity: 65_536,
            exactly_once: false,
            transaction_records: 100_000,
            producer_queue_messages: 100_000,
            static_assignment: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZstdProducerConfig {
    pub topic: String,
    /// Events to send; 0 runs until SIGTERM.
    pub events: u64,
    /// Events per second; 0 is unlimited.
    pub rate: u64,
    /// Distinct users the events are spread over.
    pub users: u64,
    /// Seed of the event generator, for a reproducible sequence; 0 picks one at random.
    pub seed: u64,
}

impl Default for ZstdProducerConfig {
    fn default() -> Self {
        Self {
            topic: "user-events".into(),
            events: 100_000,
            rate: 0,
            users: 1_000,
            seed: 0,
        }
    }
}

/// seckill_gateway: buyers over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where it listens (`--listen`).
    pub listen: String,
    /// A file holding the token secret (HS256); `GATEWAY_JWT_SECRET` is read when
    /// unset. Never in this file: secrets do not belong in config files.
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// How long a purchase waits for its outcome when the client does not say (`wait_ms`).
    pub default_wait_ms: u64,
    /// The longest `wait_ms` a client may ask for (purchase and long-poll).
    pub max_wait_ms: u64,
    /// Requests waiting for their outcome at most; beyond it, 503 with Retry-After.
    pub max_pending: usize,
    /// Outcomes kept for `GET /requests/{id}` after they arrived (the newest).
    pub recent_outcomes: usize,
    /// Purchases per second one user may make (token bucket), and its burst.
    pub user_rate_per_sec: u32,
    pub user_burst: u32,
    /// Requests per second one client address may make, and its burst.
    pub ip_rate_per_sec: u32,
    pub ip_burst: u32,
    /// Largest request body, bytes (413 above).
    pub max_body_bytes: usize,
    /// How long a sale's state is cached for `GET /activities/{id}` and the door answers.
    pub activity_cache_ms: u64,
    /// How long the requests producer waits to fill a batch (librdkafka `linger.ms`): a
    /// longer one makes fewer, larger produce requests at the cost of that much latency.
    pub linger_ms: u64,
    /// Open connections at most.
    pub max_connections: usize,
    /// A client must send its request headers within this, ms.
    pub header_read_timeout_ms: u64,
    /// TLS: a PEM certificate chain and its private key; both set turn TLS on (rustls).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            jwt_secret_file: None,
            default_wait_ms: 1_000,
            max_wait_ms: 10_000,
            max_pending: 100_000,
            recent_outcomes: 200_000,
            user_rate_per_sec: 5,
            user_burst: 10,
            ip_rate_per_sec: 1_000,
            ip_burst: 2_000,
            max_body_bytes: 4_096,
            activity_cache_ms: 200,
            linger_ms: 1,
            max_connections: 10_000,
            header_read_timeout_ms: 5_000,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}
