//! Helpers shared by the integration tests: where the dev stack is, and unique names so
//! tests can run in parallel against one Redis, PostgreSQL and broker.
#![allow(dead_code)] // each test binary uses a different subset

use seckill_kafka::config::{KafkaConfig, PostgresConfig, RedisConfig};
use seckill_kafka::secret::SecretUrl;
use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A stack address from the environment, else from `.dev/env` written by
/// `scripts/dev-stack.sh up`. Panics with the fix when neither has it: a test that needs a
/// service must not pass without one.
pub fn stack_var(name: &str) -> String {
    if let Ok(value) = std::env::var(name) {
        if !value.is_empty() {
            return value;
        }
    }
    let env_file = repo_root().join(".dev/env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set and {} does not have it: start the stack with \
                 `scripts/dev-stack.sh up` (or run `make test`)",
                env_file.display()
            )
        })
}

pub fn redis_config() -> RedisConfig {
    RedisConfig {
        url: SecretUrl::new(stack_var("REDIS_URL")),
        ..RedisConfig::default()
    }
}

pub fn postgres_config() -> PostgresConfig {
    PostgresConfig {
        url: SecretUrl::new(stack_var("DATABASE_URL")),
        ..PostgresConfig::default()
    }
}

pub fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        brokers: stack_var("KAFKA_BROKERS"),
        ..KafkaConfig::default()
    }
}

/// A number no other test (in this run or an earlier one) uses: activity ids, name
/// suffixes. Random rather than clock-based so parallel test processes cannot collide; kept
/// below i64::MAX because activity ids are BIGINT in PostgreSQL.
pub fn unique_id() -> u64 {
    rand::random_range(1_000_000..i64::MAX as u64)
}

pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", unique_id())
}
