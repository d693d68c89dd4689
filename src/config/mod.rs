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

mod loader;
mod sections;
#[cfg(test)]
mod tests;

pub use crate::kafka::config::{KafkaConfig, KafkaProperties, SecurityProtocol};
pub use loader::{env_name, ConfigLoader, FlagOverrides};
pub use sections::*;

use crate::kafka::client_config::check_properties;
use crate::secret::{is_sensitive_key, redact_url, REDACTED};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
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
        // kafka: it publishes the order events.
        &[
            "kafka",
            "telemetry",
            "seckill",
            "redis",
            "postgres",
            "log_worker",
        ],
    ),
    // gateway: `token` signs with the gateway's secret.
    (
        "seckill_admin",
        &["telemetry", "redis", "postgres", "gateway"],
    ),
    (
        "seckill_gateway",
        &["kafka", "telemetry", "seckill", "redis", "gateway"],
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
    pub gateway: GatewayConfig,
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
        let positive: [(&str, u64); 20] = [
            ("redis.pool_size", self.redis.pool_size as u64),
            ("redis.wait_timeout_ms", self.redis.wait_timeout_ms),
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
            (
                "server_kafka.expiry_slice",
                self.server_kafka.expiry_slice as u64,
            ),
            (
                "server_kafka.expiry_interval_ms",
                self.server_kafka.expiry_interval_ms,
            ),
            ("log_worker.batch_size", self.log_worker.batch_size as u64),
            (
                "log_worker.flush_interval_ms",
                self.log_worker.flush_interval_ms,
            ),
            ("log_worker.lease_ms", self.log_worker.lease_ms),
            ("log_worker.concurrency", self.log_worker.concurrency as u64),
            (
                "log_worker.activities_refresh_ms",
                self.log_worker.activities_refresh_ms,
            ),
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
            ("seckill.payments_topic", &self.seckill.payments_topic),
            (
                "seckill.order_events_topic",
                &self.seckill.order_events_topic,
            ),
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
        if self.server_kafka.initial_stock.is_some() && self.seckill.activity_id.is_none() {
            return Err(invalid(
                "server_kafka.initial_stock",
                "needs seckill.activity_id (--activity-id): the quick path resets that one sale"
                    .into(),
            ));
        }
        let ids = self
            .seckill
            .activity_id
            .iter()
            .map(|id| ("seckill.activity_id", *id))
            .chain(
                self.client_kafka
                    .activity_ids
                    .iter()
                    .map(|id| ("client_kafka.activity_ids", *id)),
            )
            .chain(
                self.log_worker
                    .activity_ids
                    .iter()
                    .map(|id| ("log_worker.activity_ids", *id)),
            );
        for (key, id) in ids {
            if i64::try_from(id).is_err() {
                return Err(invalid(
                    key,
                    format!("{id} is above the largest id {}", i64::MAX),
                ));
            }
        }
        let pay_ratio = self.client_kafka.pay_ratio;
        if !(0.0..=1.0).contains(&pay_ratio) {
            return Err(invalid(
                "client_kafka.pay_ratio",
                format!("{pay_ratio} is not a share from 0 to 1"),
            ));
        }
        if let Err(reason) = self.client_kafka.pay_delay() {
            return Err(invalid("client_kafka.pay_delay_ms", reason));
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
        let mut urls = vec![
            ("redis.url", &self.redis.url, &["redis", "rediss"][..]),
            (
                "postgres.url",
                &self.postgres.url,
                &["postgres", "postgresql"][..],
            ),
        ];
        for url in &self.redis.cluster_urls {
            urls.push(("redis.cluster_urls", url, &["redis", "rediss"][..]));
        }
        for (key, url, schemes) in urls {
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
