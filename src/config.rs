//! Layered configuration: built-in defaults < `config.yaml` < environment < CLI flags.
//!
//! Every layer is turned into a YAML value tree and merged key by key, remembering which
//! layer set each key, so that a bad value is reported with the key, where it came from
//! (file, environment variable or flag) and why it is wrong. The merged tree is then
//! deserialized into [`Config`] and checked by [`Config::validate`].
//!
//! Environment variables: every key `section.key` can be set as `SECKILL_SECTION_KEY`
//! (upper case, dots to underscores), e.g. `SECKILL_SERVER_KAFKA_CONSUMERS=4`. The usual
//! names `KAFKA_BROKERS` (or `KAFKA_BROKER`), `REDIS_URL` and `DATABASE_URL` are read too, below their
//! `SECKILL_` spelling. An unknown `SECKILL_*` variable is an error, so typos do not pass
//! silently. `kafka.properties` (raw librdkafka properties) is set in the file only.

use crate::kafka::client_config::check_properties;
use crate::secret::{is_sensitive_key, redact_url, Secret, SecretUrl, REDACTED};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable that names the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "SECKILL_CONFIG";
/// Prefix of the per-key environment variables.
pub const ENV_PREFIX: &str = "SECKILL_";
/// Conventional variable names read as aliases of a key (below `SECKILL_*`).
pub const ENV_ALIASES: &[(&str, &str)] = &[
    // The singular spelling some Kafka tools use; KAFKA_BROKERS wins when both are set.
    ("KAFKA_BROKER", "kafka.brokers"),
    ("KAFKA_BROKERS", "kafka.brokers"),
    ("REDIS_URL", "redis.url"),
    ("DATABASE_URL", "postgres.url"),
];
/// The sections each program reads. Every program loads and checks the whole
/// configuration, but a variable of another section has no effect on it: `cli::start` warns
/// about those, and tests/deploy.rs holds docker-compose.yml to this table.
pub const PROGRAM_SECTIONS: &[(&str, &[&str])] = &[
    (
        "client_kafka",
        &["kafka", "telemetry", "seckill", "client_kafka"],
    ),
    (
        "server_kafka",
        &["kafka", "telemetry", "seckill", "redis", "server_kafka"],
    ),
    (
        "log_worker",
        &["telemetry", "seckill", "redis", "postgres", "log_worker"],
    ),
    ("stream_sum", &["kafka", "telemetry", "stream_sum"]),
    ("zstd_producer", &["kafka", "telemetry", "zstd_producer"]),
];

/// The configuration key an environment variable sets (an alias or a `SECKILL_*` name).
pub fn key_of_env_var(name: &str) -> Option<String> {
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(env, _)| *env == name) {
        return Some(key.to_string());
    }
    if !name.starts_with(ENV_PREFIX) {
        return None;
    }
    ConfigLoader::new()
        .env_names()
        .into_iter()
        .find(|(_, env)| env == name)
        .map(|(key, _)| key)
}

/// Whether `program` reads `key` (a `section.key` name). Unknown programs read everything.
pub fn program_reads(program: &str, key: &str) -> bool {
    let section = key.split('.').next().unwrap_or(key);
    PROGRAM_SECTIONS
        .iter()
        .find(|(name, _)| *name == program)
        .is_none_or(|(_, sections)| sections.contains(&section))
}

/// Keys whose value is a free-form map rather than a fixed set of keys.
const FREE_FORM_KEYS: &[&str] = &["kafka.properties"];

/// The whole configuration of the suite. Each program reads its own section plus the shared
/// `kafka`, `redis`, `postgres`, `seckill` and `telemetry` sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    pub telemetry: TelemetryConfig,
    pub seckill: SeckillConfig,
    pub client_kafka: ClientKafkaConfig,
    pub server_kafka: ServerKafkaConfig,
    pub log_worker: LogWorkerConfig,
    pub stream_sum: StreamSumConfig,
    pub zstd_producer: ZstdProducerConfig,
}

/// Connection settings shared by every Kafka client of the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// `client.id` prefix; each program appends its own name.
    pub client_id: String,
    pub security_protocol: SecurityProtocol,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Only from the environment (`SECKILL_KAFKA_SASL_PASSWORD`) or `sasl_password_file`:
    /// a password written in a config file is rejected.
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password (e.g. a mounted Kubernetes secret).
    pub sasl_password_file: Option<String>,
    pub ssl_ca_location: Option<String>,
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    /// Like `sasl_password`: environment or `ssl_key_password_file` only.
    pub ssl_key_password: Option<Secret>,
    pub ssl_key_password_file: Option<String>,
    /// `statistics.interval.ms`: how often librdkafka reports statistics, published as
    /// metrics. 0 = off, unless `telemetry.metrics_addr` is set (then 5000).
    pub statistics_interval_ms: u64,
    /// Raw librdkafka properties passed through as they are. A property that a typed key
    /// above (or the suite itself) sets is rejected, so there is one place for each setting.
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            client_id: "seckill-kafka".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            ssl_key_password_file: None,
            statistics_interval_ms: 0,
            properties: KafkaProperties::default(),
        }
    }
}

/// Raw librdkafka properties; `Debug` hides the values of credential-like keys.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if is_sensitive_key(key) {
                    REDACTED
                } else {
                    value.as_str()
                };
                (key, shown)
            }))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka expects for `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: SecretUrl,
    /// Connections in the pool; bounds the Lua calls in flight per process.
    pub pool_size: usize,
    /// How long to wait for a pooled connection (create or recycle) before failing.
    pub connect_timeout_ms: u64,
    /// How long to wait for a command's reply; blocking pops wait a little less.
    pub response_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("redis://127.0.0.1:6379/0"),
            pool_size: 32,
            connect_timeout_ms: 5_000,
            response_timeout_ms: 5_000,
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
    /// The sale; Redis keys and PostgreSQL rows are scoped by it.
    pub activity_id: u64,
    /// Topic client_kafka writes requests to and server_kafka reads them from.
    pub requests_topic: String,
    /// Topic server_kafka answers every request on (keyed by user id), and
    /// `client_kafka --await-results` reads.
    pub results_topic: String,
}

impl Default for SeckillConfig {
    fn default() -> Self {
        Self {
            activity_id: 1,
            requests_topic: "seckill-requests".into(),
            results_topic: "seckill-results".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientKafkaConfig {
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
}

impl Default for ClientKafkaConfig {
    fn default() -> Self {
        Self {
            users: 10_000,
            requests_per_user: 1,
            rate: 0,
            delay_ms: 0,
            seed: None,
            await_results: false,
            results_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerKafkaConfig {
    pub group_id: String,
    /// Stock set in Redis at start (unless `keep_state`).
    pub initial_stock: u64,
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
    /// Keep the stock and counters already in Redis instead of resetting them at start.
    pub keep_state: bool,
    pub status_interval_secs: u64,
    /// Dead-letter topic for malformed requests; unset means `<requests_topic>.dlq`.
    pub dlq_topic: Option<String>,
    /// Publish every request's outcome to `seckill.results_topic` (offsets are stored only
    /// once a request's result is acknowledged); off for pure load tests.
    pub publish_results: bool,
}

impl Default for ServerKafkaConfig {
    fn default() -> Self {
        Self {
            group_id: "seckill-server".into(),
            initial_stock: 1_000,
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
    /// Insert loops in the process, each a worker with its own processing list, so that
    /// PostgreSQL inserts overlap.
    pub concurrency: usize,
}

impl Default for LogWorkerConfig {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            flush_interval_ms: 200,
            drain: false,
            lease_ms: 10_000,
            concurrency: 4,
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
    /// bounded channel); a full channel pauses consumption.
    pub channel_capacity: usize,
    pub exactly_once: bool,
    /// Records per transaction at most, with `exactly_once` (a transaction also ends after
    /// 100 ms).
    pub transaction_records: usize,
    /// Results each worker's producer may queue before it waits for acknowledgements (with
    /// `channel_capacity`, what bounds a worker's memory).
    pub producer_queue_messages: usize,
}

impl Default for StreamSumConfig {
    fn default() -> Self {
        Self {
            input_topic: "integer-list-input-avro".into(),
            output_topic: "integer-sum-output-avro".into(),
            group_id: "stream-sum".into(),
            workers: 0,
            channel_capacity: 16_384,
            exactly_once: false,
            transaction_records: 10_000,
            producer_queue_messages: 100_000,
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

/// Where a configuration value came from; part of every error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Flag(name) => write!(f, "command-line flag --{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: not valid YAML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("{origin}: unknown key `{key}`")]
    UnknownKey { origin: Origin, key: String },
    #[error("{origin}: key `{key}`: {reason}")]
    InvalidValue {
        origin: Origin,
        key: String,
        reason: String,
    },
}

impl Config {
    /// Loads the configuration the usual way: the file named by `config_path` or
    /// `SECKILL_CONFIG` (else `./config.yaml` when present), then the process environment,
    /// then `flags`.
    pub fn load(config_path: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        let mut loader = ConfigLoader::new();
        let explicit = config_path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from));
        match explicit {
            Some(path) => {
                loader.file(&path)?;
            }
            None => {
                let default_path = Path::new("config.yaml");
                if default_path.exists() {
                    loader.file(default_path)?;
                }
            }
        }
        loader.env(std::env::vars())?;
        loader.flags(flags)?;
        loader.build()
    }

    /// Checks what types alone cannot: ranges, and raw Kafka properties that clash with a
    /// typed key. `origin_of` names the layer that set a key.
    fn validate(&self, origin_of: impl Fn(&str) -> Origin) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
            origin: origin_of(key),
            key: key.to_string(),
            reason,
        };
        let positive: [(&str, u64); 16] = [
            ("redis.pool_size", self.redis.pool_size as u64),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            (
                "postgres.max_connections",
                u64::from(self.postgres.max_connections),
            ),
            (
                "client_kafka.requests_per_user",
                u64::from(self.client_kafka.requests_per_user),
            ),
            ("server_kafka.consumers", self.server_kafka.consumers as u64),
            (
                "server_kafka.concurrency",
                self.server_kafka.concurrency as u64,
            ),
            (
                "server_kafka.batch_size",
                self.server_kafka.batch_size as u64,
            ),
            (
                "server_kafka.status_interval_secs",
                self.server_kafka.status_interval_secs,
            ),
            ("log_worker.batch_size", self.log_worker.batch_size as u64),
            (
                "log_worker.flush_interval_ms",
                self.log_worker.flush_interval_ms,
            ),
            ("log_worker.lease_ms", self.log_worker.lease_ms),
            ("log_worker.concurrency", self.log_worker.concurrency as u64),
            (
                "stream_sum.channel_capacity",
                self.stream_sum.channel_capacity as u64,
            ),
            (
                "stream_sum.transaction_records",
                self.stream_sum.transaction_records as u64,
            ),
            (
                "stream_sum.producer_queue_messages",
                self.stream_sum.producer_queue_messages as u64,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        let non_empty = [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.client_id", &self.kafka.client_id),
            ("seckill.requests_topic", &self.seckill.requests_topic),
            ("seckill.results_topic", &self.seckill.results_topic),
            ("server_kafka.group_id", &self.server_kafka.group_id),
            ("stream_sum.input_topic", &self.stream_sum.input_topic),
            ("stream_sum.output_topic", &self.stream_sum.output_topic),
            ("stream_sum.group_id", &self.stream_sum.group_id),
            ("zstd_producer.topic", &self.zstd_producer.topic),
        ];
        for (key, value) in non_empty {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
        }
        if let Some(instance_id) = &self.server_kafka.instance_id {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if instance_id.is_empty() || !instance_id.chars().all(allowed) {
                return Err(invalid(
                    "server_kafka.instance_id",
                    "must be letters, digits, '.', '_' or '-' (e.g. the pod name), or null to turn static membership off".into(),
                ));
            }
        }
        let metrics_addr = self.telemetry.metrics_addr.trim();
        if !metrics_addr.is_empty() && metrics_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "telemetry.metrics_addr",
                format!("`{metrics_addr}` is not an ip:port address (e.g. 0.0.0.0:9100)"),
            ));
        }
        for (key, url, schemes) in [
            ("redis.url", &self.redis.url, &["redis", "rediss"][..]),
            (
                "postgres.url",
                &self.postgres.url,
                &["postgres", "postgresql"][..],
            ),
        ] {
            let scheme = url.expose().split_once("://").map(|(scheme, _)| scheme);
            if !scheme.is_some_and(|s| schemes.contains(&s)) {
                // Only the scheme is shown: a value that is not a URL cannot be redacted
                // with certainty (it may be a bare password).
                let found = match scheme {
                    Some(scheme)
                        if scheme.len() <= 16
                            && scheme
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)) =>
                    {
                        format!("it starts with `{scheme}://`")
                    }
                    _ => "it has no scheme".to_string(),
                };
                return Err(invalid(
                    key,
                    format!("not a {} URL ({found})", schemes.join("://, ") + "://"),
                ));
            }
        }
        if let Err(clash) = check_properties(&self.kafka) {
            let key = format!("kafka.properties.{}", clash.property);
            return Err(ConfigError::InvalidValue {
                origin: origin_of("kafka.properties"),
                key,
                reason: clash.to_string(),
            });
        }
        Ok(())
    }

    /// The configuration as YAML with every credential replaced by `***`, for
    /// `--print-config` and start-up logs.
    pub fn to_redacted_yaml(&self) -> String {
        let mut tree = serde_yaml::to_value(self).unwrap_or(Value::Null);
        redact_tree(&mut tree, "");
        serde_yaml::to_string(&tree).unwrap_or_default()
    }
}

fn redact_tree(value: &mut Value, key: &str) {
    match value {
        Value::Mapping(map) => {
            for (child_key, child) in map.iter_mut() {
                let child_key = child_key.as_str().unwrap_or_default();
                redact_tree(child, child_key);
            }
        }
        Value::String(text) if is_sensitive_key(key) => *text = REDACTED.to_string(),
        Value::String(text) if key == "url" => *text = redact_url(text),
        _ => {}
    }
}

/// Values set by command-line flags, keyed by their dotted config key.
#[derive(Debug, Default, Clone)]
pub struct FlagOverrides {
    values: Vec<(String, String, Value)>,
}

impl FlagOverrides {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` from flag `--flag` when the flag was given.
    pub fn set<T: Serialize>(&mut self, key: &str, flag: &str, value: Option<T>) -> &mut Self {
        if let Some(value) = value {
            let value = serde_yaml::to_value(value).unwrap_or(Value::Null);
            self.values.push((key.to_string(), flag.to_string(), value));
        }
        self
    }

    /// Sets a boolean key to true when the switch was given (switches cannot unset).
    pub fn switch(&mut self, key: &str, flag: &str, given: bool) -> &mut Self {
        self.set(key, flag, given.then_some(true))
    }
}

/// Builds a [`Config`] from layers applied in call order; later layers win.
pub struct ConfigLoader {
    defaults: Value,
    merged: Value,
    origins: HashMap<String, Origin>,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigLoader {
    pub fn new() -> Self {
        let defaults = serde_yaml::to_value(Config::default()).unwrap_or(Value::Null);
        Self {
            merged: defaults.clone(),
            defaults,
            origins: HashMap::new(),
        }
    }

    /// Every settable key with its environment variable name, in file order.
    pub fn env_names(&self) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        collect_leaf_keys(&self.defaults, "", &mut keys);
        keys.into_iter()
            .filter(|key| !is_free_form(key))
            .map(|key| {
                let env = env_name(&key);
                (key, env)
            })
            .collect()
    }

    pub fn file(&mut self, path: &Path) -> Result<&mut Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.yaml(&text, Origin::File(path.to_path_buf()))
    }

    /// Applies YAML text (the contents of a config file) as one layer.
    pub fn yaml(&mut self, text: &str, origin: Origin) -> Result<&mut Self, ConfigError> {
        let syntax_error = |reason: String| match &origin {
            Origin::File(path) => ConfigError::Syntax {
                path: path.clone(),
                reason,
            },
            other => ConfigError::InvalidValue {
                origin: other.clone(),
                key: String::new(),
                reason,
            },
        };
        let layer: Value =
            serde_yaml::from_str(text).map_err(|error| syntax_error(error.to_string()))?;
        match layer {
            Value::Null => Ok(self),
            Value::Mapping(map) => {
                self.merge_mapping(map, "", &origin)?;
                Ok(self)
            }
            _ => Err(syntax_error(
                "the top level must be a mapping of sections".into(),
            )),
        }
    }

    /// Applies environment variables (pass `std::env::vars()`).
    pub fn env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<&mut Self, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let known = self.env_names();
        for name in vars.keys() {
            let is_ours = name.starts_with(ENV_PREFIX) && name != CONFIG_PATH_ENV;
            if is_ours && !known.iter().any(|(_, env)| env == name) {
                return Err(ConfigError::UnknownKey {
                    origin: Origin::Env(name.clone()),
                    key: name[ENV_PREFIX.len()..].to_ascii_lowercase(),
                });
            }
        }
        // Aliases first so that the SECKILL_ spelling wins when both are set.
        let aliases = ENV_ALIASES.iter().map(|(env, key)| (*env, key.to_string()));
        let prefixed = known.iter().map(|(key, env)| (env.as_str(), key.clone()));
        for (env, key) in aliases.chain(prefixed) {
            if let Some(raw) = vars.get(env) {
                let value = self.env_value(&key, raw);
                self.set_leaf(&key, value, Origin::Env(env.to_string()))?;
            }
        }
        Ok(self)
    }

    /// Applies command-line flags.
    pub fn flags(&mut self, flags: &FlagOverrides) -> Result<&mut Self, ConfigError> {
        for (key, flag, value) in &flags.values {
            self.set_leaf(key, value.clone(), Origin::Flag(flag.clone()))?;
        }
        Ok(self)
    }

    /// Deserializes and validates the merged layers.
    pub fn build(&self) -> Result<Config, ConfigError> {
        let mut tree = self.merged.clone();
        let config: Config = loop {
            match serde_path_to_error::deserialize(tree.clone()) {
                Ok(config) => break config,
                Err(error) => {
                    let key = error.path().to_string();
                    // Text from the environment for an optional number (`seed: null` by
                    // default) is kept as text first; read it as a number before failing.
                    if matches!(self.origins.get(&key), Some(Origin::Env(_))) {
                        if let Some(slot) = lookup_mut(&mut tree, &key) {
                            if let Value::String(raw) = slot {
                                if let Ok(scalar @ (Value::Number(_) | Value::Bool(_))) =
                                    serde_yaml::from_str::<Value>(raw)
                                {
                                    *slot = scalar;
                                    continue;
                                }
                            }
                        }
                    }
                    return Err(ConfigError::InvalidValue {
                        origin: self.origin_of(&key),
                        key,
                        reason: error.into_inner().to_string(),
                    });
                }
            }
        };
        config.validate(|key| self.origin_of(key))?;
        let mut config = config;
        self.read_password_files(&mut config)?;
        Ok(config)
    }

    /// Passwords come from the environment or from a file, never from the config file:
    /// config files get committed, copied and printed.
    fn read_password_files(&self, config: &mut Config) -> Result<(), ConfigError> {
        let kafka = &mut config.kafka;
        for (key, password, file) in [
            (
                "kafka.sasl_password",
                &mut kafka.sasl_password,
                &kafka.sasl_password_file,
            ),
            (
                "kafka.ssl_key_password",
                &mut kafka.ssl_key_password,
                &kafka.ssl_key_password_file,
            ),
        ] {
            let file_key = format!("{key}_file");
            let invalid = |key: &str, reason: String| ConfigError::InvalidValue {
                origin: self.origin_of(key),
                key: key.to_string(),
                reason,
            };
            if password.is_some() && matches!(self.origin_of(key), Origin::File(_)) {
                return Err(invalid(
                    key,
                    format!(
                        "a password may not be written in a config file: set {} or `{file_key}`",
                        env_name(key)
                    ),
                ));
            }
            let Some(path) = file else { continue };
            if password.is_some() {
                return Err(invalid(
                    &file_key,
                    format!("set either `{key}` or `{file_key}`, not both"),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|error| invalid(&file_key, format!("cannot read {path}: {error}")))?;
            let secret = text.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                return Err(invalid(&file_key, format!("{path} is empty")));
            }
            *password = Some(Secret::new(secret.to_string()));
        }
        Ok(())
    }

    /// The layer that set `key`, or the nearest enclosing key that a layer set.
    fn origin_of(&self, key: &str) -> Origin {
        let mut candidate = key;
        loop {
            if let Some(origin) = self.origins.get(candidate) {
                return origin.clone();
            }
            match candidate.rsplit_once('.') {
                Some((parent, _)) => candidate = parent,
                None => return Origin::Default,
            }
        }
    }

    /// Environment values are text; keys whose default is not text are parsed as YAML
    /// scalars (`4`, `true`), and a value that does not parse stays text so that the type
    /// error names the key.
    fn env_value(&self, key: &str, raw: &str) -> Value {
        match lookup(&self.defaults, key) {
            Some(Value::String(_)) | Some(Value::Null) | None => Value::String(raw.to_string()),
            Some(_) => match serde_yaml::from_str::<Value>(raw) {
                Ok(scalar @ (Value::Bool(_) | Value::Number(_))) => scalar,
                _ => Value::String(raw.to_string()),
            },
        }
    }

    fn merge_mapping(
        &mut self,
        layer: Mapping,
        prefix: &str,
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        for (raw_key, value) in layer {
            let name = match raw_key {
                Value::String(name) => name,
                other => {
                    let shown = serde_yaml::to_string(&other).unwrap_or_default();
                    return Err(ConfigError::InvalidValue {
                        origin: origin.clone(),
                        key: format!("{prefix}{}", shown.trim()),
                        reason: "keys must be strings".into(),
                    });
                }
            };
            let key = format!("{prefix}{name}");
            let default = lookup(&self.defaults, &key);
            match (default, value) {
                (None, _) if !is_free_form_child(&key) => {
                    return Err(ConfigError::UnknownKey {
                        origin: origin.clone(),
                        key,
                    });
                }
                // An empty section (`server_kafka:` with everything commented out) is a no-op.
                (Some(Value::Mapping(_)), Value::Null) if !is_free_form(&key) => {}
                (Some(Value::Mapping(_)), Value::Mapping(children)) if !is_free_form(&key) => {
                    self.merge_mapping(children, &format!("{key}."), origin)?;
                }
                (_, value) => self.set_leaf(&key, value, origin.clone())?,
            }
        }
        Ok(())
    }

    fn set_leaf(&mut self, key: &str, value: Value, origin: Origin) -> Result<(), ConfigError> {
        if lookup(&self.defaults, key).is_none() && !is_free_form_child(key) {
            return Err(ConfigError::UnknownKey {
                origin,
                key: key.to_string(),
            });
        }
        let mut node = &mut self.merged;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let map = match node {
                Value::Mapping(map) => map,
                other => {
                    *other = Value::Mapping(Mapping::new());
                    match other {
                        Value::Mapping(map) => map,
                        _ => unreachable!("just assigned a mapping"),
                    }
                }
            };
            let part_key = Value::String(part.to_string());
            if parts.peek().is_none() {
                map.insert(part_key, value);
                break;
            }
            node = map
                .entry(part_key)
                .or_insert(Value::Mapping(Mapping::new()));
        }
        self.origins.insert(key.to_string(), origin);
        Ok(())
    }
}

fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.')
        .try_fold(tree, |node, part| node.as_mapping()?.get(part))
}

fn lookup_mut<'a>(tree: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    key.split('.')
        .try_fold(tree, |node, part| node.as_mapping_mut()?.get_mut(part))
}

fn is_free_form(key: &str) -> bool {
    FREE_FORM_KEYS.contains(&key)
}

/// Whether `key` lies inside a free-form map such as `kafka.properties.linger.ms`.
fn is_free_form_child(key: &str) -> bool {
    FREE_FORM_KEYS.iter().any(|free| {
        key.len() > free.len() && key.starts_with(free) && key[free.len()..].starts_with('.')
    })
}

fn collect_leaf_keys(node: &Value, prefix: &str, out: &mut Vec<String>) {
    match node {
        Value::Mapping(map) if !is_free_form(prefix.trim_end_matches('.')) || prefix.is_empty() => {
            for (key, child) in map {
                if let Some(key) = key.as_str() {
                    collect_leaf_keys(child, &format!("{prefix}{key}."), out);
                }
            }
        }
        _ => out.push(prefix.trim_end_matches('.').to_string()),
    }
}

/// `server_kafka.consumers` -> `SECKILL_SERVER_KAFKA_CONSUMERS`.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        yaml: &str,
        env: &[(&str, &str)],
        flags: &FlagOverrides,
    ) -> Result<Config, ConfigError> {
        let mut loader = ConfigLoader::new();
        loader.yaml(yaml, Origin::File("test.yaml".into()))?;
        loader.env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?;
        loader.flags(flags)?;
        loader.build()
    }

    #[test]
    fn defaults_are_valid() {
        let config = load("", &[], &FlagOverrides::new()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn layers_apply_in_order() {
        let yaml =
            "server_kafka:\n  consumers: 3\n  concurrency: 10\nkafka:\n  brokers: file:9092\n";
        let env = [
            ("SECKILL_SERVER_KAFKA_CONCURRENCY", "20"),
            ("KAFKA_BROKERS", "alias:9092"),
        ];
        let mut flags = FlagOverrides::new();
        flags.set("server_kafka.concurrency", "concurrency", Some(30));
        let config = load(yaml, &env, &flags).unwrap();
        assert_eq!(config.server_kafka.consumers, 3, "file beats default");
        assert_eq!(config.server_kafka.concurrency, 30, "flag beats env");
        assert_eq!(config.kafka.brokers, "alias:9092", "env beats file");

        let env = [
            ("SECKILL_KAFKA_BROKERS", "prefixed:9092"),
            ("KAFKA_BROKERS", "alias:9092"),
        ];
        let config = load(yaml, &env, &FlagOverrides::new()).unwrap();
        assert_eq!(
            config.kafka.brokers, "prefixed:9092",
            "SECKILL_ spelling beats alias"
        );
    }

    #[test]
    fn unknown_file_key_names_key_and_file() {
        let error = load(
            "server_kafka:\n  consumerz: 3\n",
            &[],
            &FlagOverrides::new(),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "config file test.yaml: unknown key `server_kafka.consumerz`"
        );
        let error = load("serverkafka: {}\n", &[], &FlagOverrides::new()).unwrap_err();
        assert!(
            error.to_string().contains("unknown key `serverkafka`"),
            "{error}"
        );
    }

    #[test]
    fn bad_value_names_key_origin_and_reason() {
        let error = load(
            "server_kafka:\n  consumers: lots\n",
            &[],
            &FlagOverrides::new(),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("config file test.yaml: key `server_kafka.consumers`: "),
            "{text}"
        );
        assert!(text.contains("invalid type"), "{text}");

        let env = [("SECKILL_LOG_WORKER_BATCH_SIZE", "-5")];
        let text = load("", &env, &FlagOverrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with(
                "environment variable SECKILL_LOG_WORKER_BATCH_SIZE: key `log_worker.batch_size`"
            ),
            "{text}"
        );

        let text = load(
            "server_kafka:\n  offset_reset: middle\n",
            &[],
            &FlagOverrides::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            text.contains("`server_kafka.offset_reset`") && text.contains("unknown variant"),
            "{text}"
        );
    }

    #[test]
    fn range_checks_name_the_key() {
        let mut flags = FlagOverrides::new();
        flags.set("server_kafka.consumers", "consumers", Some(0));
        let text = load("", &[], &flags).unwrap_err().to_string();
        assert_eq!(
            text,
            "command-line flag --consumers: key `server_kafka.consumers`: must be at least 1"
        );
        let text = load("redis:\n  url: http://x\n", &[], &FlagOverrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("`redis.url`") && text.contains("not a redis://"),
            "{text}"
        );
    }

    #[test]
    fn unknown_env_var_is_rejected() {
        let env = [("SECKILL_SERVER_KAFKA_CONSUMER", "3")];
        let text = load("", &env, &FlagOverrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("SECKILL_SERVER_KAFKA_CONSUMER") && text.contains("unknown key"),
            "{text}"
        );
        // SECKILL_CONFIG names the file and is not a key.
        load("", &[("SECKILL_CONFIG", "x.yaml")], &FlagOverrides::new()).unwrap();
    }

    #[test]
    fn env_text_for_string_keys_stays_text() {
        let env = [
            ("SECKILL_KAFKA_SASL_PASSWORD", "12345"),
            ("SECKILL_CLIENT_KAFKA_SEED", "7"),
        ];
        let config = load("", &env, &FlagOverrides::new()).unwrap();
        assert_eq!(config.kafka.sasl_password.unwrap().expose(), "12345");
        // seed defaults to null, so its text is read as a number when the type needs one.
        assert_eq!(config.client_kafka.seed, Some(7));
        let env = [("SECKILL_CLIENT_KAFKA_SEED", "seven")];
        let text = load("", &env, &FlagOverrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with(
                "environment variable SECKILL_CLIENT_KAFKA_SEED: key `client_kafka.seed`"
            ),
            "{text}"
        );
    }

    #[test]
    fn raw_properties_pass_through_and_clashes_are_rejected() {
        let yaml = "kafka:\n  properties:\n    linger.ms: '5'\n    socket.nagle.disable: 'true'\n";
        let config = load(yaml, &[], &FlagOverrides::new()).unwrap();
        assert_eq!(config.kafka.properties.0["linger.ms"], "5");

        let yaml = "kafka:\n  properties:\n    bootstrap.servers: other:9092\n";
        let text = load(yaml, &[], &FlagOverrides::new())
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("config file test.yaml: key `kafka.properties.bootstrap.servers`"),
            "{text}"
        );
        assert!(text.contains("kafka.brokers"), "{text}");
    }

    #[test]
    fn empty_sections_are_accepted() {
        let config = load("server_kafka:\nkafka:\n", &[], &FlagOverrides::new()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_redacted_yaml() {
        let yaml = "kafka:\n  properties:\n    ssl.keystore.password: s3cret-store\npostgres:\n  url: postgres://u:s3cret-pg@h/db\nredis:\n  url: redis://:s3cret-redis@h:6379/0\n";
        let env = [("SECKILL_KAFKA_SASL_PASSWORD", "s3cret-kafka")];
        let config = load(yaml, &env, &FlagOverrides::new()).unwrap();
        for rendering in [
            format!("{config:?}"),
            format!("{config:#?}"),
            config.to_redacted_yaml(),
        ] {
            assert!(
                !rendering.contains("s3cret"),
                "secret leaked in:\n{rendering}"
            );
        }
        assert!(config.to_redacted_yaml().contains("postgres://u:***@h/db"));
    }

    #[test]
    fn passwords_come_from_the_environment_or_a_file_never_the_config_file() {
        let in_file = load(
            "kafka:\n  sasl_password: hunter2\n",
            &[],
            &FlagOverrides::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            in_file.starts_with("config file test.yaml: key `kafka.sasl_password`")
                && in_file.contains("SECKILL_KAFKA_SASL_PASSWORD")
                && !in_file.contains("hunter2"),
            "{in_file}"
        );
        // `null` in the file (as the shipped config.yaml has it) is fine.
        load(
            "kafka:\n  ssl_key_password: null\n",
            &[],
            &FlagOverrides::new(),
        )
        .unwrap();

        let dir = std::env::temp_dir().join(format!("seckill-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sasl");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let yaml = format!("kafka:\n  sasl_password_file: {}\n", path.display());
        let config = load(&yaml, &[], &FlagOverrides::new()).unwrap();
        assert_eq!(config.kafka.sasl_password.unwrap().expose(), "from-a-file");

        let both = load(
            &yaml,
            &[("SECKILL_KAFKA_SASL_PASSWORD", "x")],
            &FlagOverrides::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("kafka.sasl_password_file") && both.contains("not both"),
            "{both}"
        );
        let missing = load(
            "kafka:\n  ssl_key_password_file: /nonexistent/key-password\n",
            &[],
            &FlagOverrides::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("kafka.ssl_key_password_file")
                && missing.contains("cannot read /nonexistent/key-password"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_key_has_an_env_name() {
        let names = ConfigLoader::new().env_names();
        assert!(names.contains(&(
            "server_kafka.consumers".into(),
            "SECKILL_SERVER_KAFKA_CONSUMERS".into()
        )));
        assert!(!names
            .iter()
            .any(|(key, _)| key.starts_with("kafka.properties")));
    }
}
